"""``text``: text-classification tasks from a data folder (CL_Benchmark, JSONL or CSV).

A data folder holds one folder per task; a task is named by its path relative to the data folder
(``TC/agnews``) or, when that is unambiguous, by its last part (``agnews``). A task folder holds

* CL_Benchmark format: ``train.json`` and ``test.json``, each a JSON list of
  ``{"label": ..., "sentence": ...}``, and ``labels.json``, the list of label texts;
* JSONL: ``train.jsonl`` and ``test.jsonl``, one JSON object a line;
* CSV: ``train.csv`` and ``test.csv`` with a header row.

``text_field`` and ``label_field`` name the fields (default ``sentence`` and ``label``). For JSONL
and CSV ``labels.json`` is optional: without it the labels are those of the training split.

The data folder is ``params.data_dir`` of the suite's stream, else ``$CLBENCH_DATA`` (which
``clbench run --data-dir`` sets for the run). See docs/streams.md.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from clbench import hookimpl
from clbench.errors import UserError

from .base import Examples, Stream, Task
from .tokenizer import ByteTokenizer, load_tokenizer, train_bpe

#: Task orders by name (short task names), as the O-LoRA paper (Wang et al. 2023) numbers them:
#: 1-3 on the standard CL benchmark, 4-6 on the 15-task long sequence (``long`` is order 6).
ORDERS: dict[str, list[str]] = {
    "order1": ["dbpedia", "amazon", "yahoo", "agnews"],
    "order2": ["dbpedia", "amazon", "agnews", "yahoo"],
    "order3": ["yahoo", "amazon", "agnews", "dbpedia"],
    "order4": [
        "MNLI", "CB", "WiC", "COPA", "QQP", "BoolQA", "RTE", "IMDB", "yelp", "amazon", "SST-2",
        "dbpedia", "agnews", "MultiRC", "yahoo",
    ],
    "order5": [
        "MultiRC", "BoolQA", "WiC", "MNLI", "CB", "COPA", "QQP", "RTE", "IMDB", "SST-2", "dbpedia",
        "agnews", "yelp", "amazon", "yahoo",
    ],
    "order6": [
        "yelp", "amazon", "MNLI", "CB", "COPA", "QQP", "RTE", "IMDB", "SST-2", "dbpedia",
        "agnews", "yahoo", "MultiRC", "BoolQA", "WiC",
    ],
}
ORDERS["long"] = ORDERS["order6"]

FORMATS = {"cl-benchmark": "json", "jsonl": "jsonl", "csv": "csv"}  # format -> file extension
DATA_ENV = "CLBENCH_DATA"


# -- reading --------------------------------------------------------------------------------------

def read_text(path: Path) -> str:
    """A file's text, strictly UTF-8 (a leading BOM is dropped); bad bytes are an error that
    says where."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        pos = start + exc.start
        line = data.count(b"\n", 0, pos) + 1
        col = pos - (data.rfind(b"\n", 0, pos) + 1) + 1
        raise UserError(
            f"{path}: invalid UTF-8 at byte {pos} (line {line}, column {col}): {data[pos:pos + 1]!r}"
        ) from None


def _json(text: str, path: Path, line: int | None = None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        lineno = exc.lineno if line is None else line
        raise UserError(f"{path}: invalid JSON at line {lineno} column {exc.colno}: {exc.msg}") from None


def read_records(path: Path, fmt: str) -> list[tuple[str, dict]]:
    """The records of a split file, each with where it is (``items[3]``, ``line 4``)."""
    text = read_text(path)
    if fmt == "cl-benchmark":
        items = _json(text, path)
        if not isinstance(items, list):
            raise UserError(f"{path}: expected a JSON list of objects, got a {type(items).__name__}")
        return [(f"items[{i}]", r) for i, r in enumerate(items)]
    if fmt == "jsonl":
        out = []
        for i, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may be in a string
            if line.strip():
                out.append((f"line {i}", _json(line, path, line=i)))
        return out
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # long documents in one cell
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return [(f"line {reader.line_num}", dict(r)) for r in reader]
    except csv.Error as exc:
        raise UserError(f"{path}: invalid CSV at line {reader.line_num}: {exc}") from None


def read_split(path: Path, fmt: str, text_field: str, label_field: str) -> tuple[list[str], list[str], list[str]]:
    """Texts, label texts and where each record is, of one split file; an empty split is an
    error."""
    texts, labels, wheres = [], [], []
    for where, r in read_records(path, fmt):
        if not isinstance(r, dict):
            raise UserError(f"{path}: {where} is not an object")
        for f in (text_field, label_field):
            if f not in r or r[f] is None:
                raise UserError(f"{path}: {where} has no field '{f}' (it has: {', '.join(map(str, r)) or 'none'})")
        t, lab = r[text_field], r[label_field]
        if not isinstance(t, str):
            raise UserError(f"{path}: {where}: field '{text_field}' must be a string, got {t!r}")
        if isinstance(lab, bool) or not isinstance(lab, (str, int)):
            raise UserError(f"{path}: {where}: field '{label_field}' must be a string or an integer, got {lab!r}")
        texts.append(t)
        labels.append(str(lab))
        wheres.append(where)
    if not texts:
        raise UserError(f"{path}: no examples (the task is empty)")
    return texts, labels, wheres


def _label_key(s: str):
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


@dataclass
class RawTask:
    """A task as read: label texts, and each split's texts with label indices into ``labels``."""

    name: str
    labels: list[str]
    train: tuple[list[str], np.ndarray]
    test: tuple[list[str], np.ndarray]
    dropped: dict[str, int] = field(default_factory=dict)  # file name -> examples left out (unknown label)


def read_task(folder: Path, name: str, fmt: str, text_field: str, label_field: str, drop_unknown: bool = False) -> RawTask:
    """Read one task folder. With ``drop_unknown``, examples whose label is not in the label list
    are left out (:attr:`RawTask.dropped` counts them) instead of being a one-line error."""
    ext = FORMATS[fmt]
    train_texts, train_labels, train_where = read_split(folder / f"train.{ext}", fmt, text_field, label_field)
    test_texts, test_labels, test_where = read_split(folder / f"test.{ext}", fmt, text_field, label_field)
    labels_path = folder / "labels.json"
    if fmt == "cl-benchmark" or labels_path.exists():
        labels = _json(read_text(labels_path), labels_path)
        if (
            not isinstance(labels, list)
            or not labels
            or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in labels)
        ):
            raise UserError(f"{labels_path}: expected a non-empty JSON list of label texts")
        labels = [str(x) for x in labels]
        if len(set(labels)) != len(labels):
            raise UserError(f"{labels_path}: a label appears twice")
        source = str(labels_path)
    else:
        labels = sorted(set(train_labels), key=_label_key)
        source = f"the labels of {folder / f'train.{ext}'} (add a labels.json to list all labels)"
    index = {lab: i for i, lab in enumerate(labels)}
    dropped: dict[str, int] = {}

    def split(path: Path, texts: list[str], split_labels: list[str], wheres: list[str]) -> tuple[list[str], np.ndarray]:
        unknown = [i for i, lab in enumerate(split_labels) if lab not in index]
        if unknown and not drop_unknown:
            i = unknown[0]
            shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
            raise UserError(
                f"{path}: {wheres[i]} has label {split_labels[i]!r}, which is not in {source} ({shown}); "
                "unknown_labels = \"drop\" leaves such examples out"
            )
        if unknown:
            dropped[path.name] = len(unknown)
            skip = set(unknown)
            keep = [i for i in range(len(texts)) if i not in skip]
            texts, split_labels = [texts[i] for i in keep], [split_labels[i] for i in keep]
        return texts, np.array([index[lab] for lab in split_labels], dtype=np.int64)

    train = split(folder / f"train.{ext}", train_texts, train_labels, train_where)
    test = split(folder / f"test.{ext}", test_texts, test_labels, test_where)
    return RawTask(name, labels, train, test, dropped)


# -- finding tasks ----------------------------------------------------------------------------------

def data_root(data_dir: str | None, stream: str = "text") -> Path:
    """The data folder: ``data_dir`` if given, else ``$CLBENCH_DATA``; it must exist."""
    value = data_dir or os.environ.get(DATA_ENV)
    if not value:
        raise UserError(
            f"no data folder for the '{stream}' stream: set params.data_dir in the suite, "
            f"pass --data-dir to clbench run, or set {DATA_ENV}"
        )
    root = Path(value).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder not found: {value}")
    return root


def find_tasks(root: Path, fmt: str) -> dict[str, tuple[Path, str]]:
    """Every task folder under ``root``: relative name -> (folder, format), sorted by name."""
    fmts = list(FORMATS) if fmt == "auto" else [fmt]
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in fmts:
            if f"train.{FORMATS[f]}" in filenames or f"test.{FORMATS[f]}" in filenames:
                rel = Path(dirpath).relative_to(root).as_posix()
                found[root.name if rel == "." else rel] = (Path(dirpath), f)
                break
    return dict(sorted(found.items()))


def resolve(name: str, found: dict[str, Any], root: Path) -> str | None:
    """The task a name means: an exact relative path, or a unique last part; None if absent."""
    name = name.strip("/")
    if name in found:
        return name
    hits = [t for t in found if t.rsplit("/", 1)[-1] == name]
    if len(hits) > 1:
        raise UserError(f"task name {name!r} is ambiguous in {root}: {', '.join(hits)} (give the path)")
    return hits[0] if hits else None


def choose_tasks(
    order: Any, tasks: list[str] | None, found: dict[str, Any], root: Path, skip_missing: bool
) -> tuple[list[str], list[str]]:
    """The stream's task sequence and the names skipped as absent.

    ``tasks`` (or, when None, every task found) is the pool; ``order`` is None (the pool in its
    order), a list of positions into the pool, a list of task names, or a named order.
    """
    pool = list(found) if tasks is None else list(tasks)
    if not pool and order is None:
        raise UserError(f"no tasks found in {root} (a task is a folder with train and test files)")
    if isinstance(order, list) and order and all(isinstance(i, int) and not isinstance(i, bool) for i in order):
        if sorted(order) != list(range(len(pool))):
            raise UserError(f"task order {order} is not a permutation of the {len(pool)} task positions 0..{len(pool) - 1}")
        names = [pool[i] for i in order]
    elif isinstance(order, str):
        if order not in ORDERS:
            raise UserError(f"unknown task order {order!r} (named orders: {', '.join(ORDERS)}; or give a list of tasks)")
        names = ORDERS[order]
    elif order is None:
        names = pool
    elif isinstance(order, list) and all(isinstance(n, str) for n in order):
        names = order
    else:
        raise UserError(f"a task order is a name, a list of task names or a list of positions, got {order!r}")

    allowed = found if tasks is None else {
        r: found[r] for r in (resolve(t, found, root) for t in tasks) if r is not None
    }
    seq, missing = [], []
    for n in names:
        r = resolve(n, allowed, root)
        (missing if r is None else seq).append(n if r is None else r)
    if len(set(seq)) != len(seq):
        dup = sorted({s for s in seq if seq.count(s) > 1})
        raise UserError(f"task(s) {', '.join(dup)} appear twice in the task sequence")
    if missing and not skip_missing:
        raise UserError(
            f"task(s) {', '.join(missing)} not found in {root} "
            f"(it has: {', '.join(found) or 'none'}); set skip_missing = true to skip absent tasks"
        )
    if not seq:
        raise UserError(f"none of the tasks {', '.join(names)} is in {root}")
    return seq, missing


def warn_skipped(stream: str, root: Path, skipped: list[str]) -> None:
    """One warning line naming the tasks an order named but ``root`` lacks (if any)."""
    if skipped:
        print(f"clbench: warning: stream '{stream}': skipped task(s) absent from {root}: {', '.join(skipped)}",
              file=sys.stderr)


def warn_dropped(stream: str, raw: list[RawTask]) -> None:
    """One warning line counting the examples left out for a label not in their task's labels."""
    dropped = [f"{n} {r.name}/{f}" for r in raw for f, n in r.dropped.items()]
    if dropped:
        print(
            f"clbench: warning: stream '{stream}': left out {sum(n for r in raw for n in r.dropped.values())} "
            f"example(s) whose label is not in the task's labels ({', '.join(dropped)})",
            file=sys.stderr,
        )


# -- sampling ---------------------------------------------------------------------------------------

def cap_per_class(y: np.ndarray, cap: int | None, seed: int, key: str) -> np.ndarray:
    """Indices keeping at most ``cap`` examples of each class, drawn with a generator seeded by
    ``seed`` and ``key`` (so a task's sample does not depend on the other tasks); file order."""
    if cap is None:
        return np.arange(len(y))
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(idx if len(idx) <= cap else rng.choice(idx, size=cap, replace=False))
    return np.sort(np.concatenate(keep))


# -- the stream -------------------------------------------------------------------------------------

def text_stream(
    *,
    data_dir: str | None = None,
    tasks: list[str] | None = None,
    format: Literal["auto", "cl-benchmark", "jsonl", "csv"] = "auto",
    text_field: str = "sentence",
    label_field: str = "label",
    scenario: Literal["class-incremental", "task-incremental", "domain-incremental"] = "class-incremental",
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    sample_seed: int = 0,
    tokenizer: str = "bytes",
    vocab_size: int = 8000,
    max_len: int = 256,
    skip_missing: bool = False,
    unknown_labels: Literal["error", "drop"] = "error",
    order: str | list | None = None,
) -> Stream:
    """Text classification tasks from a folder (CL_Benchmark, JSONL or CSV).

    :param data_dir: the data folder (default: ``$CLBENCH_DATA``, which ``--data-dir`` sets).
    :param tasks: the tasks to use, by relative path or unique last part (default: all found).
    :param format: the files to read; ``auto`` takes ``.json``, then ``.jsonl``, then ``.csv``.
    :param scenario: class-incremental (one head over the union of label texts),
        task-incremental (the same head, masked to each task's labels) or domain-incremental
        (the tasks must share one label space).
    :param train_per_class: keep at most this many training examples per class (None: all).
    :param test_per_class: the same for test examples.
    :param sample_seed: seeds the per-class sampling (not the cell's seed: all cells share data).
    :param tokenizer: ``bytes`` (UTF-8 bytes), ``bpe`` (trained on the stream's training text), or
        a backbone's own tokenizer, named as ``model.init`` names the backbone (``minilm``, a
        checkpoint folder, ``hf:<name>``); a suite with a pretrained ``model.init`` sets it.
    :param vocab_size: BPE vocabulary size (``bytes`` always has 257).
    :param max_len: sequences are truncated to this many tokens.
    :param skip_missing: skip tasks that the order names but the folder lacks (with a warning).
    :param unknown_labels: an example whose label is not in the task's label list is a one-line
        error (``error``), or is left out with one warning line that counts them (``drop``: O-LoRA's
        MNLI test split has examples labelled ``-``, without a gold label).
    :param order: a named order (``order1``-``order6``; ``long`` is ``order6``), a list of task
        names, or a list of positions into ``tasks``.
    """
    for name, v in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if v is not None and v < 1:
            raise UserError(f"{name} must be at least 1 (or left out for all), got {v}")
    if max_len < 1:
        raise UserError(f"max_len must be at least 1, got {max_len}")
    if tokenizer == "bpe" and vocab_size < 300:
        raise UserError(f"vocab_size must be at least 300 for BPE (256 bytes + merges), got {vocab_size}")

    if tokenizer not in ("bytes", "bpe"):
        tok = load_tokenizer(tokenizer, max_len=max_len)  # a bad name is reported before any reading
    root = data_root(data_dir)
    found = find_tasks(root, format)
    seq, skipped = choose_tasks(order, tasks, found, root, skip_missing)
    warn_skipped("text", root, skipped)
    raw = [read_task(found[n][0], n, found[n][1], text_field, label_field, unknown_labels == "drop") for n in seq]
    warn_dropped("text", raw)

    # label space
    if scenario == "domain-incremental":
        first = raw[0]
        for r in raw[1:]:
            if set(r.labels) != set(first.labels):
                raise UserError(
                    f"domain-incremental tasks must share a label space: {first.name} has "
                    f"[{', '.join(first.labels)}], {r.name} has [{', '.join(r.labels)}] "
                    "(use class- or task-incremental)"
                )
        labels = list(first.labels)
    else:
        labels = []
        for r in raw:
            labels += [lab for lab in r.labels if lab not in labels]
    index = {lab: i for i, lab in enumerate(labels)}

    # per-class caps, and label indices into the stream's label space
    splits = []  # per task: {split: (texts, y)}
    for r in raw:
        to_stream = np.array([index[lab] for lab in r.labels], dtype=np.int64)
        per = {}
        for split, (texts, y), cap in (("train", r.train, train_per_class), ("test", r.test, test_per_class)):
            keep = cap_per_class(y, cap, sample_seed, f"{r.name}/{split}")
            per[split] = ([texts[i] for i in keep], to_stream[y[keep]])
        splits.append(per)

    if tokenizer == "bpe":
        # Train on the tasks sorted by name, so every order of the same tasks shares a tokenizer.
        corpus = [t for _, per in sorted(zip(seq, splits), key=lambda p: p[0]) for t in per["train"][0]]
        tok = train_bpe(corpus, vocab_size=vocab_size, max_len=max_len)
    elif tokenizer == "bytes":
        tok = ByteTokenizer(max_len=max_len)
    # else: the backbone's tokenizer, loaded above

    tasks_out, longest = [], 1
    for pos, (r, per) in enumerate(zip(raw, splits)):
        ex = {}
        for split, (texts, y) in per.items():
            x, lengths = tok.encode(texts)
            longest = max(longest, x.shape[1])
            e = Examples(x, torch.from_numpy(y), lengths, torch.full((len(y),), pos, dtype=torch.long))
            if split == "test":  # evaluation batches of similar lengths compute little padding
                e = e[torch.sort(lengths, stable=True).indices]
            ex[split] = e
        classes = tuple(sorted(index[lab] for lab in r.labels))
        tasks_out.append(Task(r.name, classes, ex["train"], ex["test"]))

    return Stream(
        name="text",
        scenario=scenario,
        input_kind="tokens",
        labels=tuple(labels),
        tasks=tasks_out,
        input_dim=tok.vocab_size,
        max_len=longest,
        tokenizer=tok,
        params={
            "data_dir": str(root),
            "tasks": seq,
            "skipped_tasks": skipped,
            "tokenizer": tok.describe(),
        },
    )


@hookimpl
def register_streams(register):
    register(
        "text",
        text_stream,
        description="text classification from a folder: CL_Benchmark (train/test.json + labels.json), JSONL or CSV",
    )
