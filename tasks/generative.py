"""Generative tasks: an example is a prompt and an answer, both text.

:func:`generative_stream` turns tasks of ``(prompt, answer)`` pairs into a :class:`Stream` of kind
``"generation"``: each example's ``x`` is the prompt's tokens, then the answer's, then the end
token; ``start`` marks where the answer begins; ``lengths`` counts all three. A prompt that does
not fit ``max_len`` together with its answer loses tokens from its left (its beginning: the
instruction's end and the input stay next to the answer), never the answer; the count of
shortened prompts is reported once per stream. An answer that does not fit on its own is a
one-line error.

The stream factories (``algorithmic``, ``instructions``, ``trace``, ``jsonl-instructions``) build
their :class:`TextTask` lists and call :func:`generative_stream`; a tokenizer comes from
:func:`text_tokenizer`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from clbench.errors import UserError
from clbench.models.backbones import resolve
from clbench.models.hf import HFTextTokenizer

from .base import Examples, Stream, Task
from .digits import check_order
from .scoring import check_metric
from .tokenizer import ByteTokenizer, load_tokenizer, pad, train_bpe


@dataclass
class TextTask:
    """One generative task, as text.

    :param metric: its primary score (:data:`clbench.tasks.scoring.SCORERS`).
    :param labels: the answer texts it chooses among, if it has a label set (rank
        classification scores these; ``y`` is an answer's index among them).
    :param max_new_tokens: the most tokens generated per answer (0: the longest test answer's
        token count plus 8; a validation split's own longest answer for ``clbench tune``).
    """

    name: str
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    metric: str = "exact_match"
    labels: tuple[str, ...] = ()
    max_new_tokens: int = 0
    extra: dict = field(default_factory=dict)


class TextTokenizer(Protocol):
    """What a generative stream needs of a tokenizer (:func:`text_tokenizer` adapts clbench's
    and Hugging Face tokenizers to it)."""

    vocab_size: int  # ids are < vocab_size
    eos_id: int  # ends every answer

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]: ...  # with the model's leading specials (BOS)

    def encode_answers(self, texts: Sequence[str]) -> list[list[int]]: ...  # no special tokens

    def decode(self, ids: Sequence[int]) -> str: ...  # specials (the end token) dropped

    def describe(self) -> dict: ...


class ClbenchTextTokenizer:
    """clbench's byte or BPE tokenizer (or a clbench checkpoint's) for generative tasks: no
    truncation, and id 0 (padding, which no text ever encodes to) as the end token."""

    eos_id = 0

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.vocab_size
        self.source = getattr(tok, "source", None)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        inner = getattr(self.tok, "tok", None)
        if inner is None:  # bytes: id = byte + 1
            return [[b + 1 for b in s.encode("utf-8", errors="surrogatepass")] for s in texts]
        inner.no_truncation()
        return [e.ids for e in inner.encode_batch(list(texts), add_special_tokens=False)]

    encode_prompts = encode_answers = _ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if int(i) != self.eos_id]
        inner = getattr(self.tok, "tok", None)
        if inner is None:
            return bytes(i - 1 for i in ids if 0 < i < 257).decode("utf-8", errors="replace")
        return inner.decode(ids)

    def describe(self) -> dict:
        return {**self.tok.describe(), "eos_id": self.eos_id}


def text_tokenizer(spec: str, texts: Sequence[str] = (), vocab_size: int = 8000) -> TextTokenizer:
    """The tokenizer ``spec`` names, for generative tasks: ``bytes``; ``bpe`` (trained on
    ``texts``, cached); a clbench checkpoint folder; or a Hugging Face causal LM (``hf:<name>``
    or its folder), whose own tokenizer is used."""
    if spec == "bytes":
        return ClbenchTextTokenizer(ByteTokenizer())
    if spec == "bpe":
        return ClbenchTextTokenizer(train_bpe(list(texts), vocab_size=vocab_size))
    backbone = resolve(spec, what="tokenizer")
    if backbone.family == "hf-causal":
        return HFTextTokenizer.load(backbone)
    return ClbenchTextTokenizer(load_tokenizer(spec))


def _encode(tok: TextTokenizer, pairs: list[tuple[str, str]], max_len: int, where: str) -> tuple[list[list[int]], list[int], int]:
    prompts = tok.encode_prompts([p for p, _ in pairs])
    answers = tok.encode_answers([a for _, a in pairs])
    seqs, starts, cut = [], [], 0
    for i, (p, a) in enumerate(zip(prompts, answers)):
        a = list(a) + [tok.eos_id]
        room = max_len - len(a)
        if room < 1:
            raise UserError(f"{where}: example {i}'s answer takes {len(a)} tokens with its end token; "
                            f"max_len = {max_len} leaves no room for its prompt (raise max_len)")
        if len(p) > room:
            p, cut = p[len(p) - room:], cut + 1
        seqs.append(list(p) + a)
        starts.append(len(p))
    return seqs, starts, cut


def examples_of(seqs: list[list[int]], starts: list[int], y: list[int], t: int) -> Examples:
    """Token sequences (prompt, answer, end token) as :class:`Examples` of task position ``t``:
    padded, with each answer's ``start`` and label ``y``."""
    x, lengths = pad(seqs)
    n = len(seqs)
    return Examples(x, torch.tensor(y, dtype=torch.long), lengths, torch.full((n,), t, dtype=torch.long),
                    torch.tensor(starts, dtype=torch.long))


def scored_bytes(tok: TextTokenizer, general: Examples) -> int:
    """The UTF-8 bytes of the text whose tokens a general text's perplexity scores: in each
    document (as cut to ``max_len`` tokens), the tokens after its first, which is not predicted
    (a BOS token, or the text's first token where a tokenizer adds none). Bits per byte divide the
    summed negative log-likelihood by this count, so that models with different tokenizers can be
    compared. clbench's byte tokenizer counts its byte tokens; other tokenizers decode the tokens
    (a multi-byte character cut by ``max_len`` counts as the replacement character)."""
    rows = [row[1:n] for row, n in zip(general.x.tolist(), general.lengths.tolist())]
    if isinstance(tok, ClbenchTextTokenizer) and getattr(tok.tok, "tok", None) is None:  # bytes: id = byte + 1
        return sum(1 for row in rows for i in row if 0 < i < 257)
    return sum(len(tok.decode(row).encode("utf-8")) for row in rows)


def answer_cap(examples: Examples) -> int:
    """The most tokens to generate for answers like ``examples``' (the split they are scored
    on): the longest answer's tokens, its end token included, plus 8."""
    return int((examples.lengths - examples.start).max()) + 8


def label_index(labels: tuple[str, ...], answer: str) -> int:
    return labels.index(answer) if answer in labels else 0


def generative_stream(
    name: str,
    tasks: list[TextTask],
    tokenizer: TextTokenizer,
    *,
    max_len: int = 256,
    order: list[int] | None = None,
    general: list[str] | None = None,
    scenario: str = "task-incremental",
    params: dict | None = None,
) -> Stream:
    """A generative :class:`Stream` of ``tasks`` in ``order`` (indices), tokenized by
    ``tokenizer``; ``general`` texts (documents) are the held-out general text."""
    if not tasks:
        raise UserError(f"stream '{name}' has no tasks")
    order = check_order(order, len(tasks))
    built, shortened, longest = [], 0, 0
    for pos, i in enumerate(order):
        task = tasks[i]
        check_metric(task.metric, f"stream '{name}': task '{task.name}'")
        if not task.train or not task.test:
            raise UserError(f"stream '{name}': task '{task.name}' has no {'training' if not task.train else 'test'} examples")
        if task.metric == "accuracy" and not task.labels:
            raise UserError(f"stream '{name}': task '{task.name}' is scored by ranking its labels but has none")
        split = {}
        for part, pairs in (("train", task.train), ("test", task.test)):
            for j, (p, a) in enumerate(pairs):
                if not a.strip():
                    raise UserError(f"stream '{name}': task '{task.name}' {part} example {j} has an empty answer")
            seqs, starts, cut = _encode(tokenizer, pairs, max_len, f"stream '{name}': task '{task.name}' ({part})")
            shortened += cut
            longest = max(longest, max(len(s) for s in seqs))
            split[part] = examples_of(seqs, starts, [label_index(task.labels, a) for _, a in pairs], pos)
        new = task.max_new_tokens or answer_cap(split["test"])
        built.append(Task(task.name, (), split["train"], split["test"], metric=task.metric, labels=task.labels,
                          max_new_tokens=new, max_new_tokens_derived=not task.max_new_tokens))
    if shortened:
        print(f"clbench: warning: stream '{name}': {shortened} prompt(s) longer than max_len = {max_len} "
              "with their answer were shortened from the left", file=sys.stderr)
    general_ex = None
    if general:
        ids = tokenizer.encode_prompts(general)
        seqs = [s[:max_len] for s in ids if len(s) > 1]
        if not seqs:
            raise UserError(f"stream '{name}': the general text has no document of two tokens or more")
        general_ex = examples_of(seqs, [0] * len(seqs), [0] * len(seqs), -1)
    return Stream(
        name=name,
        scenario=scenario,
        input_kind="tokens",
        labels=(),
        tasks=built,
        input_dim=tokenizer.vocab_size,
        max_len=max(longest, int(general_ex.lengths.max()) if general_ex is not None else 0),
        tokenizer=tokenizer,
        params=params or {},
        kind="generation",
        general=general_ex,
    )
