"""The ``text`` stream: formats, scenarios, orders, caps, tokenizers, batching and bad input.

Most tests write small data folders themselves; the ones marked ``shared_data`` read the real
CL_Benchmark tasks from ../shared/data and skip, saying so, when that folder is absent.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clbench.cli import main
from clbench.errors import UserError
from clbench.tasks.batching import batch_indices, padding_fraction
from clbench.tasks.text import ORDERS, text_stream
from clbench.tasks.tokenizer import ByteTokenizer, train_bpe
from conftest import CL_BENCHMARK, make_suite, shared_data

pytestmark = pytest.mark.usefixtures("isolated_data")


def write_task(root: Path, name: str, train, test, labels=None, fmt="cl-benchmark", text="sentence", label="label"):
    """Write a task folder; ``train``/``test`` are lists of (text, label)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        recs = [{label: lab, text: t} for t, lab in rows]
        if fmt == "cl-benchmark":
            (folder / f"{split}.json").write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
        elif fmt == "jsonl":
            (folder / f"{split}.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8"
            )
        else:
            with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=[text, label])
                w.writeheader()
                w.writerows(recs)
    if labels is not None:
        (folder / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    return folder


def rows(labels, n, prefix):
    """n examples per label, of varied lengths."""
    return [(f"{prefix} {lab} {i} " + "x" * (i * 7 % 40), lab) for lab in labels for i in range(n)]


@pytest.fixture
def bench_dir(tmp_path):
    """A small CL_Benchmark folder: TC/agnews, TC/dbpedia, SC/amazon, SC/yelp."""
    root = tmp_path / "CL"
    news = ["World", "Sports", "Business", "Science or Technology"]
    stars = ["very negative", "negative", "neutral", "positive", "very positive"]
    write_task(root, "TC/agnews", rows(news, 6, "news"), rows(news, 3, "test"), news)
    write_task(root, "TC/dbpedia", rows(["Company", "Artist", "Film"], 6, "db"), rows(["Company", "Artist", "Film"], 2, "t"), ["Company", "Artist", "Film"])
    write_task(root, "SC/amazon", rows(stars, 5, "amz"), rows(stars, 2, "t"), stars)
    write_task(root, "SC/yelp", rows(stars[::-1], 4, "yelp"), rows(stars, 2, "t"), stars[::-1])
    return root


def decode(stream, task, split, i):
    ex = getattr(stream.tasks[task], split)
    return stream.tokenizer.decode(ex.x[i, : ex.lengths[i]].tolist())


# -- formats ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["cl-benchmark", "jsonl", "csv"])
def test_each_format_reads_texts_and_labels(tmp_path, fmt):
    train = [("héllo wörld", "pos"), ("日本語のテキスト", "neg"), ("with \"quotes\",\nnewlines\u2028and\r\nseparators", "pos")]
    test = [("ok", "neg"), ("fine", "pos")]
    write_task(tmp_path, "mine", train, test, ["pos", "neg"] if fmt == "cl-benchmark" else None, fmt=fmt,
               text="review", label="stars")
    s = text_stream(data_dir=str(tmp_path), text_field="review", label_field="stars")
    assert [t.name for t in s.tasks] == ["mine"]
    task = s.tasks[0]
    assert s.input_kind == "tokens" and s.input_dim == 257
    assert task.train.x.dtype == torch.int64 and task.train.x.shape[0] == 3
    assert [decode(s, 0, "train", i) for i in range(3)] == [t for t, _ in train]
    got = [s.labels[y] for y in task.train.y.tolist()]
    assert got == [lab for _, lab in train]
    # test examples are sorted by length (cheap evaluation); the (text, label) pairs survive
    pairs = {(decode(s, 0, "test", i), s.labels[int(task.test.y[i])]) for i in range(2)}
    assert pairs == set(test)
    assert task.test.lengths.tolist() == sorted(task.test.lengths.tolist())


def test_labels_without_labels_json_come_from_train_sorted(tmp_path):
    write_task(tmp_path, "t", [("a", 10), ("b", 2), ("c", 2)], [("d", 10)], fmt="jsonl")
    s = text_stream(data_dir=str(tmp_path))
    assert s.labels == ("2", "10")


def test_format_option_picks_the_files(tmp_path):
    write_task(tmp_path, "t", [("json text", "a")], [("j", "a")], ["a"], fmt="cl-benchmark")
    write_task(tmp_path, "t", [("csv text", "a")], [("c", "a")], fmt="csv")
    assert decode(text_stream(data_dir=str(tmp_path)), 0, "train", 0) == "json text"
    assert decode(text_stream(data_dir=str(tmp_path), format="csv"), 0, "train", 0) == "csv text"


# -- scenarios --------------------------------------------------------------------------------------

def test_class_incremental_is_the_union_of_label_texts(bench_dir):
    s = text_stream(data_dir=str(bench_dir), tasks=["agnews", "amazon", "yelp"])
    assert s.scenario == "class-incremental" and s.class_mask() is None
    assert len(s.labels) == 4 + 5  # amazon and yelp share their five label texts
    assert s.tasks[1].classes == s.tasks[2].classes == tuple(range(4, 9))
    # a label text means the same index in every task, whatever labels.json's order
    yelp = s.tasks[2]
    assert s.labels[int(yelp.train.y[0])] == "very positive"  # first rows of yelp are stars[::-1]
    assert decode(s, 2, "train", 0).startswith("yelp very positive")


def test_task_incremental_masks_each_task_to_its_labels(bench_dir):
    s = text_stream(data_dir=str(bench_dir), tasks=["TC/agnews", "TC/dbpedia"], scenario="task-incremental")
    mask = s.class_mask()
    assert mask.shape == (2, 7)
    assert mask[0].tolist() == [True] * 4 + [False] * 3
    assert mask[1].tolist() == [False] * 4 + [True] * 3


def test_domain_incremental_shares_one_label_space(bench_dir):
    s = text_stream(data_dir=str(bench_dir), tasks=["SC/amazon", "SC/yelp"], scenario="domain-incremental")
    assert len(s.labels) == 5
    assert s.tasks[0].classes == s.tasks[1].classes == (0, 1, 2, 3, 4)
    assert s.labels[int(s.tasks[1].train.y[0])] == "very positive"
    with pytest.raises(UserError, match="share a label space.*TC/agnews"):
        text_stream(data_dir=str(bench_dir), tasks=["SC/amazon", "TC/agnews"], scenario="domain-incremental")


# -- orders -----------------------------------------------------------------------------------------

def test_named_order_reports_absent_tasks(bench_dir):
    with pytest.raises(UserError, match=r"task\(s\) yahoo not found .*skip_missing"):
        text_stream(data_dir=str(bench_dir), order="order1")


def test_named_order_skips_absent_tasks_and_says_which(bench_dir, capsys):
    s = text_stream(data_dir=str(bench_dir), order="order1", skip_missing=True)
    assert [t.name for t in s.tasks] == ["TC/dbpedia", "SC/amazon", "TC/agnews"]
    assert s.params["skipped_tasks"] == ["yahoo"]
    err = capsys.readouterr().err
    assert "skipped" in err and "yahoo" in err and err.count("\n") == 1
    # task positions follow the order
    assert [int(t.train.t[0]) for t in s.tasks] == [0, 1, 2]
    s3 = text_stream(data_dir=str(bench_dir), order="order3", skip_missing=True)
    assert [t.name for t in s3.tasks] == ["SC/amazon", "TC/agnews", "TC/dbpedia"]
    long = text_stream(data_dir=str(bench_dir), order="long", skip_missing=True)
    assert [t.name for t in long.tasks] == ["SC/yelp", "SC/amazon", "TC/dbpedia", "TC/agnews"]
    assert len(long.params["skipped_tasks"]) == 11


def test_orders_by_list_and_by_position(bench_dir):
    s = text_stream(data_dir=str(bench_dir), order=["yelp", "TC/agnews"])
    assert [t.name for t in s.tasks] == ["SC/yelp", "TC/agnews"]
    pool = ["TC/agnews", "SC/amazon", "TC/dbpedia"]
    s = text_stream(data_dir=str(bench_dir), tasks=pool, order=[2, 0, 1])
    assert [t.name for t in s.tasks] == ["TC/dbpedia", "TC/agnews", "SC/amazon"]
    default = text_stream(data_dir=str(bench_dir))
    assert [t.name for t in default.tasks] == ["SC/amazon", "SC/yelp", "TC/agnews", "TC/dbpedia"]
    with pytest.raises(UserError, match="not a permutation"):
        text_stream(data_dir=str(bench_dir), tasks=pool, order=[0, 0, 1])


def test_a_named_order_only_takes_tasks_from_the_pool(bench_dir):
    with pytest.raises(UserError, match="dbpedia"):
        text_stream(data_dir=str(bench_dir), tasks=["agnews", "amazon"], order="order1")
    s = text_stream(data_dir=str(bench_dir), tasks=["agnews", "amazon"], order="order1", skip_missing=True)
    assert [t.name for t in s.tasks] == ["SC/amazon", "TC/agnews"]
    assert s.params["skipped_tasks"] == ["dbpedia", "yahoo"]


def test_published_orders():
    assert ORDERS["order1"] == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert ORDERS["order2"] == ["dbpedia", "amazon", "agnews", "yahoo"]
    assert ORDERS["order3"] == ["yahoo", "amazon", "agnews", "dbpedia"]
    assert len(ORDERS["long"]) == 15 and ORDERS["long"][:3] == ["yelp", "amazon", "MNLI"]


def test_ambiguous_short_name(tmp_path):
    write_task(tmp_path, "A/x", [("a", "l")], [("a", "l")], ["l"])
    write_task(tmp_path, "B/x", [("a", "l")], [("a", "l")], ["l"])
    with pytest.raises(UserError, match="ambiguous.*A/x, B/x"):
        text_stream(data_dir=str(tmp_path), tasks=["x"])


def test_orders_from_a_suite(bench_dir, host):
    from clbench.loop import build_stream
    from clbench.suite import parse_suite

    data = make_suite(["naive"], stream="text", stream_params={"data_dir": str(bench_dir), "skip_missing": True},
                      orders=["order1", ["yelp", "agnews"], "default"])
    cells = parse_suite(data, "s.toml").cells
    assert [c.order for c in cells] == ["order1", "yelp-agnews", "default"]
    names = [[t.name for t in build_stream(c).tasks] for c in cells]
    assert names[0] == ["TC/dbpedia", "SC/amazon", "TC/agnews"]
    assert names[1] == ["SC/yelp", "TC/agnews"]
    assert len(names[2]) == 4


# -- caps -------------------------------------------------------------------------------------------

def test_per_class_caps_are_seeded(bench_dir):
    def picked(seed):
        s = text_stream(data_dir=str(bench_dir), tasks=["agnews"], train_per_class=2, test_per_class=1, sample_seed=seed)
        t = s.tasks[0]
        return s, t, {decode(s, 0, "train", i) for i in range(len(t.train))}

    s, t, a = picked(0)
    assert np.bincount(t.train.y.numpy()).tolist() == [2, 2, 2, 2]
    assert np.bincount(t.test.y.numpy()).tolist() == [1, 1, 1, 1]
    assert picked(0)[2] == a
    assert any(picked(seed)[2] != a for seed in (1, 2, 3))
    # a class with fewer examples than the cap keeps them all
    full = text_stream(data_dir=str(bench_dir), tasks=["agnews"], train_per_class=100).tasks[0]
    assert len(full.train) == 24


def test_a_tasks_sample_does_not_depend_on_the_other_tasks(bench_dir):
    one = text_stream(data_dir=str(bench_dir), tasks=["amazon"], train_per_class=2)
    two = text_stream(data_dir=str(bench_dir), tasks=["agnews", "amazon"], train_per_class=2)
    a = {decode(one, 0, "train", i) for i in range(10)}
    b = {decode(two, 1, "train", i) for i in range(10)}
    assert a == b


# -- tokenizers -------------------------------------------------------------------------------------

def test_byte_tokenizer_round_trip_and_truncation():
    tok = ByteTokenizer(max_len=12)
    texts = ["héllo", "日本", "", "a" * 30]
    x, lengths = tok.encode(texts)
    assert lengths.tolist() == [6, 6, 0, 12]
    assert x.shape == (4, 12) and int(x[2].sum()) == 0
    assert [tok.decode(x[i, : lengths[i]].tolist()) for i in range(3)] == texts[:3]
    assert tok.decode(x[3].tolist()) == "a" * 12


def test_bpe_round_trip_vocab_and_truncation(tmp_path):
    corpus = [f"the quick brown fox {i} jumps over the lazy dog" for i in range(200)] + ["héllo wörld 日本語"]
    tok = train_bpe(corpus, vocab_size=400, max_len=64, cache_dir=tmp_path)
    assert 257 < tok.vocab_size <= 400
    texts = ["the lazy fox", "héllo 日本語 unseen ☃ text", " spaced  out\n"]
    x, lengths = tok.encode(texts)
    assert [tok.decode(x[i, : lengths[i]].tolist()) for i in range(3)] == texts
    assert lengths[0] < len(texts[0])  # merges were learnt
    short = train_bpe(corpus, vocab_size=400, max_len=3, cache_dir=tmp_path)
    assert short.encode(["the quick brown fox"])[1].tolist() == [3]


def test_bpe_truncation_of_long_texts_is_exact(tmp_path):
    """Long texts are cut at a word boundary before encoding: the ids must be the full text's."""
    rng = np.random.default_rng(0)
    words = ["the", "fox_1", "42", "héllo", "日本語", "don't", "--", "a.b", "  ", "\n", "x" * 30]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 80)))) for _ in range(300)]
    tok = train_bpe(texts, vocab_size=320, max_len=5, cache_dir=tmp_path)
    for max_len in (1, 5, 17):
        tok.max_len = max_len
        x, lengths = tok.encode(texts)
        full = [e.ids[:max_len] for e in tok.tok.encode_batch(texts)]
        assert [x[i, : lengths[i]].tolist() for i in range(len(texts))] == full


def test_bpe_cache_is_keyed_by_text_and_settings(tmp_path, monkeypatch):
    import tokenizers

    corpus = ["alpha beta gamma delta"] * 50
    a = train_bpe(corpus, vocab_size=300, cache_dir=tmp_path)
    assert a.path.is_file() and a.path.parent == tmp_path

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of using the cache")

    monkeypatch.setattr(tokenizers.Tokenizer, "train_from_iterator", no_training)
    b = train_bpe(corpus, vocab_size=300, cache_dir=tmp_path)
    assert b.path == a.path and b.encode(["alpha beta"])[0].tolist() == a.encode(["alpha beta"])[0].tolist()
    with pytest.raises(AssertionError, match="trained again"):
        train_bpe(corpus + ["one more"], vocab_size=300, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="trained again"):
        train_bpe(corpus, vocab_size=301, cache_dir=tmp_path)


def test_bpe_stream_uses_the_default_cache_and_shares_it_across_orders(bench_dir, tmp_path):
    a = text_stream(data_dir=str(bench_dir), tokenizer="bpe", vocab_size=300, max_len=32)
    assert a.tokenizer.kind == "bpe" and a.input_dim == a.tokenizer.vocab_size
    assert a.tokenizer.path.parent == tmp_path / "cache" / "tokenizers"
    b = text_stream(data_dir=str(bench_dir), tokenizer="bpe", vocab_size=300, max_len=32, order=[3, 2, 1, 0])
    assert b.tokenizer.path == a.tokenizer.path
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 1
    assert decode(a, 0, "train", 0) == decode(b, 3, "train", 0)
    assert a.max_len <= 32


# -- batching ---------------------------------------------------------------------------------------

def test_random_batching_is_the_seeded_permutation():
    lengths = torch.arange(100)
    got = batch_indices(lengths, 32, torch.Generator().manual_seed(3))
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(3))
    assert [b.tolist() for b in got] == [b.tolist() for b in perm.split(32)]


def test_length_batching_covers_every_example_once_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (1000,), generator=g)
    rand = batch_indices(lengths, 16, torch.Generator().manual_seed(1))
    by_len = batch_indices(lengths, 16, torch.Generator().manual_seed(1), "length", window=8)
    assert sorted(torch.cat(by_len).tolist()) == list(range(1000))
    assert [b.tolist() for b in by_len] == [b.tolist() for b in batch_indices(lengths, 16, torch.Generator().manual_seed(1), "length", window=8)]
    assert padding_fraction(lengths, by_len) < padding_fraction(lengths, rand) / 3
    # windows keep batches varied: one window of everything would sort the whole epoch
    assert padding_fraction(lengths, batch_indices(lengths, 16, torch.Generator().manual_seed(1), "length", window=1000)) <= padding_fraction(lengths, by_len)


def test_runner_records_less_padding_with_length_batching(bench_dir, run_suite_dict, tmp_path):
    def run(batching, out):
        params = {"data_dir": str(bench_dir), "tasks": ["agnews", "amazon"], "max_len": 64}
        data = make_suite(["naive"], stream="text", stream_params=params, model={"max_len": 64},
                          training={"batch_size": 6, "batching": batching, "length_window": 3})
        _, tables = run_suite_dict(data, out=tmp_path / out)
        (row,) = tables.cells.to_dict("records")
        assert row["status"] == "ok", row["error"]
        return row, tables.measurements

    rand, _ = run("random", "r")
    length, m1 = run("length", "l1")
    again, m2 = run("length", "l2")
    assert 0 <= length["padding_fraction"] < rand["padding_fraction"]
    assert length["tokens_seen"] == rand["tokens_seen"]
    assert m1["value"].tolist() == m2["value"].tolist()  # seeded: the same batches, the same results


# -- data folder precedence -------------------------------------------------------------------------

def test_data_folder_from_param_then_environment(bench_dir, tmp_path, monkeypatch):
    other = tmp_path / "other"
    write_task(other, "only", [("a", "x")], [("b", "x")], ["x"])
    with pytest.raises(UserError, match="no data folder.*--data-dir.*CLBENCH_DATA"):
        text_stream()
    monkeypatch.setenv("CLBENCH_DATA", str(other))
    assert [t.name for t in text_stream().tasks] == ["only"]
    assert len(text_stream(data_dir=str(bench_dir)).tasks) == 4


def test_cli_data_dir_overrides_the_environment_for_one_run(bench_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_DATA", str(tmp_path / "nowhere"))
    suite = tmp_path / "s.toml"
    suite.write_text(
        'name = "s"\n[model]\nd_model = 16\nn_layers = 1\nn_heads = 2\nmax_len = 64\n'
        '[training]\nepochs = 1\nbatch_size = 16\n'
        '[[streams]]\nname = "text"\nparams = { tasks = ["agnews"], max_len = 64 }\n'
        '[[strategies]]\nname = "naive"\n'
    )
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--data-dir", str(bench_dir)]) == 0
    assert (out / "cells.parquet").is_file()
    assert os.environ["CLBENCH_DATA"] == str(tmp_path / "nowhere")


# -- bad input, through the CLI ---------------------------------------------------------------------

def _suite(tmp_path, params: dict, orders=None) -> Path:
    p = tmp_path / "bad.toml"
    ps = ", ".join(f"{k} = {json.dumps(v)}" for k, v in params.items())
    text = f'name = "bad"\n[[streams]]\nname = "text"\nparams = {{ {ps} }}\n'
    if orders is not None:
        text += f"orders = {json.dumps(orders)}\n"
    p.write_text(text + '[[strategies]]\nname = "naive"\n')
    return p


def _fails(tmp_path, capsys, params, *match, orders=None):
    out = tmp_path / "results"
    rc = main(["run", str(_suite(tmp_path, params, orders)), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    (line,) = [x for x in err.splitlines() if x.startswith("clbench: error:")]  # one line
    assert "Traceback" not in err
    for m in match:
        assert m in line, line
    assert not out.exists()
    return line


def test_error_missing_folder(tmp_path, capsys):
    _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "nope")}, "data folder not found", "nope")


def test_error_missing_file(tmp_path, capsys):
    folder = write_task(tmp_path / "d", "t", [("a", "x")], [("b", "x")], ["x"])
    (folder / "test.json").unlink()
    _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "d")}, "missing file", "test.json")
    write_task(tmp_path / "e", "t", [("a", "x")], [("b", "x")])  # CL_Benchmark needs labels.json
    _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "e")}, "missing file", "labels.json")


def test_error_malformed_json_says_file_and_position(tmp_path, capsys):
    folder = write_task(tmp_path / "d", "t", [("a", "x")], [("b", "x")], ["x"])
    (folder / "train.json").write_text('[\n{"label": "x", "sentence": "a"},\n{"label": "x" "sentence": "b"}\n]')
    _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "d")}, "train.json", "invalid JSON at line 3 column 15")


def test_error_malformed_jsonl_line(tmp_path, capsys):
    folder = write_task(tmp_path / "d", "t", [("a", "x"), ("b", "x")], [("b", "x")], fmt="jsonl")
    (folder / "test.jsonl").write_text('{"label": "x", "sentence": "a"}\n\n{"label": "x", "sentence": }\n')
    _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "d")}, "test.jsonl", "invalid JSON at line 3")


def test_error_label_not_in_labels_json(tmp_path, capsys):
    write_task(tmp_path / "d", "t", [("a", "x"), ("b", "y")], [("b", "x")], ["x"])
    _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "d")}, "train.json: items[1] has label 'y'", "labels.json")


def test_error_label_unseen_in_train_for_csv(tmp_path, capsys):
    write_task(tmp_path / "d", "t", [("a", "x"), ("b", "x")], [("b", "x"), ("c", "z")], fmt="csv")
    _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "d")}, "test.csv: line 3 has label 'z'")


def test_error_missing_field(tmp_path, capsys):
    write_task(tmp_path / "d", "t", [("a", "x")], [("b", "x")], fmt="csv", text="body")
    _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "d")}, "train.csv: line 2 has no field 'sentence'", "body")


def test_error_empty_task(tmp_path, capsys):
    write_task(tmp_path / "d", "t", [], [("b", "x")], ["x"])
    _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "d")}, "train.json: no examples")


def test_error_invalid_utf8_says_where(tmp_path, capsys):
    folder = write_task(tmp_path / "d", "t", [("a", "x")], [("b", "x")], ["x"])
    (folder / "train.json").write_bytes(b'[\n{"label": "x", "sentence": "caf\xe9"}\n]')
    _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "d")}, "train.json: invalid UTF-8 at byte 33 (line 2, column 32)")


def test_error_unknown_order(bench_dir, tmp_path, capsys):
    _fails(tmp_path, capsys, {"data_dir": str(bench_dir)}, "unknown task order 'order9'", "order1", orders=["order9"])


def test_error_absent_task(bench_dir, tmp_path, capsys):
    _fails(tmp_path, capsys, {"data_dir": str(bench_dir), "tasks": ["agnews", "MNLI"]}, "MNLI not found", "skip_missing")


def test_error_bad_params(bench_dir, tmp_path, capsys):
    _fails(tmp_path, capsys, {"data_dir": str(bench_dir), "train_per_class": 0}, "train_per_class must be at least 1")
    _fails(tmp_path, capsys, {"data_dir": str(bench_dir), "tokenizer": "wordpiece"}, "tokenizer 'wordpiece'", "'bytes', 'bpe', 'minilm'")


def test_standard_cl_without_datasets_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    p = tmp_path / "hub.toml"
    p.write_text('name = "hub"\n[[streams]]\nname = "standard-cl"\n[[strategies]]\nname = "naive"\n')
    out = tmp_path / "results"
    assert main(["run", str(p), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("clbench: error:")]
    assert "needs the 'datasets' package" in line and "Traceback" not in err
    assert not out.exists()


class _FakeDatasets:
    """Stands in for the ``datasets`` package: ``load_dataset`` gives made-up splits."""

    def __init__(self, fail: Exception | None = None):
        self.fail, self.calls = fail, []

    def load_dataset(self, path, config=None):
        self.calls.append(path)
        if self.fail:
            raise self.fail
        n_labels = 4 if "ag_news" in path else 5

        def split(n):
            return _FakeSplit([{"text": f"{path} {i}", "label": i % n_labels} for i in range(n)])

        return {"train": split(40), "test": split(30)}


class _FakeSplit:
    def __init__(self, rows):
        self.rows = rows

    def __getitem__(self, key):
        return [r[key] for r in self.rows] if isinstance(key, str) else self.rows[key]


def test_standard_cl_samples_writes_and_reuses_a_cl_benchmark_folder(tmp_path, monkeypatch):
    import sys

    from clbench.tasks.hub import standard_cl

    fake = _FakeDatasets()
    monkeypatch.setitem(sys.modules, "datasets", fake)
    s = standard_cl(tasks=["TC/agnews", "SC/yelp"], train_per_class=3, test_size=10, scenario="task-incremental")
    assert [t.name for t in s.tasks] == ["TC/agnews", "SC/yelp"]
    agnews, yelp = s.tasks
    assert np.bincount(agnews.train.y.numpy()).tolist() == [3, 3, 3, 3]
    assert len(agnews.test) == 4 * 2 and len(yelp.test) == 5 * 2
    assert s.labels[:4] == ("World", "Sports", "Business", "Science or Technology")
    assert decode(s, 0, "train", 0).startswith("Text: fancyzhx/ag_news ")
    folder = next((tmp_path / "cache" / "standard-cl").iterdir())
    assert json.loads((folder / "SC/yelp/labels.json").read_text())[0] == "very negative"
    # built once: a second stream reads the folder, no download
    monkeypatch.setitem(sys.modules, "datasets", _FakeDatasets(fail=AssertionError("downloaded again")))
    again = standard_cl(tasks=["TC/agnews", "SC/yelp"], train_per_class=3, test_size=10, order=[1, 0])
    assert [t.name for t in again.tasks] == ["SC/yelp", "TC/agnews"]


def test_standard_cl_without_a_network_is_one_line(tmp_path, monkeypatch):
    import sys

    from clbench.tasks.hub import standard_cl

    monkeypatch.setitem(sys.modules, "datasets", _FakeDatasets(fail=ConnectionError("Couldn't reach the hub\nmore")))
    with pytest.raises(UserError) as exc:
        standard_cl(tasks=["TC/agnews"])
    assert "cannot fetch fancyzhx/ag_news for TC/agnews: ConnectionError: Couldn't reach the hub" == str(exc.value).split("'standard-cl': ")[1]


# -- the shared CL_Benchmark tasks ------------------------------------------------------------------

SIZES = {  # task: (classes, train, test), as ../shared/data/README.md lists them
    "TC/agnews": (4, 4000, 7600),
    "TC/dbpedia": (14, 6074, 1526),
    "SC/amazon": (5, 5000, 7600),
    "SC/yelp": (5, 3997, 1003),
    "SC/SST-2": (2, 2000, 872),
    "SC/IMDB": (2, 1599, 401),
}


@shared_data
def test_shared_tasks_load_with_their_sizes():
    s = text_stream(data_dir=str(CL_BENCHMARK), max_len=128)
    assert sorted(t.name for t in s.tasks) == sorted(SIZES)
    for t in s.tasks:
        n_classes, n_train, n_test = SIZES[t.name]
        assert (len(t.classes), len(t.train), len(t.test)) == (n_classes, n_train, n_test)
        assert set(t.train.y.unique().tolist()) == set(t.classes)
    assert len(s.labels) == 14 + 4 + 5 + 2  # amazon/yelp and SST-2/IMDB share label texts
    assert s.max_len == 128
    first = json.loads((CL_BENCHMARK / "TC/agnews/train.json").read_text(encoding="utf-8"))[0]
    agnews = next(i for i, t in enumerate(s.tasks) if t.name == "TC/agnews")
    assert decode(s, agnews, "train", 0) == first["sentence"].encode()[:128].decode("utf-8", "replace")


@shared_data
def test_shared_orders_skip_the_tasks_the_snapshot_lacks(capsys):
    s = text_stream(data_dir=str(CL_BENCHMARK), order="order2", skip_missing=True, test_per_class=5, train_per_class=5)
    assert [t.name for t in s.tasks] == ["TC/dbpedia", "SC/amazon", "TC/agnews"]
    assert s.params["skipped_tasks"] == ["yahoo"]
    long = text_stream(data_dir=str(CL_BENCHMARK), order="long", skip_missing=True, test_per_class=5, train_per_class=5)
    assert [t.name for t in long.tasks] == ["SC/yelp", "SC/amazon", "SC/IMDB", "SC/SST-2", "TC/dbpedia", "TC/agnews"]
    assert long.params["skipped_tasks"] == ["MNLI", "CB", "COPA", "QQP", "RTE", "yahoo", "MultiRC", "BoolQA", "WiC"]
    assert "yahoo" in capsys.readouterr().err
    with pytest.raises(UserError, match="yahoo"):
        text_stream(data_dir=str(CL_BENCHMARK), order="order1")


@shared_data
def test_shared_sentiment_tasks_as_domains_and_caps():
    s = text_stream(data_dir=str(CL_BENCHMARK), tasks=["amazon", "yelp"], scenario="domain-incremental",
                    train_per_class=50, test_per_class=20, tokenizer="bpe", vocab_size=500, max_len=64)
    assert s.labels == ("very negative", "negative", "neutral", "positive", "very positive")
    for t in s.tasks:
        assert np.bincount(t.train.y.numpy()).tolist() == [50] * 5
        assert np.bincount(t.test.y.numpy()).tolist() == [20] * 5
        assert int(t.train.lengths.max()) <= 64
    with pytest.raises(UserError, match="share a label space"):
        text_stream(data_dir=str(CL_BENCHMARK), tasks=["amazon", "SST-2"], scenario="domain-incremental")


def test_text_standard_suite_parses(host):
    from clbench.suite import builtin_suites, load_suite

    if "text-standard" not in builtin_suites():
        pytest.skip("no built-in text-standard suite")
    missing = [n for n in ("replay", "ewc", "lora") if n not in host.names("strategies")]
    if missing:
        pytest.skip(f"strategies not registered yet: {', '.join(missing)}")
    suite = load_suite("text-standard")
    assert len(suite.cells) == 4 * 3
    assert {c.strategy.label for c in suite.cells} == {"naive", "replay", "ewc", "lora"}
    assert suite.cells[0].stream == "text"


def test_unknown_labels_drop_leaves_them_out_with_one_warning(tmp_path, capsys):
    # O-LoRA's MNLI test split labels some examples "-" (no gold label): an error by default,
    # left out and counted with unknown_labels = "drop"
    train = rows(["x", "y"], 4, "tr")
    test = rows(["x", "y"], 2, "te") + [("no gold 1", "-"), ("no gold 2", "-")]
    write_task(tmp_path / "d", "t", train, test, ["x", "y"])
    line = _fails(tmp_path, capsys, {"data_dir": str(tmp_path / "d")}, "test.json: items[4] has label '-'")
    assert 'unknown_labels = "drop"' in line
    s = text_stream(data_dir=str(tmp_path / "d"), unknown_labels="drop")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "left out 2 example(s)" in err and "t/test.json" in err
    assert len(s.tasks[0].test) == 4 and len(s.tasks[0].train) == 8
    out = tmp_path / "results"
    rc = main(["run", str(_suite(tmp_path, {"data_dir": str(tmp_path / "d"), "unknown_labels": "drop"})), "--out", str(out), "--no-progress"])
    assert rc == 0
    assert main(["run", str(_suite(tmp_path, {"data_dir": str(tmp_path / "d"), "unknown_labels": "keep"})), "--out", str(out), "--no-progress"]) == 2
