"""Continual pre-training streams: each task is a text domain (kind ``corpus``, docs/cpt.md).

A domain's documents are split into training and test documents by a seed. Each split's
documents are tokenized (no special tokens), each followed by the end token, concatenated and
cut into sequences of ``max_len`` tokens ("packed"); training predicts every token of a sequence
from the ones before it, and a domain is scored by the perplexity and bits per byte of its test
sequences (:class:`clbench.kinds.Corpus`).

* ``corpus``: a data folder with one folder per domain, each holding ``.txt`` files (a document
  per file, or per non-empty line with ``documents = "line"``) and ``.jsonl`` files (a document
  per line: an object whose ``text_field`` is the text), in any sub-folders.
* ``corpus-builtin``: domains that need no data folder, read from the running Python or generated
  from a seed: ``python`` (source files of the standard library), ``english`` (the English prose
  of the Python documentation's topics that ship with the standard library, ``pydoc_data``), and
  ``synthetic-<k>`` (seeded artificial languages whose letters, words and word order differ).

A domain without text, or with fewer training tokens than one training sequence, is a one-line
error naming it; so is a file that is not UTF-8 (with the byte where it stops being so).
"""

from __future__ import annotations

import json
import random
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from clbench import hookimpl
from clbench.errors import UserError
from clbench.params import require

from .base import Stream, Task
from .digits import check_order
from .generative import TextTokenizer, examples_of, general_examples, text_tokenizer
from .lmdata import read_general
from .text import choose_tasks, data_root, read_text

#: The primary score a domain may have (its column of the accuracy matrix): both lower-is-better.
SCORES: tuple[str, ...] = ("ppl", "bpb")


@dataclass
class Domain:
    """A text domain's documents, split. ``where`` says where they came from (for errors)."""

    name: str
    train: list[str]
    test: list[str]
    where: str


def split_documents(name: str, docs: list[str], test_fraction: float, seed: int, where: str) -> Domain:
    """``docs`` split into training and test documents by a generator seeded by ``seed`` and the
    domain's name (a domain's split does not depend on the others): ``round(test_fraction × n)``
    test documents, at least one, and at least one to train on."""
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"domain '{name}' ({where}) has no text")
    if len(docs) < 2:
        raise UserError(f"domain '{name}' ({where}) has one document: it needs two or more, to train on and to test on "
                        "(documents = \"line\" takes each line of a .txt file as a document)")
    perm = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(len(docs))
    n_test = min(len(docs) - 1, max(1, round(test_fraction * len(docs))))
    return Domain(name, [docs[i] for i in perm[n_test:]], [docs[i] for i in perm[:n_test]], where)


def pack(docs: list[list[int]], eos: int, max_len: int) -> list[list[int]]:
    """Token documents, each followed by ``eos``, concatenated and cut into sequences of
    ``max_len`` tokens; a last sequence shorter than two tokens is dropped."""
    flat = [t for doc in docs for t in (*doc, eos)]
    seqs = [flat[i : i + max_len] for i in range(0, len(flat), max_len)]
    return [s for s in seqs if len(s) >= 2]


def encode_packed(tokenizer: TextTokenizer, docs: list[str], max_len: int, cap: int | None, chunk: int = 256) -> list[list[int]]:
    """``docs`` tokenized and packed (:func:`pack`), at most ``cap`` sequences: documents are
    tokenized ``chunk`` at a time, and no further than the cap needs (a large domain is not
    tokenized whole for a few sequences)."""
    ids: list[list[int]] = []
    tokens = 0
    for start in range(0, len(docs), chunk):
        part = tokenizer.encode_answers(docs[start : start + chunk])
        ids += part
        tokens += sum(len(d) + 1 for d in part)
        if cap is not None and tokens >= (cap + 1) * max_len:
            break
    return pack(ids, tokenizer.eos_id, max_len)[:cap]


def corpus_stream(
    name: str,
    domains: list[Domain],
    tokenizer: TextTokenizer,
    *,
    max_len: int,
    order: list[int] | None = None,
    metric: str = "ppl",
    train_sequences: int | None = None,
    test_sequences: int | None = None,
    general: list[str] | None = None,
    params: dict | None = None,
) -> Stream:
    """A :class:`Stream` of ``domains`` (tasks of kind ``corpus``) in ``order``, packed into
    sequences of ``max_len`` tokens of ``tokenizer``; at most ``train_sequences`` and
    ``test_sequences`` of each domain (the first, in the seeded order of its documents)."""
    if max_len < 2:
        raise UserError(f"max_len must be at least 2, got {max_len}")
    if metric not in SCORES:
        raise UserError(f"stream '{name}': metric must be one of {', '.join(SCORES)}, got {metric!r}")
    if not domains:
        raise UserError(f"stream '{name}' has no domains")
    order = check_order(order, len(domains))
    tasks = []
    for pos, i in enumerate(order):
        d = domains[i]
        split = {}
        for part, docs, cap in (("train", d.train, train_sequences), ("test", d.test, test_sequences)):
            seqs = encode_packed(tokenizer, docs, max_len, cap)
            if part == "train" and (not seqs or len(seqs[0]) < max_len):
                tokens = sum(len(s) for s in seqs)
                raise UserError(f"domain '{d.name}' ({d.where}) has {tokens} training tokens, fewer than one training "
                                f"sequence of max_len = {max_len} (add text, or lower max_len)")
            if not seqs:
                raise UserError(f"domain '{d.name}' ({d.where}) has no test text of two tokens or more")
            split[part] = examples_of(seqs, [0] * len(seqs), [0] * len(seqs), pos)
        tasks.append(Task(d.name, (), split["train"], split["test"], metric=metric, kind="corpus"))
    general_ex = general_examples(name, tokenizer, general, max_len) if general else None
    longest = max(int(t.train.lengths.max()) for t in tasks)
    return Stream(name=name, scenario="domain-incremental", input_kind="tokens", labels=(), tasks=tasks,
                  input_dim=tokenizer.vocab_size, max_len=max(longest, int(general_ex.lengths.max()) if general_ex is not None else 0),
                  tokenizer=tokenizer, params=params or {}, general=general_ex)


def _tokenizer(spec: str, domains: list[Domain], vocab_size: int) -> TextTokenizer:
    """The stream's tokenizer; a BPE is trained on the training documents, domains in name
    order (every order of the same domains gets the same tokenizer)."""
    if spec == "bpe" and vocab_size < 300:
        raise UserError(f"vocab_size must be at least 300 for BPE (256 bytes + merges), got {vocab_size}")
    texts = [doc for d in sorted(domains, key=lambda d: d.name) for doc in d.train] if spec == "bpe" else []
    return text_tokenizer(spec, texts, vocab_size=vocab_size)


def _check_common(test_fraction: float, train_sequences: int | None, test_sequences: int | None) -> None:
    require(0 < test_fraction < 1, "test_fraction", "in (0, 1)", test_fraction)
    for key, v in (("train_sequences", train_sequences), ("test_sequences", test_sequences)):
        require(v is None or v >= 1, key, "at least 1 (or left out for all)", v)


# -- a data folder ----------------------------------------------------------------------------------

def read_domain(name: str, folder: Path, documents: str, text_field: str) -> list[str]:
    """The documents of a domain folder (every ``.txt`` and ``.jsonl`` file below it, in path
    order; hidden files and folders left out)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl")
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    docs: list[str] = []
    for f in files:
        text = read_text(f)  # strict UTF-8: a bad byte is an error naming the file and the byte
        if f.suffix == ".txt":
            docs += [text] if documents == "file" else [line for line in text.split("\n") if line.strip()]
            continue
        for i, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may be in a string
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{f}: invalid JSON at line {i} column {exc.colno}: {exc.msg}") from None
            value = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                raise UserError(f"{f}: line {i} has no string field '{text_field}' (set text_field)")
            docs.append(value)
    return docs


def corpus(
    *,
    data_dir: str | None = None,
    domains: list[str] | None = None,
    documents: Literal["file", "line"] = "file",
    text_field: str = "text",
    test_fraction: float = 0.1,
    seed: int = 0,
    tokenizer: str = "bytes",
    vocab_size: int = 8000,
    max_len: int = 128,
    train_sequences: int | None = None,
    test_sequences: int | None = None,
    metric: Literal["ppl", "bpb"] = "ppl",
    general: str | list[str] | None = None,
    order: list | None = None,
) -> Stream:
    """Text domains from a data folder (``data_dir``, else ``$CLBENCH_DATA``): one folder per
    domain, named by its folder.

    :param domains: the domains, in stream order (default: every folder, by name).
    :param documents: what a ``.txt`` file holds: one document (``file``) or one per non-empty
        line (``line``).
    :param text_field: the field of a ``.jsonl`` record that holds its text.
    :param test_fraction: the share of each domain's documents held out for testing (seeded by ``seed``).
    :param tokenizer: ``bytes``, ``bpe`` (trained on the training documents), a clbench
        checkpoint or a Hugging Face causal LM (a suite's ``model.init`` sets it).
    :param max_len: tokens per packed sequence.
    :param train_sequences: at most this many training sequences per domain (default: all).
    :param test_sequences: at most this many test sequences per domain (default: all).
    :param metric: each domain's primary score: ``ppl`` (perplexity) or ``bpb`` (bits per byte).
    :param general: a held-out general text (``.txt`` files or folders, relative to the data
        folder) whose perplexity is measured after every task, as for generative streams.
    """
    _check_common(test_fraction, train_sequences, test_sequences)
    require(documents in ("file", "line"), "documents", "'file' or 'line'", documents)
    root = data_root(data_dir, "corpus")
    found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if not found:
        raise UserError(f"no domain folders in {root} (a domain is a folder of .txt or .jsonl documents)")
    seq, _ = choose_tasks(order, domains, found, root, skip_missing=False)
    built = [split_documents(n, read_domain(n, found[n], documents, text_field), test_fraction, seed, str(found[n]))
             for n in seq]
    tok = _tokenizer(tokenizer, built, vocab_size)
    params = dict(data_dir=str(root), domains=list(seq), documents=documents, text_field=text_field,
                  test_fraction=test_fraction, seed=seed, max_len=max_len, train_sequences=train_sequences,
                  test_sequences=test_sequences, metric=metric, tokenizer=tok.describe())
    return corpus_stream("corpus", built, tok, max_len=max_len, metric=metric, train_sequences=train_sequences,
                         test_sequences=test_sequences, general=read_general(general, root), params=params)


# -- built-in domains -------------------------------------------------------------------------------

def python_source(n_docs: int, seed: int, doc_chars: int) -> list[str]:
    """``n_docs`` source files of the running Python's standard library (its top-level ``.py``
    modules, drawn by ``seed``), each cut to its first ``doc_chars`` characters."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in lib.glob("*.py") if p.is_file())
    if len(files) < 2:
        raise UserError(f"domain 'python': no Python source files in the standard library folder {lib}")
    chosen = random.Random(f"{seed}:python").sample(files, min(n_docs, len(files)))
    return [p.read_text(encoding="utf-8", errors="replace")[:doc_chars] for p in chosen]


def english_prose(n_docs: int, seed: int, doc_chars: int) -> list[str]:
    """``n_docs`` topics of the Python documentation that ship with the standard library
    (``pydoc_data.topics``, English prose about the language), drawn by ``seed``, each cut to its
    first ``doc_chars`` characters."""
    try:
        from pydoc_data.topics import topics  # here: a module of half a megabyte, read only for this domain
    except ImportError:
        raise UserError("domain 'english': this Python has no pydoc_data (the documentation's topics)") from None
    texts = [topics[k] for k in sorted(topics)]
    chosen = random.Random(f"{seed}:english").sample(texts, min(n_docs, len(texts)))
    return [t[:doc_chars] for t in chosen]


def synthetic_language(k: int, n_docs: int, seed: int, doc_chars: int) -> list[str]:
    """``n_docs`` documents of the ``k``-th artificial language of ``seed``: its own eight
    letters, 300 words of one to six of them with Zipf-like frequencies, and its own word order
    (each word is followed by one of four words that the language picks for it, nine times in
    ten). Sentences of 4 to 12 words, a capital and a full stop; documents of ``doc_chars``
    characters at most."""
    r = random.Random(f"{seed}:synthetic:{k}")
    letters = "".join(r.sample("abcdefghijklmnopqrstuvwxyz", 8))
    words = list(dict.fromkeys("".join(r.choice(letters) for _ in range(r.randint(1, 6))) for _ in range(400)))[:300]
    weights = [1 / (i + 1) for i in range(len(words))]
    follow = {w: r.sample(words, 4) for w in words}
    docs = []
    for _ in range(n_docs):
        out: list[str] = []
        size = 0
        while size < doc_chars:
            w = r.choices(words, weights)[0]
            sentence = [w]
            for _ in range(r.randint(3, 11)):
                w = r.choice(follow[w]) if r.random() < 0.9 else r.choices(words, weights)[0]
                sentence.append(w)
            s = " ".join(sentence).capitalize() + "."
            out.append(s)
            size += len(s) + 1
        docs.append(" ".join(out)[:doc_chars])
    return docs


def builtin_domain(name: str, n_docs: int, seed: int, doc_chars: int) -> tuple[list[str], str]:
    """The documents of a built-in domain and where they come from."""
    if name == "python":
        return python_source(n_docs, seed, doc_chars), "the Python standard library's source"
    if name == "english":
        return english_prose(n_docs, seed, doc_chars), "the Python documentation's topics"
    if name.startswith("synthetic-") and name[len("synthetic-"):].isdigit():
        return synthetic_language(int(name[len("synthetic-"):]), n_docs, seed, doc_chars), f"artificial language {name}"
    raise UserError(f"unknown built-in domain {name!r} (python, english, synthetic-1, synthetic-2, ...)")


def corpus_builtin(
    *,
    domains: list[str] = ["english", "python", "synthetic-1"],
    docs_per_domain: int = 60,
    doc_chars: int = 4000,
    test_fraction: float = 0.2,
    seed: int = 0,
    tokenizer: str = "bytes",
    vocab_size: int = 8000,
    max_len: int = 128,
    train_sequences: int | None = None,
    test_sequences: int | None = None,
    metric: Literal["ppl", "bpb"] = "ppl",
    order: list[int] | None = None,
) -> Stream:
    """Text domains that need no data folder: ``python``, ``english`` and ``synthetic-<k>``
    (see the module docstring), ``docs_per_domain`` documents of at most ``doc_chars``
    characters each, drawn by ``seed``. ``python`` and ``english`` are read from the running
    Python, so their text follows its version (recorded in each cell's ``versions``)."""
    _check_common(test_fraction, train_sequences, test_sequences)
    require(len(domains) > 0 and len(set(domains)) == len(domains), "domains", "a non-empty list without repeats", domains)
    require(docs_per_domain >= 2, "docs_per_domain", "at least 2", docs_per_domain)
    require(doc_chars >= 1, "doc_chars", "at least 1", doc_chars)
    built = []
    for name in domains:
        docs, where = builtin_domain(name, docs_per_domain, seed, doc_chars)
        built.append(split_documents(name, docs, test_fraction, seed, where))
    tok = _tokenizer(tokenizer, built, vocab_size)
    params = dict(domains=list(domains), docs_per_domain=docs_per_domain, doc_chars=doc_chars, test_fraction=test_fraction,
                  seed=seed, max_len=max_len, train_sequences=train_sequences, test_sequences=test_sequences,
                  metric=metric, tokenizer=tok.describe())
    return corpus_stream("corpus-builtin", built, tok, max_len=max_len, order=order, metric=metric,
                         train_sequences=train_sequences, test_sequences=test_sequences, params=params)


@hookimpl
def register_streams(register):
    register("corpus", corpus, description="continual pre-training: text domains from a data folder (.txt, .jsonl)")
    register("corpus-builtin", corpus_builtin,
             description="continual pre-training on domains that need no data: Python source, English prose, artificial languages")
