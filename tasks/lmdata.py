"""What the generative streams that read a data folder share (``instructions``, ``trace``,
``jsonl-instructions``): finding and ordering their tasks (the ``text`` stream's machinery),
per-task caps, the checks of prompt/answer records, the held-out general text, and the final
call to :func:`~clbench.tasks.generative.generative_stream`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from clbench.errors import UserError

from .base import Stream
from .generative import TextTask, generative_stream, text_tokenizer
from .scoring import UNAVAILABLE, check_metric
from .text import cap_per_class, choose_tasks, data_root, find_tasks, read_text, warn_skipped


def folder_tasks(stream: str, data_dir: str | None, fmt: str, order: Any, tasks: list[str] | None,
                 skip_missing: bool, sort_key: Callable[[str], Any] | None = None,
                 ) -> tuple[Path, dict[str, tuple[Path, str]], list[str], list[str]]:
    """The data folder, the task folders found in it, the stream's task sequence and the
    names skipped as absent (with one warning line), as the ``text`` stream finds them. Without
    ``tasks``, the pool is every task found, sorted by ``sort_key`` (default: by name)."""
    root = data_root(data_dir, stream)
    found = find_tasks(root, fmt)
    if tasks is None and sort_key is not None:
        tasks = sorted(found, key=sort_key)
    seq, skipped = choose_tasks(order, tasks, found, root, skip_missing)
    warn_skipped(stream, root, skipped)
    return root, found, seq, skipped


def check_caps(**caps: int | None) -> None:
    for name, v in caps.items():
        if v is not None and v < 1:
            raise UserError(f"{name} must be at least 1 (or left out for all), got {v}")


def cap(pairs: list, n: int | None, seed: int, key: str) -> list:
    """At most ``n`` of ``pairs``, drawn with a generator seeded by ``seed`` and ``key`` (the
    task and split, so a task's sample does not depend on the other tasks), in file order."""
    return [pairs[i] for i in cap_per_class(np.zeros(len(pairs), dtype=np.int64), n, seed, key)]


def check_answers(path: Path, wheres: list[str], answers: list[str]) -> None:
    """An empty (or all-blank) answer is a one-line error that says where it is."""
    for where, a in zip(wheres, answers):
        if not a.strip():
            raise UserError(f"{path}: {where} has an empty answer")


def task_metric(stream: str, name: str, metric: str, hint: str = "") -> str:
    """``metric`` if a task may have it; else a one-line error (with ``hint``: how to name
    another metric for this task)."""
    where = f"stream '{stream}': task '{name}'"
    if metric in UNAVAILABLE and hint:
        raise UserError(f"{where} is scored by {metric!r}, which is not available here: {UNAVAILABLE[metric]}; {hint}")
    check_metric(metric, where)
    return metric


#: clbench's default general text: English prose in the public domain (data/SOURCES.md).
DEFAULT_GENERAL = "general-english.txt"


def default_general() -> list[str]:
    """The documents (non-empty lines) of clbench's default general text, :data:`DEFAULT_GENERAL`."""
    from importlib import resources

    text = resources.files("clbench.tasks").joinpath("data", DEFAULT_GENERAL).read_text(encoding="utf-8")
    return [line.strip() for line in text.split("\n") if line.strip()]


def read_general(general: str | list[str] | None, root: Path) -> list[str] | None:
    """The held-out general text: ``.txt`` files, or folders of them (every ``.txt`` below,
    in name order), relative to the data folder; a document per non-empty line. None (not set):
    clbench's default general text (:func:`default_general`); an empty list: none."""
    if general is None:
        return default_general()
    if not general:
        return None
    docs: list[str] = []
    for spec in [general] if isinstance(general, str) else general:
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise UserError(f"general text folder {path} has no .txt file")
        elif path.is_file():
            files = [path]
        else:
            raise UserError(f"general text not found: {path}")
        for f in files:
            docs += [line.strip() for line in read_text(f).split("\n") if line.strip()]
    if not docs:
        raise UserError(f"general text {general!r} has no non-empty line")
    return docs


def build(stream: str, tasks: list[TextTask], *, tokenizer: str, vocab_size: int, max_len: int,
          general: list[str] | None, params: dict) -> Stream:
    """Tokenize ``tasks`` (in stream order) into a generative stream. A BPE tokenizer is trained
    on the training prompts and answers, tasks taken in name order (every order of the same
    tasks gets the same tokenizer)."""
    if max_len < 2:
        raise UserError(f"max_len must be at least 2, got {max_len}")
    if tokenizer == "bpe" and vocab_size < 300:
        raise UserError(f"vocab_size must be at least 300 for BPE (256 bytes + merges), got {vocab_size}")
    corpus = [p + a for t in sorted(tasks, key=lambda t: t.name) for p, a in t.train] if tokenizer == "bpe" else []
    tok = text_tokenizer(tokenizer, corpus, vocab_size=vocab_size)
    return generative_stream(stream, tasks, tok, max_len=max_len, general=general,
                             params={**params, "tokenizer": tok.describe()})
