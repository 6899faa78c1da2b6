"""``standard-cl``: the standard CL benchmark, built from its public sources.

Needs the ``datasets`` package and a network the first time. Each task is downloaded, sampled as
O-LoRA's CL_Benchmark folder is (``train_per_class`` training examples per class, default 1000;
at most ``test_size`` test examples spread evenly over the classes, default 7600), written as a
CL_Benchmark folder under the cache (``$CLBENCH_CACHE/standard-cl/<hash>/``), and read back by the
``text`` stream, which does the rest (orders, scenarios, tokenizers). Later builds read the
folder and need no network.

The source ids below were written without network access to check them; a source that moved can
be replaced with the ``sources`` parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np

from clbench import hookimpl
from clbench.cache import cache_root
from clbench.errors import UserError

from .base import Stream
from .text import cap_per_class, text_stream

STARS = ["very negative", "negative", "neutral", "positive", "very positive"]

#: task -> where it comes from: dataset id (and config), title/text/label fields, label texts.
SOURCES: dict[str, dict] = {
    "TC/agnews": {"path": "fancyzhx/ag_news", "text": "text", "label": "label",
                  "labels": ["World", "Sports", "Business", "Science or Technology"]},
    "TC/dbpedia": {"path": "fancyzhx/dbpedia_14", "title": "title", "text": "content", "label": "label",
                   "labels": ["Company", "Educational Institution", "Artist", "Athlete", "Office Holder",
                              "Mean of Transportation", "Building", "Natural Place", "Village", "Animal",
                              "Plant", "Album", "Film", "Written Work"]},
    "TC/yahoo": {"path": "community-datasets/yahoo_answers_topics", "title": "question_title",
                 "text": "question_content", "label": "topic",
                 "labels": ["Society & Culture", "Science & Mathematics", "Health", "Education & Reference",
                            "Computers & Internet", "Sports", "Business & Finance", "Entertainment & Music",
                            "Family & Relationships", "Politics & Government"]},
    "SC/yelp": {"path": "Yelp/yelp_review_full", "text": "text", "label": "label", "labels": STARS},
    "SC/amazon": {"path": "mteb/amazon_reviews_multi", "config": "en", "text": "text", "label": "label",
                  "labels": STARS},
}
STANDARD = ["TC/agnews", "SC/amazon", "TC/dbpedia", "TC/yahoo", "SC/yelp"]


def _sentence(row: dict, src: dict) -> str:
    title = row.get(src["title"]) if src.get("title") else None
    text = row[src["text"]] or ""
    return f"Title: {title}\nText: {text}\n" if title else f"Text: {text}\n"


def _build_task(folder: Path, task: str, src: dict, train_per_class: int, test_size: int, seed: int) -> None:
    try:
        import datasets  # optional: clbench[hub]
    except ImportError:
        raise UserError(
            "stream 'standard-cl' needs the 'datasets' package (pip install datasets) and a network; "
            "or point the 'text' stream at a CL_Benchmark folder"
        ) from None
    try:
        ds = datasets.load_dataset(src["path"], src.get("config"))
    except Exception as exc:  # no network, a moved dataset, ...
        msg = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"stream 'standard-cl': cannot fetch {src['path']} for {task}: {type(exc).__name__}: {msg}") from None
    labels = src["labels"]
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for split, cap in (("train", train_per_class), ("test", max(1, test_size // len(labels)))):
        part = ds[split]
        y = np.asarray(list(part[src["label"]]), dtype=np.int64)
        keep = cap_per_class(y, cap, seed, f"{task}/{split}")
        rows = [{"label": labels[int(y[i])], "sentence": _sentence(part[int(i)], src)} for i in keep]
        (tmp / f"{split}.json").write_text(json.dumps(rows, ensure_ascii=False, indent=0), encoding="utf-8")
    (tmp / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def standard_cl(
    *,
    tasks: list[str] | None = None,
    scenario: Literal["class-incremental", "task-incremental", "domain-incremental"] = "class-incremental",
    train_per_class: int = 1000,
    test_size: int = 7600,
    sample_seed: int = 0,
    tokenizer: Literal["bytes", "bpe"] = "bytes",
    vocab_size: int = 8000,
    max_len: int = 256,
    sources: dict | None = None,
    order: str | list | None = None,
) -> Stream:
    """The standard CL benchmark (AG News, Amazon, DBpedia, Yahoo, Yelp) from its public sources.

    :param tasks: which of ``TC/agnews, SC/amazon, TC/dbpedia, TC/yahoo, SC/yelp`` (default all).
    :param sources: replaces entries of :data:`SOURCES` (same keys).
    """
    srcs = {**SOURCES, **(sources or {})}
    names = list(tasks) if tasks is not None else list(STANDARD)
    for t in names:
        if t not in srcs:
            raise UserError(f"stream 'standard-cl': unknown task {t!r} (known: {', '.join(srcs)})")
    if train_per_class < 1 or test_size < 1:
        raise UserError("stream 'standard-cl': train_per_class and test_size must be at least 1")
    key = json.dumps([train_per_class, test_size, sample_seed, srcs], sort_keys=True)
    root = cache_root() / "standard-cl" / hashlib.sha256(key.encode()).hexdigest()[:16]
    for t in names:
        folder = root / t
        if not (folder / "labels.json").is_file():
            _build_task(folder, t, srcs[t], train_per_class, test_size, sample_seed)
    return text_stream(
        data_dir=str(root), tasks=names, format="cl-benchmark", scenario=scenario,
        tokenizer=tokenizer, vocab_size=vocab_size, max_len=max_len, order=order,
    )


@hookimpl
def register_streams(register):
    register(
        "standard-cl",
        standard_cl,
        description="the standard CL benchmark from its public sources (needs 'datasets' and a network)",
    )
