"""Generative tasks: an example is a prompt and an answer, both text.

:func:`generative_stream` turns tasks of ``(prompt, answer)`` pairs into a :class:`Stream` of tasks
of kind ``"generation"``: each example's ``x`` is the prompt's tokens, then the answer's, then the end
token; ``start`` marks where the answer begins; ``lengths`` counts all three. A prompt that does
not fit ``max_len`` together with its answer loses tokens from its left (its beginning: the
instruction's end and the input stay next to the answer), never the answer; the share of
shortened prompts is reported once per stream (one warning line) and recorded as the stream's
``prompt_cut_fraction`` (each cell's row has it). Two things are one-line errors instead: an
answer that does not fit with its end token and one prompt token, and a stream of which more
than :data:`HALVED_LIMIT` of the prompts would lose more than half their tokens: what the model
would learn and be scored on is no longer the tasks.

The stream factories (``algorithmic``, ``instructions``, ``trace``, ``jsonl-instructions``) build
their :class:`TextTask` lists and call :func:`generative_stream`; a tokenizer comes from
:func:`text_tokenizer`.

Prompt formats (every factory's ``prompt_format``): ``plain`` tokenizes the prompt and the answer
as text; ``chat`` renders them as a user's and an assistant's turn with the tokenizer's chat
template (:class:`clbench.models.hf.HFTextTokenizer`); ``auto`` is ``chat`` when the tokenizer has
a template, else ``plain``. A suite resolves ``auto`` before its cells are hashed
(:func:`record_prompt_format`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from clbench.errors import UserError
from clbench.models.backbones import resolve
from clbench.models.hf import HFTextTokenizer, has_chat_template, tokenizer_of

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
    eos_id: int  # ends every answer (generation stops there)
    prompt_format: str  # "plain" or "chat"

    def encode_text(self, texts: Sequence[str]) -> list[list[int]]: ...  # plain text (the general text), with the model's leading specials (BOS)

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]: ...  # what the model reads before it answers

    def encode_answers(self, texts: Sequence[str]) -> list[list[int]]: ...  # an answer's tokens, without the end token

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], where: str) -> list[tuple[list[int], list[int]]]: ...  # prompt, answer + end

    def shorten(self, prompt: str, answer: str, room: int, where: str) -> tuple[list[int], list[int]]: ...  # prompt cut to room tokens

    def decode(self, ids: Sequence[int]) -> str: ...  # specials (the end token) dropped

    def decode_prompt(self, ids: Sequence[int]) -> str: ...  # a prompt's own text (a chat template's tokens dropped)

    def describe(self) -> dict: ...


class ClbenchTextTokenizer:
    """clbench's byte or BPE tokenizer (or a clbench checkpoint's) for generative tasks: no
    truncation, and id 0 (padding, which no text ever encodes to) as the end token."""

    eos_id = 0
    prompt_format = "plain"  # clbench's tokenizers have no chat template

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

    encode_text = encode_prompts = encode_answers = _ids

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], where: str = "") -> list[tuple[list[int], list[int]]]:
        prompts, answers = self._ids([p for p, _ in pairs]), self._ids([a for _, a in pairs])
        return [(p, a + [self.eos_id]) for p, a in zip(prompts, answers)]

    def shorten(self, prompt: str, answer: str, room: int, where: str = "") -> tuple[list[int], list[int]]:
        (p, a), = self.encode_pairs([(prompt, answer)])
        return p[len(p) - room:], a

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if int(i) != self.eos_id]
        inner = getattr(self.tok, "tok", None)
        if inner is None:
            return bytes(i - 1 for i in ids if 0 < i < 257).decode("utf-8", errors="replace")
        return inner.decode(ids)

    def decode_prompt(self, ids: Sequence[int]) -> str:
        return self.decode(ids)  # plain text: no template to drop

    def describe(self) -> dict:
        return {**self.tok.describe(), "eos_id": self.eos_id}


PROMPT_FORMATS = ("auto", "chat", "plain")


def _hf_tokenizer(spec: str):
    """The transformers tokenizer of a Hugging Face causal LM ``spec`` names, else None."""
    if spec in ("bytes", "bpe"):
        return None
    backbone = resolve(spec, what="tokenizer")
    return tokenizer_of(backbone.folder) if backbone.family == "hf-causal" else None


def resolve_prompt_format(prompt_format: str, tokenizer: str) -> str:
    """``chat`` or ``plain``: ``auto`` is ``chat`` when the tokenizer ``tokenizer`` names has a chat
    template; ``chat`` on one without is a one-line error."""
    if prompt_format not in PROMPT_FORMATS:
        raise UserError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    if prompt_format == "plain":
        return "plain"
    hf = _hf_tokenizer(tokenizer)
    has = hf is not None and has_chat_template(hf)
    if prompt_format == "chat" and not has:
        whose = "clbench's own tokenizers have none" if hf is None else "its tokenizer has none"
        raise UserError(f"prompt_format = 'chat' needs a chat template, and tokenizer {tokenizer!r} has none ({whose}); "
                        "use prompt_format = 'plain' (or 'auto')")
    return "chat" if has else "plain"


def record_prompt_format(params: dict) -> dict:
    """A generative stream's parameters (defaults filled in) as a cell records and hashes them:
    ``prompt_format`` resolved (``auto`` becomes ``chat`` or ``plain``), and left out where the
    tokenizer has no chat template (``plain`` is then the only format, as it was before prompt
    formats existed, and such a cell keeps its config hash)."""
    if "prompt_format" not in params:
        return params
    tokenizer = params.get("tokenizer", "bytes")
    resolved = resolve_prompt_format(params["prompt_format"], tokenizer)
    if resolve_prompt_format("auto", tokenizer) == "plain":  # no template
        return {k: v for k, v in params.items() if k != "prompt_format"}
    return {**params, "prompt_format": resolved}


def text_tokenizer(spec: str, texts: Sequence[str] = (), vocab_size: int = 8000,
                   prompt_format: str = "plain") -> TextTokenizer:
    """The tokenizer ``spec`` names, for generative tasks: ``bytes``; ``bpe`` (trained on
    ``texts``, cached); a clbench checkpoint folder; or a Hugging Face causal LM (``hf:<name>``
    or its folder), whose own tokenizer is used, with its chat template when ``prompt_format``
    (``auto``, ``chat`` or ``plain``) resolves to ``chat``."""
    fmt = resolve_prompt_format(prompt_format, spec)
    if spec == "bytes":
        return ClbenchTextTokenizer(ByteTokenizer())
    if spec == "bpe":
        return ClbenchTextTokenizer(train_bpe(list(texts), vocab_size=vocab_size))
    backbone = resolve(spec, what="tokenizer")
    if backbone.family == "hf-causal":
        return HFTextTokenizer.load(backbone, fmt)
    return ClbenchTextTokenizer(load_tokenizer(spec))


#: The largest share of a stream's prompts (all tasks, training and test) that may lose more than
#: half their tokens to ``max_len``; beyond it, the stream is refused (one line: raise ``max_len``).
HALVED_LIMIT = 0.1


def _encode(tok: TextTokenizer, pairs: list[tuple[str, str]], max_len: int,
            where: str) -> tuple[list[list[int]], list[int], int, int]:
    """Token sequences (prompt, answer, end token) of ``pairs`` shortened to ``max_len`` from the
    prompt's left, their answers' starts, how many prompts were shortened, and how many of those
    lost more than half their tokens."""
    seqs, starts, cut, halved = [], [], 0, 0
    for i, (p, a) in enumerate(tok.encode_pairs(pairs, where)):  # the answer ends with its end token
        room = max_len - len(a)
        if room < 1:
            raise UserError(f"{where}: example {i}'s answer takes {len(a)} tokens with its end token; "
                            f"max_len = {max_len} would cut it (it leaves no room for the prompt): raise max_len")
        if len(p) > room:
            halved += (len(p) - room) * 2 > len(p)
            p, a = tok.shorten(*pairs[i], room, f"{where} example {i}")
            cut += 1
        seqs.append(list(p) + a)
        starts.append(len(p))
    return seqs, starts, cut, halved


def examples_of(seqs: list[list[int]], starts: list[int], y: list[int], t: int) -> Examples:
    """Token sequences (prompt, answer, end token) as :class:`Examples` of task position ``t``:
    padded, with each answer's ``start`` and label ``y``."""
    x, lengths = pad(seqs)
    n = len(seqs)
    return Examples(x, torch.tensor(y, dtype=torch.long), lengths, torch.full((n,), t, dtype=torch.long),
                    torch.tensor(starts, dtype=torch.long))


def scored_bytes(tok: TextTokenizer, examples: Examples) -> int:
    """The UTF-8 bytes of the text whose tokens a perplexity over ``examples`` (sequences with
    ``start`` 0: a general text, a text domain's test split) scores: in each sequence, the tokens
    after its first, which is not predicted. Bits per byte divide the summed negative
    log-likelihood by this count, so that models with different tokenizers can be compared.
    clbench's byte tokenizer counts its byte tokens; other tokenizers decode the tokens (specials
    such as the end token count nothing; a multi-byte character cut at a sequence's edge counts as
    the replacement character)."""
    rows = [row[1:n] for row, n in zip(examples.x.tolist(), examples.lengths.tolist())]
    if isinstance(tok, ClbenchTextTokenizer) and getattr(tok.tok, "tok", None) is None:  # bytes: id = byte + 1
        return sum(1 for row in rows for i in row if 0 < i < 257)
    return sum(len(tok.decode(row).encode("utf-8")) for row in rows)


def answer_cap(examples: Examples) -> int:
    """The most tokens to generate for answers like ``examples``' (the split they are scored
    on): the longest answer's tokens, its end token included, plus 8."""
    return int((examples.lengths - examples.start).max()) + 8


def label_index(labels: tuple[str, ...], answer: str) -> int:
    return labels.index(answer) if answer in labels else 0


def general_examples(stream: str, tokenizer: TextTokenizer, documents: list[str], max_len: int) -> Examples:
    """A held-out general text as examples: each document's tokens as plain text, whatever the
    prompts' format (with the model's leading specials), cut to ``max_len``, ``start`` 0, task
    position -1."""
    ids = tokenizer.encode_text(documents)
    seqs = [s[:max_len] for s in ids if len(s) > 1]
    if not seqs:
        raise UserError(f"stream '{stream}': the general text has no document of two tokens or more")
    return examples_of(seqs, [0] * len(seqs), [0] * len(seqs), -1)


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
    built, shortened, prompts, longest = [], 0, 0, 0
    halved: dict[str, int] = {}  # task -> prompts that lost more than half their tokens
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
            seqs, starts, cut, half = _encode(tokenizer, pairs, max_len, f"stream '{name}': task '{task.name}' ({part})")
            shortened += cut
            prompts += len(pairs)
            halved[task.name] = halved.get(task.name, 0) + half
            longest = max(longest, max(len(s) for s in seqs))
            split[part] = examples_of(seqs, starts, [label_index(task.labels, a) for _, a in pairs], pos)
        new = task.max_new_tokens or answer_cap(split["test"])
        built.append(Task(task.name, (), split["train"], split["test"], metric=task.metric, labels=task.labels,
                          max_new_tokens=new, max_new_tokens_derived=not task.max_new_tokens, kind="generation"))
    if sum(halved.values()) > HALVED_LIMIT * prompts:
        n = sum(halved.values())
        worst = max(halved, key=halved.get)
        raise UserError(f"stream '{name}': {n} of {prompts} prompts ({n / prompts:.0%}) would lose more than half their "
                        f"tokens to max_len = {max_len} ({halved[worst]} in task '{worst}'; at most {HALVED_LIMIT:.0%} "
                        "may): raise max_len")
    if shortened:
        print(f"clbench: warning: stream '{name}': {shortened} of {prompts} prompts ({shortened / prompts:.1%}) longer "
              f"than max_len = {max_len} with their answer were shortened from the left", file=sys.stderr)
    general_ex = general_examples(name, tokenizer, general, max_len) if general else None
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
        general=general_ex,
        prompt_cut_fraction=shortened / prompts,
    )
