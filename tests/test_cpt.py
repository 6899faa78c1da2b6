"""Continual pre-training: the corpus kind and streams, a kind per task (mixed streams), metrics
with a direction, and learning-rate schedules (docs/cpt.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_suite

from clbench.errors import UserError
from clbench.results import metrics as M

# -- metrics with a direction --------------------------------------------------------------------

# P[i, j]: perplexity on domain j after training domain i (3 domains); lower is better.
P = np.array(
    [
        [10.0, 40.0, 50.0],
        [14.0, 12.0, 45.0],
        [20.0, 13.0, 11.0],
    ]
)
Pb = np.array([60.0, 55.0, 58.0])  # before training
P_ref = np.array(
    [
        [10.0, 40.0, 50.0],
        [11.0, 11.0, 40.0],
        [11.5, 11.5, 10.0],
    ]
)
LOWER = np.array([False, False, False])


def test_metrics_of_a_lower_is_better_matrix_by_hand():
    assert M.acc(P) == pytest.approx((20 + 13 + 11) / 3)  # mean final perplexity
    assert M.plasticity(P) == pytest.approx((10 + 12 + 11) / 3)
    assert M.average_incremental_accuracy(P) == pytest.approx((10 + (14 + 12) / 2 + (20 + 13 + 11) / 3) / 3)
    # BWT: −(R[T, j] − R[j, j]): perplexity rose by 10 and by 1 → −5.5 (worse)
    assert M.bwt(P, LOWER) == pytest.approx(-((20 - 10) + (13 - 12)) / 2)
    # FWT: −(R[j−1, j] − b[j]): 40 < 55 and 45 < 58 → positive transfer
    assert M.fwt(P, Pb, LOWER) == pytest.approx(((55 - 40) + (58 - 45)) / 2)
    # forgetting: final minus the lowest perplexity before the end: (20 − 10) and (13 − 12)
    assert M.forgetting(P, LOWER) == pytest.approx((10 + 1) / 2)
    assert M.forgetting_last(P, LOWER) == pytest.approx((10 + 1) / 2)
    # intransigence: R[k, k] − R*[k, k]: (10 − 10), (12 − 11), (11 − 10)
    assert M.intransigence(P, P_ref, LOWER) == pytest.approx((0 + 1 + 1) / 3)
    assert M.intransigence_last(P, P_ref, LOWER) == pytest.approx(1.0)


def test_forgetting_takes_the_best_score_in_its_direction():
    # domain 0 is learned to 10, improves to 8 (backward transfer), ends at 9.5: forgetting 1.5
    R = np.array([[10.0, 30.0, 30.0], [8.0, 12.0, 30.0], [9.5, 12.0, 11.0]])
    # (the best over every earlier row, A-GEM's: domain 1's 30 before it was learned is its worst)
    assert M.forgetting(R, LOWER) == pytest.approx(((9.5 - 8) + 0) / 2)
    assert list(M.forgetting_terms(R, LOWER)) == pytest.approx([1.5, 0.0])
    assert M.forgetting_since_learned(R, LOWER) == pytest.approx(((9.5 - 8) + 0) / 2)
    # read as accuracies: task 0's max 10, final 9.5; task 1's max 30 (before it was learned), final 12
    assert M.forgetting(R) == pytest.approx(((10 - 9.5) + (30 - 12)) / 2)
    assert M.forgetting_since_learned(R) == pytest.approx(((10 - 9.5) + 0) / 2)
    # a lower-is-better matrix is its negation read as higher-is-better, for every signed metric
    for fn in (M.bwt, M.forgetting, M.forgetting_since_learned, M.forgetting_last):
        assert fn(P, LOWER) == pytest.approx(fn(-P))
    assert M.fwt(P, Pb, LOWER) == pytest.approx(M.fwt(-P, -Pb))


def test_higher_is_better_is_unchanged_by_an_explicit_direction():
    R = np.array([[0.9, 0.1, 0.2], [0.6, 0.8, 0.3], [0.5, 0.7, 0.95]])
    up = np.array([True, True, True])
    for fn in (M.bwt, M.forgetting, M.forgetting_since_learned, M.forgetting_last, M.bwt_over_t):
        assert fn(R, up) == fn(R)


def test_metrics_over_columns_of_mixed_directions_by_hand():
    # tasks 0 and 2 are domains (perplexity), task 1 an instruction task (accuracy)
    R = np.array([[10.0, 0.2, 50.0], [15.0, 0.9, 45.0], [18.0, 0.6, 12.0]])
    higher = np.array([False, True, False])
    assert M.forgetting(R, higher, (0, 2)) == pytest.approx(18 - 10)  # only domain 0 comes before the end
    assert M.forgetting(R, higher, (1,)) == pytest.approx(0.9 - 0.6)
    assert M.acc(R, (0, 2)) == pytest.approx((18 + 12) / 2)
    assert M.plasticity(R, (1,)) == pytest.approx(0.9)
    assert M.bwt(R, higher, (0, 2)) == pytest.approx(-(18 - 10))
    assert M.average_incremental_accuracy(R, (1,)) == pytest.approx((0.9 + 0.6) / 2)  # the rows after task 1


def _tables(rows: dict[str, np.ndarray], b: np.ndarray, scores: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    meas, cells = [], []
    for run_id, R in rows.items():
        for i in range(-1, R.shape[0]):
            for j in range(R.shape[1]):
                meas.append({"run_id": run_id, "train_task": i, "eval_task": j, "metric": "acc",
                             "value": b[j] if i < 0 else R[i, j]})
        cells.append({"run_id": run_id, "suite": "s", "stream": "mixed", "stream_params": "{}", "order": "default",
                      "strategy": run_id, "params": "[]", "seed": 0, "status": "ok", "model": "{}", "training": "{}",
                      "scenario": "task-incremental", "scores": json.dumps(scores), "train_seconds": 1.0})
    return pd.DataFrame(meas), pd.DataFrame(cells)


def test_summary_of_a_mixed_stream_gives_each_kind_its_metrics(host):
    from clbench.results.summary import aggregate, summarize

    R = np.array([[10.0, 0.2, 50.0], [15.0, 0.9, 45.0], [18.0, 0.6, 12.0]])
    scores = [["corpus", "ppl", "lower"], ["generation", "exact_match", "higher"], ["corpus", "ppl", "lower"]]
    meas, cells = _tables({"a": R}, np.array([60.0, 0.0, 58.0]), scores)
    s = summarize(meas, cells).iloc[0]
    assert math.isnan(s["acc"]) and math.isnan(s["forgetting"])  # no one unit across kinds
    assert s["acc@corpus"] == pytest.approx(15.0) and s["acc@generation"] == pytest.approx(0.6)
    assert s["forgetting@corpus"] == pytest.approx(8.0) and s["forgetting@generation"] == pytest.approx(0.3)
    assert s["fwt@corpus"] == pytest.approx(58 - 45)  # −(R[1, 2] − b[2])
    assert json.loads(s["units"]) == {"corpus": ["ppl", "lower"], "generation": ["exact_match", "higher"]}
    agg = aggregate(summarize(meas, cells))
    assert agg["forgetting@corpus_mean"].iloc[0] == pytest.approx(8.0) and math.isnan(agg["rank"].iloc[0])


def test_a_lower_is_better_stream_ranks_the_lowest_acc_first(host):
    from clbench.results.summary import aggregate, summarize

    scores = [["corpus", "bpb", "lower"]] * 2
    good = np.array([[1.0, 3.0], [1.5, 1.2]])
    bad = np.array([[1.0, 3.0], [4.0, 1.2]])
    meas, cells = _tables({"good": good, "bad": bad}, np.array([8.0, 8.0]), scores)
    summary = summarize(meas, cells).set_index("run_id")
    assert summary.loc["good", "forgetting"] == pytest.approx(0.5) and summary.loc["bad", "forgetting"] == pytest.approx(3.0)
    assert "acc@corpus" not in summary  # one kind: the whole-stream columns
    agg = aggregate(summarize(meas, cells)).set_index("strategy")
    assert agg.loc["good", "rank"] == 1 and agg.loc["bad", "rank"] == 2


# -- the corpus stream -----------------------------------------------------------------------------

def _domains(root, n_docs=6, words=60):
    letters = {"alpha": "abcd", "beta": "wxyz"}
    for name, alphabet in letters.items():
        folder = root / name
        folder.mkdir(parents=True)
        r = np.random.default_rng(len(name))
        for k in range(n_docs):
            text = " ".join("".join(r.choice(list(alphabet), 4)) for _ in range(words))
            (folder / f"doc{k}.txt").write_text(text, encoding="utf-8")
    return root


def test_corpus_stream_splits_documents_by_seed_and_packs_them(tmp_path, isolated_data):
    from clbench.tasks.corpus import corpus

    root = _domains(tmp_path / "data")
    a = corpus(data_dir=str(root), max_len=32, test_fraction=0.34)
    assert [t.name for t in a.tasks] == ["alpha", "beta"] and a.kinds == ("corpus",)
    assert a.scenario == "domain-incremental" and a.params["domains"] == ["alpha", "beta"]
    t = a.tasks[0]
    assert t.kind == "corpus" and t.metric == "ppl"
    assert t.train.x.shape[1] == 32 and bool((t.train.start == 0).all()) and bool((t.test.t == 0).all())
    # 6 documents of 299 characters: 2 held out; every byte (+ its end token) packed in order
    assert int(t.train.lengths.sum()) == 4 * 300 and int(t.test.lengths.sum()) == 2 * 300
    assert int((t.train.x == 0).logical_and(torch.arange(32) < t.train.lengths[:, None]).sum()) == 4  # one end token a document
    again = corpus(data_dir=str(root), max_len=32, test_fraction=0.34)
    assert torch.equal(again.tasks[0].test.x, t.test.x)  # the same seed, the same split
    other = corpus(data_dir=str(root), max_len=32, test_fraction=0.34, seed=1)
    assert not torch.equal(other.tasks[0].test.x, t.test.x)
    capped = corpus(data_dir=str(root), max_len=32, order=["beta", "alpha"], train_sequences=3, test_sequences=2)
    assert [t.name for t in capped.tasks] == ["beta", "alpha"] and len(capped.tasks[0].train) == 3
    assert len(capped.tasks[1].test) == 2 and bool((capped.tasks[1].train.t == 1).all())


def test_packing_a_capped_domain_tokenizes_only_what_it_keeps():
    from clbench.tasks.corpus import encode_packed, pack
    from clbench.tasks.generative import text_tokenizer

    class Counting:
        def __init__(self):
            self.tok, self.seen = text_tokenizer("bytes"), 0
            self.eos_id = self.tok.eos_id

        def encode_answers(self, texts):
            self.seen += len(texts)
            return self.tok.encode_answers(texts)

    docs = [f"document {i} " * (i % 7 + 1) for i in range(1000)]
    whole = pack(text_tokenizer("bytes").encode_answers(docs), 0, 16)
    tok = Counting()
    assert encode_packed(tok, docs, 16, 5, chunk=10) == whole[:5] and tok.seen == 10
    assert encode_packed(Counting(), docs, 16, None, chunk=10) == whole


def test_corpus_reads_jsonl_and_txt_lines(tmp_path, isolated_data):
    from clbench.tasks.corpus import corpus

    d = tmp_path / "data" / "news"
    d.mkdir(parents=True)
    (d / "a.jsonl").write_text("\n".join(json.dumps({"body": f"story number {i} " * 5}) for i in range(5)) + "\n")
    (tmp_path / "data" / "poems").mkdir()
    (tmp_path / "data" / "poems" / "all.txt").write_text("\n".join(f"line {i} of the poem, " * 4 for i in range(6)))
    s = corpus(data_dir=str(tmp_path / "data"), text_field="body", documents="line", max_len=16)
    assert [t.name for t in s.tasks] == ["news", "poems"]
    with pytest.raises(UserError, match=r"a\.jsonl: line 1 has no string field 'text' \(set text_field\)"):
        corpus(data_dir=str(tmp_path / "data"), documents="line", max_len=16)
    with pytest.raises(UserError, match=r"domain 'poems' \(.*poems\) has one document: it needs two or more"):
        corpus(data_dir=str(tmp_path / "data"), text_field="body", max_len=16)


@pytest.mark.parametrize("case, message", [
    ("empty", r"^domain 'beta' \(.*beta\) has no text$"),
    ("small", r"^domain 'beta' \(.*beta\) has \d+ training tokens, fewer than one training sequence of max_len = 32 "),
    ("latin1", r"^.*beta.doc1\.txt: invalid UTF-8 at byte 5 \(line 1, column 6\): b'\\xe9'$"),
])
def test_bad_domains_are_one_line_errors_naming_them(tmp_path, isolated_data, case, message):
    from clbench.tasks.corpus import corpus

    root = _domains(tmp_path / "data")
    for f in (root / "beta").iterdir():
        f.unlink()
    if case == "empty":
        (root / "beta" / "doc0.txt").write_text("  \n")
        (root / "beta" / "notes.md").write_text("not a document")
    elif case == "small":
        (root / "beta" / "doc0.txt").write_text("tiny")
        (root / "beta" / "doc1.txt").write_text("tiny too")
    else:
        (root / "beta" / "doc0.txt").write_text("fine text")
        (root / "beta" / "doc1.txt").write_bytes(b"cafe \xe9t\xe9")
    with pytest.raises(UserError, match=message) as err:
        corpus(data_dir=str(root), max_len=32)
    assert "\n" not in str(err.value)


def test_a_bad_domain_stops_clbench_run_with_exit_2(tmp_path, isolated_data, host, capsys):
    from clbench.cli import main
    from clbench.suite import to_toml

    root = _domains(tmp_path / "data")
    for f in (root / "beta").iterdir():
        f.unlink()
    suite = make_suite(["naive"], stream="corpus", stream_params={"max_len": 32}, model={"causal": True, "max_len": 32})
    path = tmp_path / "s.toml"
    path.write_text(to_toml(suite))
    assert main(["run", str(path), "--data-dir", str(root), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "domain 'beta'" in err[0] and "has no text" in err[0]


def test_builtin_domains_need_no_data_and_differ(isolated_data):
    from clbench.tasks.corpus import corpus_builtin, synthetic_language

    s = corpus_builtin(max_len=32, docs_per_domain=6, doc_chars=400, domains=["python", "english", "synthetic-1", "synthetic-2"])
    assert [t.name for t in s.tasks] == ["python", "english", "synthetic-1", "synthetic-2"]
    assert all(len(t.train) and len(t.test) for t in s.tasks)
    one, two = synthetic_language(1, 3, 0, 300), synthetic_language(2, 3, 0, 300)
    assert synthetic_language(1, 3, 0, 300) == one and one != two
    assert set("".join(one).lower()) - set(" .") != set("".join(two).lower()) - set(" .")  # letters of its own
    with pytest.raises(UserError, match="unknown built-in domain 'klingon'"):
        corpus_builtin(domains=["klingon"])


# -- the corpus kind ------------------------------------------------------------------------------

def _cell(stream, strategies=("naive",), **training):
    from clbench.config import CellConfig, StrategySpec, TrainingConfig
    from clbench.models.transformer import ModelConfig

    return CellConfig(suite="t", stream=stream.name, stream_params={}, order="default", order_value=None,
                      strategy=StrategySpec("+".join(strategies), tuple((s, {}) for s in strategies)), seed=0,
                      model=ModelConfig(d_model=32, n_layers=1, n_heads=2, causal=True, max_len=stream.max_len),
                      training=TrainingConfig(**{"epochs": 1, "batch_size": 8, "lr": 3e-3, **training}))


def test_corpus_evaluation_is_perplexity_and_bits_per_byte(isolated_data, host):
    from clbench.cell import CellContext
    from clbench.kinds import KINDS, model_kind
    from clbench.loop import build_model
    from clbench.tasks.corpus import corpus_builtin

    s = corpus_builtin(domains=["synthetic-1"], max_len=24, docs_per_domain=4, doc_chars=300)
    cfg = _cell(s)
    ctx = CellContext(cfg, s, build_model(cfg, s), torch.device("cpu"))
    assert model_kind(s) is KINDS["corpus"] and ctx.kind is KINDS["corpus"]
    task = s.tasks[0]
    out = KINDS["corpus"].evaluate(ctx, 0, task)
    assert out["acc"] == out["ppl"] == pytest.approx(math.exp(out["loss"]))
    # byte tokens: every predicted token is one byte, but for the end tokens between documents
    predicted = int((task.test.lengths - 1).sum())
    ends = sum(int((row[1:n] == 0).sum()) for row, n in zip(task.test.x, task.test.lengths.tolist()))
    assert out["bpb"] == pytest.approx(out["loss"] * predicted / math.log(2) / (predicted - ends))
    assert 7 < out["bpb"] < 9.5  # an untrained model: about log2(257) bits per byte


def test_kinds_of_one_stream_must_train_one_model(isolated_data, host):
    from clbench.kinds import check_stream
    from clbench.tasks import Stream
    from clbench.tasks.corpus import corpus_builtin
    from clbench.tasks.digits import split_digits

    text = corpus_builtin(domains=["synthetic-1"], max_len=24, docs_per_domain=4, doc_chars=300)
    digits = split_digits(n_tasks=1, patch_size=4)
    both = Stream("both", "task-incremental", "tokens", digits.labels, [*digits.tasks, *text.tasks], 257, 24)
    with pytest.raises(UserError, match=r"^stream 'both' mixes classification tasks \(a head over its labels\) with "
                                        r"corpus tasks \(a language model\): one model cannot train both"):
        check_stream(both)


# -- mixed streams: a kind per task ------------------------------------------------------------------

MIXED = {"streams": [{"name": "corpus-builtin", "params": {"domains": ["synthetic-1", "synthetic-2"], "max_len": 24,
                                                           "docs_per_domain": 6, "doc_chars": 300}},
                     {"name": "algorithmic", "params": {"tasks": ["reverse", "sort"], "n_train": 24, "n_test": 8}}]}


def test_a_mixed_stream_interleaves_tasks_of_their_own_kinds(isolated_data, host):
    from clbench.tasks.mixed import mixed

    s = mixed(**MIXED)
    assert [(t.name, t.kind) for t in s.tasks] == [("synthetic-1", "corpus"), ("reverse", "generation"),
                                                   ("synthetic-2", "corpus"), ("sort", "generation")]
    assert s.kinds == ("corpus", "generation") and s.general is not None  # algorithmic's general text
    assert [int(t.train.t[0]) for t in s.tasks] == [0, 1, 2, 3]
    assert s.params["sequence"] == ["corpus-builtin:synthetic-1", "algorithmic:reverse", "corpus-builtin:synthetic-2",
                                    "algorithmic:sort"]
    chosen = mixed(**MIXED, sequence=["algorithmic:sort", "corpus-builtin:synthetic-2"])
    assert [t.name for t in chosen.tasks] == ["sort", "synthetic-2"]
    with pytest.raises(UserError, match=r"no task 'algorithmic:add' in its parts \(they have: corpus-builtin:synthetic-1"):
        mixed(**MIXED, sequence=["algorithmic:add"])
    bpe = {"streams": [MIXED["streams"][0], {**MIXED["streams"][1], "params": {**MIXED["streams"][1]["params"], "tokenizer": "bpe"}}]}
    with pytest.raises(UserError, match="its parts tokenize differently"):
        mixed(**bpe)


def test_the_loop_trains_and_scores_each_task_by_its_kind(isolated_data, host, monkeypatch):
    from clbench.kinds import KINDS
    from clbench.loop import run_cell
    from clbench.tasks.mixed import mixed

    s = mixed(**MIXED)
    used = []
    for name in ("corpus", "generation"):
        kind = KINDS[name]
        monkeypatch.setattr(kind, "loss", lambda cell, batch, logits, k=kind, n=name: (used.append(n), type(k).loss(k, cell, batch, logits))[1])
    res = run_cell(_cell(s, ("replay",)), stream=s)
    assert res.status == "ok", res.row["error"]
    assert used.index("generation") > used.index("corpus") and used[-1] == "generation"
    assert [u for i, u in enumerate(used) if i == 0 or u != used[i - 1]] == ["corpus", "generation", "corpus", "generation"]
    m = pd.DataFrame(res.measurements)
    final = m[(m.train_task == 3) & (m.eval_task >= 0)]
    assert set(final[final.eval_task == 0].metric) >= {"acc", "ppl", "bpb"}
    assert set(final[final.eval_task == 1].metric) >= {"acc", "exact_match"}
    assert json.loads(res.row["scores"]) == [["corpus", "ppl", "lower"], ["generation", "exact_match", "higher"]] * 2


def test_serves_is_checked_against_every_kind_of_a_stream(tmp_path, isolated_data, host, capsys):
    from clbench.cli import main
    from clbench.suite import to_toml

    suite = make_suite(["der"], stream="mixed", stream_params=MIXED, model={"causal": True, "max_len": 32})
    path = tmp_path / "s.toml"
    path.write_text(to_toml(suite))
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err.endswith("strategy 'der': serves classification tasks only, and stream 'mixed' has "
                                            "corpus and generation tasks\n")


@pytest.mark.parametrize("strategy", ["ewc", "seq-lora", "inc-lora", "i-lora", "moe-lora", "migu"])
def test_strategies_run_on_corpus_tasks_unchanged(isolated_data, host, strategy):
    from clbench.loop import run_cell
    from clbench.suite import parse_suite

    suite = make_suite([{"name": strategy, "params": {"fisher_samples": 8} if strategy == "ewc" else {}}],
                       stream="corpus-builtin", model={"causal": True, "max_len": 24},
                       stream_params={"domains": ["synthetic-1", "synthetic-2"], "max_len": 24, "docs_per_domain": 4,
                                      "doc_chars": 300}, training={"batch_size": 8})
    (cell,) = parse_suite(suite, "t.toml").cells
    res = run_cell(cell)
    assert res.status == "ok", res.row["error"]
    assert res.row["trainable_params"] < res.row["total_params"] or strategy in ("ewc", "migu")  # these train the model
    if strategy == "moe-lora":  # the router's load per expert, recorded while each domain trains
        assert {m["train_task"] for m in res.measurements if m["metric"] == "router_load"} == {0, 1}


def test_naive_forgets_an_earlier_domain_and_replay_less(isolated_data, host):
    """English prose, then an artificial language: after the second, naive's bits per byte on
    the first rise (by about 4 here); replay, mixing 20% of earlier sequences back into each
    batch, rise much less (about 0.3)."""
    from clbench.loop import run_cell
    from clbench.suite import parse_suite

    suite = make_suite(["naive", {"name": "replay", "params": {"memory_size": 200, "ratio": 0.25}}],
                       stream="corpus-builtin", model={"d_model": 32, "causal": True, "max_len": 32},
                       stream_params={"domains": ["english", "synthetic-1"], "max_len": 32, "train_sequences": 256,
                                      "test_sequences": 8, "metric": "bpb"},
                       training={"epochs": 3, "batch_size": 16, "lr": 3e-3})
    forgetting = {}
    for cell in parse_suite(suite, "t.toml").cells:
        m = pd.DataFrame(run_cell(cell).measurements)
        R = m[(m.metric == "acc") & (m.eval_task == 0)].set_index("train_task")["value"]
        forgetting[cell.strategy.label] = R[1] - R[0]
    assert forgetting["naive"] > 1.5
    assert forgetting["replay"] < forgetting["naive"] - 1.5


# -- learning-rate schedules -----------------------------------------------------------------------

def test_schedules_by_hand():
    from clbench.config import TrainingConfig
    from clbench.schedule import LRSchedule, warmup_cosine

    assert warmup_cosine(0, 10, 2, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1, 10, 2, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(2, 10, 2, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(6, 10, 2, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert warmup_cosine(10, 10, 2, 0.1) == pytest.approx(0.1)

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)

    def run(kind, planned, actual):
        sched, lrs = LRSchedule(TrainingConfig(schedule=kind, warmup=0.25, decay_to=0.1), planned), []
        for i, steps in enumerate(actual):
            for g in opt.param_groups:
                g["lr"] = 2.0  # a new optimizer per task, at the peak rate
            sched.start_task(i, steps, opt)
            for _ in range(steps):
                sched.set_lr(opt)
                lrs.append(opt.param_groups[0]["lr"])
        return lrs

    rewarm = run("rewarm", [8, 8], [8, 8])
    assert rewarm[:8] == rewarm[8:]  # each task re-warms and re-decays alike
    assert rewarm[0] == pytest.approx(1.0) and rewarm[1] == pytest.approx(2.0) and rewarm[7] == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))
    cosine = run("cosine", [8, 8], [8, 8])
    assert cosine[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])  # warm-up over a quarter of the stream
    assert all(a >= b for a, b in zip(cosine[4:], cosine[5:])) and cosine[-1] == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * 11 / 12)))
    # a task trained on twice its planned data (cumulative) keeps its planned share of the schedule
    assert run("cosine", [8, 8], [8, 16])[8::2] == pytest.approx(cosine[8:])


def test_a_schedule_is_hashed_recorded_and_checked(isolated_data, host):
    from clbench.loop import run_cell
    from clbench.suite import parse_suite

    base = make_suite(["naive"], stream_params={"patch_size": 4, "n_tasks": 2})
    (plain,) = parse_suite(base, "t.toml").cells
    assert "schedule" not in plain.config()["training"] and "warmup" not in plain.config()["training"]
    (const,) = parse_suite({**base, "training": {**base["training"], "schedule": "constant"}}, "t.toml").cells
    assert const.config_hash == plain.config_hash  # the default leaves every earlier hash as it was
    rewarm_suite = {**base, "training": {**base["training"], "schedule": "rewarm", "warmup": 0.5}}
    (rewarm,) = parse_suite(rewarm_suite, "t.toml").cells
    assert rewarm.config_hash != plain.config_hash and rewarm.config()["training"]["schedule"] == "rewarm"
    m = pd.DataFrame(run_cell(rewarm).measurements)
    lr = m[m.metric == "lr"]
    assert list(lr.train_task) == [0, 1] and all(1e-4 <= v < 0.6e-3 for v in lr.value)  # decayed by each task's end
    assert pd.DataFrame(run_cell(plain).measurements).query("metric == 'lr'").empty
    (cosine,) = parse_suite({**base, "training": {**base["training"], "schedule": "cosine", "epochs": 2}}, "t.toml").cells
    lrs = pd.DataFrame(run_cell(cosine).measurements).query("metric == 'lr'").sort_values(["train_task", "eval_task"])
    assert len(lrs) == 4 and list(lrs.value) == sorted(lrs.value, reverse=True)  # one decay across the stream
    assert lrs.value.iloc[0] < 1e-3 and lrs.value.iloc[-1] == pytest.approx(1e-4, rel=0.1)
    with pytest.raises(UserError, match=r"field 'training\.warmup' applies to schedule = \"cosine\" or \"rewarm\""):
        parse_suite({**base, "training": {**base["training"], "warmup": 0.2}}, "t.toml")
    with pytest.raises(UserError, match=r"field 'training\.decay_to' must be in \[0, 1\)"):
        parse_suite({**base, "training": {**base["training"], "schedule": "cosine", "decay_to": 1.5}}, "t.toml")


def test_reports_show_perplexities_and_bits_per_byte_in_their_unit(host):
    from rich.console import Console

    from clbench.plugins.reporters import console_report
    from clbench.results.render import leaderboard_rows
    from clbench.results.store import Tables
    from clbench.results.summary import aggregate, summarize

    scores = [["corpus", "bpb", "lower"]] * 2
    meas, cells = _tables({"good": np.array([[1.0, 3.0], [1.5, 1.2]])}, np.array([8.0, 8.0]), scores)
    summary = summarize(meas, cells)
    header, rows = leaderboard_rows(aggregate(summary))
    assert rows[0][header.index("ACC")] == "1.35" and rows[0][header.index("forgetting")] == "0.5"  # not in %
    console = Console(width=200, record=True)
    console_report(Tables(meas, cells, summary), None, console)
    text = console.export_text()
    assert "1.35" in text and "135" not in text and "scores of corpus in bits per byte (lower is better" in text

    mixed = [["corpus", "ppl", "lower"], ["generation", "exact_match", "higher"]]
    meas, cells = _tables({"m": np.array([[10.0, 0.2], [14.0, 0.9]])}, np.array([60.0, 0.0]), mixed)
    header, rows = leaderboard_rows(aggregate(summarize(meas, cells)))
    assert rows[0][header.index("ACC corpus")] == "14" and rows[0][header.index("ACC generation")] == "90.0"
    assert rows[0][header.index("forgetting corpus")] == "4" and rows[0][0] == "–"  # no rank across units


def test_show_gives_one_table_for_streams_of_different_units(host, monkeypatch, capsys):
    from clbench import results
    from clbench.cli import main
    from clbench.results.store import Tables
    from clbench.results.summary import summarize

    m1, c1 = _tables({"a": np.array([[0.9, 0.1], [0.7, 0.8]])}, np.array([0.5, 0.5]), [["classification", "acc", "higher"]] * 2)
    m2, c2 = _tables({"m": np.array([[10.0, 0.2], [14.0, 0.9]])}, np.array([60.0, 0.0]),
                     [["corpus", "ppl", "lower"], ["generation", "exact_match", "higher"]])
    c1["stream"] = "split"
    meas, cells = pd.concat([m1, m2], ignore_index=True), pd.concat([c1, c2], ignore_index=True)
    monkeypatch.setattr(results, "load", lambda *dirs: Tables(meas, cells, summarize(meas, cells)))
    assert main(["show", "somewhere", "--format", "markdown"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    header = [h.strip() for h in out[0].strip("|").split("|")]
    rows = {r.split("|")[1].strip(): [x.strip() for x in r.strip().strip("|").split("|")] for r in out[2:4]}
    assert {"ACC", "ACC corpus", "ACC generation"} <= set(header) and all(len(r) == len(header) for r in rows.values())
    assert rows["split"][header.index("ACC")] == "75.0" and rows["split"][header.index("ACC corpus")] == "–"
    assert rows["mixed"][header.index("ACC corpus")] == "14" and rows["mixed"][header.index("ACC")] == "–"
    assert "mixed: scores of corpus in perplexity (lower is better" in out[-1]


def test_tune_minimises_a_mean_perplexity_and_signs_forgetting_by_direction(isolated_data, host):
    pytest.importorskip("ray")
    from clbench.results.metrics import acc, forgetting
    from clbench.suite import parse_suite
    from clbench.tune import Protocol, objective, plan

    rows = {-1: [60.0, 60.0], 0: [10.0, 40.0], 1: [20.0, 12.0]}  # perplexities
    assert objective(lambda m: forgetting(m.R, m.higher), rows, 2, None, [False, False]) == pytest.approx(10.0)
    assert objective(lambda m: acc(m.R), rows, 2, None, [False, False]) == pytest.approx(16.0)
    params = {"domains": ["synthetic-1", "synthetic-2"], "max_len": 24, "docs_per_domain": 6, "doc_chars": 300}
    data = make_suite(["naive"], stream="corpus-builtin", stream_params=params, model={"causal": True, "max_len": 24})
    suite = parse_suite(data, "t.toml")
    kw = dict(protocol=Protocol("validation"), searcher="random", scheduler="fifo", seed=0)
    assert plan(suite, data, metric="acc", mode="max", **kw)[0].mode == "min"  # the default: the lowest perplexity
    assert plan(suite, data, metric="acc", mode="max", explicit_mode=True, **kw)[0].mode == "max"  # as asked
    assert plan(suite, data, metric="forgetting", mode="min", **kw)[0].mode == "min"
    data = make_suite(["naive"], stream="mixed", stream_params=MIXED, model={"causal": True, "max_len": 32})
    with pytest.raises(UserError, match="stream 'mixed' mixes corpus and generation tasks, scored in different units"):
        plan(parse_suite(data, "t.toml"), data, metric="acc", mode="max", **kw)


def test_a_hugging_face_causal_lm_trains_and_scores_text_domains(tmp_path, isolated_data, host, tiny_causal_lm):
    """model.init = a Hugging Face causal LM: the domains are tokenized by its tokenizer (no BOS
    inside packed text), trained, and scored in bits per byte over the decoded bytes."""
    from clbench.loop import run_cell
    from clbench.suite import parse_suite

    folder = tiny_causal_lm("llama")
    root = _domains(tmp_path / "data", n_docs=4, words=20)
    data = make_suite(["naive"], stream="corpus", stream_params={"data_dir": str(root), "max_len": 32, "test_fraction": 0.25},
                      model={"init": str(folder)}, training={"batch_size": 4})
    for key in ("d_model", "n_layers", "n_heads"):
        data["model"].pop(key)
    (cell,) = parse_suite(data, "t.toml").cells
    assert cell.stream_params["tokenizer"] == str(folder)
    res = run_cell(cell)
    assert res.status == "ok", res.row["error"]
    m = pd.DataFrame(res.measurements)
    last = m[(m.train_task == 1) & (m.eval_task == 1)].set_index("metric")["value"]
    assert last["acc"] == last["ppl"] == pytest.approx(math.exp(last["loss"]))
    # this tiny BPE (trained on other text) gives these letters about a token each
    assert 0.5 * last["loss"] / math.log(2) < last["bpb"] < 1.2 * last["loss"] / math.log(2)
    from clbench.tasks.corpus import corpus
    from clbench.tasks.generative import scored_bytes

    stream = corpus(data_dir=str(root), max_len=32, test_fraction=0.25, tokenizer=str(folder))
    test = stream.tasks[0].test
    text = "".join(stream.tokenizer.decode(row[1:n]) for row, n in zip(test.x.tolist(), test.lengths.tolist()))
    assert scored_bytes(stream.tokenizer, test) == len(text.encode()) and "</s>" not in text
