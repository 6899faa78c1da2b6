"""What the strategies whose model writes its own rehearsal data (``lamol``, ``ssr``) share:
generating from a model in batches with the decoder evaluation uses, turning generated token ids
into training examples, the samples they leave in the cell's results, and their refusals.

Every draw comes from the cell's seeded generator (``cell.generator``) through
:class:`clbench.models.sampling.Sampling`, so a cell writes the same rehearsal data every run.
Generation runs with the model in eval mode (no dropout), without gradients, under the cell's
precision (as evaluation does), and puts the model back in the mode it found it in.

A strategy reports what it generated with :func:`record`: ``cell.info["samples"]`` becomes the
``samples`` column of the cell's row in the ``cells`` table (docs/results.md), a JSON list with one
entry per earlier task and training task: how many examples were generated, how many were kept,
and up to :data:`SHOWN` of the kept ones as text.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import torch

from clbench.errors import UserError
from clbench.loop import autocast, cast_weights
from clbench.models.sampling import Sampling
from clbench.tasks import Examples
from clbench.tasks.generative import examples_of, label_index
from clbench.tasks.tokenizer import pad

#: Examples of each (training task, earlier task) kept as text in the ``samples`` column.
SHOWN = 5

#: Bytes that never occur in UTF-8 text (Unicode's "never used" bytes: 0xC0, 0xC1, 0xF5-0xFF).
#: A tokenizer whose vocabulary has a token for each of them (clbench's byte tokenizer, any
#: byte-level BPE, a SentencePiece model with byte fallback) never produces those tokens from
#: text: their ids are free for markers such as LAMOL's generation and answer tokens.
SPARE_BYTES: tuple[int, ...] = (0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0xFA, 0xF9, 0xF8, 0xF7, 0xF6, 0xF5, 0xC1, 0xC0)


def _decoder_kinds(spec: dict | None) -> set[str]:
    """The ``type`` of a ``tokenizers`` decoder and of every decoder in a ``Sequence``."""
    if not spec:
        return set()
    return {spec.get("type", "")} | {k for d in spec.get("decoders", []) or [] for k in _decoder_kinds(d)}


def spare_token_ids(tokenizer) -> list[int]:
    """The ids of the :data:`SPARE_BYTES` tokens of a generative stream's tokenizer, in that
    order, or ``[]`` when it has no such tokens (or not all of them).

    clbench's byte tokenizer: byte + 1. A ``tokenizers`` byte-level BPE (clbench's ``bpe``, a
    Hugging Face byte-level tokenizer: GPT-2, Qwen2, Llama 3; not SmolLM2, whose vocabulary lacks
    them): the tokens of those bytes' characters (GPT-2's byte-to-character table maps each of
    these bytes to the character of the same code point). A SentencePiece model with byte fallback (Llama 2, Mistral, Gemma):
    ``<0xFF>`` ... ``<0xC0>``."""
    inner = getattr(tokenizer, "tok", None)
    if inner is None:
        return []
    if getattr(inner, "kind", None) == "bytes":  # clbench's byte tokenizer
        return [b + 1 for b in SPARE_BYTES]
    fast = getattr(inner, "backend_tokenizer", None)  # a Hugging Face tokenizer
    core = fast if fast is not None else getattr(inner, "tok", None)  # or clbench's tokenizers.Tokenizer
    if core is None or not hasattr(core, "to_str"):
        return []
    kinds = _decoder_kinds(json.loads(core.to_str()).get("decoder"))
    if "ByteLevel" in kinds:
        names = [chr(b) for b in SPARE_BYTES]
    elif "ByteFallback" in kinds:
        names = [f"<0x{b:02X}>" for b in SPARE_BYTES]
    else:
        return []
    ids = [core.token_to_id(n) for n in names]
    return ids if all(i is not None for i in ids) and len(set(ids)) == len(ids) else []


def refuse_per_task_lora(name: str, config) -> None:
    """One line when strategy ``name`` (which generates rehearsal data) is combined with per-task
    LoRA, which evaluates each task with its own adapter and never changes it after its task, so
    rehearsing earlier tasks cannot help. (A stream of classification tasks is refused by the
    strategies' ``serves = ("generation",)``.)"""
    for other, params in config.strategy.parts:
        if other == "lora" and params.get("mode", "per-task") == "per-task":
            raise UserError(f"strategy '{name}' cannot be combined with per-task LoRA: each task is evaluated "
                            "with its own adapter, which no later task changes, so rehearsing earlier tasks "
                            "cannot help them (use seq-lora, inc-lora or o-lora)")


@contextmanager
def generating(cell, model: torch.nn.Module):
    """Run ``model`` for generation: eval mode, no gradients, the cell's precision."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(cell.precision, cell.device), cast_weights(model, cell.precision):
            yield
    finally:
        model.train(was)


def complete(cell, model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int,
             sampling: Sampling | None = None) -> list[tuple[list[int], bool]]:
    """``model``'s continuation of each prompt (token ids) and whether it ended with the end
    token (which is left out), by ``model.generate`` in batches of
    ``training.eval_batch_size`` prompts of similar length: greedy, or drawn with ``sampling``
    from ``cell.generator``."""
    eos = cell.stream.tokenizer.eos_id
    bs = cell.config.training.eval_batch_size
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    with generating(cell, model):
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            x, lengths = pad([prompts[i] for i in idx])
            gen = model.generate(x.to(cell.device), lengths.to(cell.device), max_new_tokens, eos,
                                 sampling=sampling, generator=cell.generator if sampling is not None else None)
            for i, row in zip(idx, gen.tolist()):
                out[i] = (row[: row.index(eos)], True) if eos in row else (row, False)
    return out


def to_examples(cell, pairs: list[tuple[list[int], list[int]]], task_index: int) -> Examples:
    """Training examples of the ``task_index``-th task from ``(prompt ids, answer ids)`` pairs,
    as the stream encodes its own (prompt, answer, end token; a prompt too long for
    ``model.max_len`` shortened from its left), on the cell's device."""
    tok, task = cell.stream.tokenizer, cell.tasks[task_index]
    room = cell.config.model.max_len
    seqs, starts, ys = [], [], []
    for prompt, answer in pairs:
        answer = list(answer) + [tok.eos_id]
        prompt = list(prompt)[max(0, len(prompt) + len(answer) - room):]
        seqs.append(prompt + answer)
        starts.append(len(prompt))
        ys.append(label_index(task.labels, tok.decode(answer)) if task.labels else 0)
    return examples_of(seqs, starts, ys, task_index).to(cell.device)


def decode_example(tok, ex: Examples, i: int) -> dict[str, str]:
    """Example ``i`` of ``ex`` as texts: its prompt as the user wrote it (with a chat template,
    the template's own text left out) and its answer without the end token."""
    start, length = int(ex.start[i]), int(ex.lengths[i])
    return {"prompt": tok.decode_prompt(ex.x[i, :start].tolist()), "answer": tok.decode(ex.x[i, start : length - 1].tolist())}


def record(cell, strategy: str, task_index: int, generated: int, kept: Examples, train_task: int, **counts: int) -> None:
    """Note in ``cell.info["samples"]`` that ``strategy`` generated ``generated`` examples of the
    ``task_index``-th task and kept ``kept`` (other counts by name), first trained on with the
    ``train_task``-th task, with up to :data:`SHOWN` of the kept ones as text."""
    tok = cell.stream.tokenizer
    cell.info.setdefault("samples", []).append({
        "strategy": strategy,
        "train_task": int(train_task),
        "task": task_index,
        "task_name": cell.tasks[task_index].name,
        "generated": int(generated),
        **{k: int(v) for k, v in counts.items()},
        "kept": len(kept),
        "examples": [decode_example(tok, kept, i) for i in range(min(SHOWN, len(kept)))],
    })


def report_buffer(cell, name: str, n: int) -> None:
    """Count ``n`` examples that ``name`` holds in the cell's ``buffer_size``."""
    sizes = cell.info.setdefault("buffer_sizes", {})
    sizes[name] = n
    cell.info["buffer_size"] = sum(sizes.values())


def warn(message: str) -> None:
    print(f"clbench: warning: {message}", file=sys.stderr)
