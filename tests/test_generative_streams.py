"""Generative streams read from data folders (``instructions`` in O-LoRA's format, ``trace``,
``jsonl-instructions``), the scorers TRACE and O-LoRA report, and bad input.

The tests marked ``shared_data`` read the real CL_Benchmark tasks from ../shared/data and skip,
saying so, when that folder is absent; the others write small folders themselves.
"""

from __future__ import annotations

import json

import pytest

from clbench.cli import main
from clbench.errors import UserError
from clbench.tasks import scoring
from clbench.tasks.text import ORDERS, find_tasks, text_stream
from conftest import SHARED_DATA

CL_BENCHMARK = SHARED_DATA / "CL_Benchmark"
shared_data = pytest.mark.skipif(
    not CL_BENCHMARK.is_dir(), reason=f"shared CL_Benchmark data not found at {CL_BENCHMARK}"
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CLBENCH_DATA", raising=False)


def pairs_of(stream, task, split="train"):
    """The (prompt, answer) texts of a task's examples, decoded from the stream's tokens."""
    ex, tok = getattr(stream.tasks[task], split), stream.tokenizer
    out = []
    for i in range(len(ex)):
        s, n = int(ex.start[i]), int(ex.lengths[i])
        out.append((tok.decode(ex.x[i, :s].tolist()), tok.decode(ex.x[i, s:n - 1].tolist())))
    return out


def _toml(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def _fails(tmp_path, capsys, stream: str, params: dict, *match):
    suite = tmp_path / "bad.toml"
    ps = ", ".join(f"{k} = {_toml(v)}" for k, v in params.items())
    suite.write_text(f'name = "bad"\n[[streams]]\nname = "{stream}"\nparams = {{ {ps} }}\n[[strategies]]\nname = "naive"\n')
    out = tmp_path / "results"
    rc = main(["run", str(suite), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    (line,) = [x for x in err.splitlines() if x.startswith("clbench: error:")]  # one line
    assert "Traceback" not in err
    for m in match:
        assert m in line, line
    assert not out.exists()
    return line


# -- scorers ------------------------------------------------------------------------------------------

def test_exact_match_normalises_as_super_naturalinstructions():
    preds = ["Science or Technology", " world. ", "The World", "positive", "very  Positive!"]
    refs = ["science or technology", "World", "World", "negative", "very positive"]
    assert scoring.exact_match(preds, refs) == pytest.approx(3 / 5)  # articles are kept: "The World" is wrong
    assert scoring.normalize_answer("  The, CAT!\tsat ") == "the cat sat"


def test_rouge_l_is_rouge_score_with_stemming():
    from rouge_score import rouge_scorer

    # stemmed tokens: the cat sat on a mat / the cat sat on the mat: LCS 5 of 6 and 6
    assert scoring.rouge_l(["the cats sat on a mat"], ["the cat sat on the mat"]) == pytest.approx(5 / 6)
    preds = ["the meeting approved the budget", "nothing in common", "Council adopts ordinance for District 7"]
    refs = ["The council approved the city budget.", "a summary", "Recommendation to adopt ordinance (District 7)"]
    ref_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = sum(ref_scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)) / 3
    assert scoring.rouge_l(preds, refs) == pytest.approx(want) and 0.2 < want < 0.8


def test_trace_choice_accuracy_takes_the_first_character():
    preds = ["A", "B\nBecause it is", "", " A", "a", "C. neutral"]
    refs = ["A", "B\nBecause of that", "A", "A", "A", "C"]
    assert scoring.choice_accuracy(preds, refs) == pytest.approx(3 / 6)  # no stripping, no lower-casing


def test_trace_strict_match_compares_whole_strings():
    assert scoring.strict_match(["42", "42 ", "", "3.50", "7"], ["42", "42", "7", "3.5", "7"]) == pytest.approx(2 / 5)


def test_trace_edit_similarity_by_hand():
    # difflib matching blocks: "return " (7 of 16 chars) -> 87.5 -> 88; "abcde" (5 of 16) -> 62.5 -> 62
    # (round half to even, as fuzzywuzzy's int(round(.)) does); "ab"+"d" (3 of 8) -> 75; empty -> 0;
    # Py150's placeholders are replaced first: <NUM_LIT:2> is 2, so the last pair is equal -> 100
    preds = ["return x", "abcde123", "abcd", "", "x = <NUM_LIT:2> + <NUM_LIT> + <STR_LIT>"]
    refs = ["return y", "abcdeXYZ", "abxd", "x", "x = 2 + 0 + "]
    assert [scoring.fuzz_ratio(scoring.py150_postprocess(p), scoring.py150_postprocess(r)) for p, r in zip(preds, refs)] == [88, 62, 75, 0, 100]
    assert scoring.edit_similarity(preds, refs) == pytest.approx((88 + 62 + 75 + 0 + 100) / 500)
    assert scoring.py150_postprocess("f(<STR_LIT:a b>, <CHAR_LIT>)") == "f(a b, )"


def test_metric_names():
    assert set(scoring.METRICS) >= {"exact_match", "rouge_l", "accuracy", "choice_accuracy", "strict_match", "edit_similarity"}
    with pytest.raises(UserError, match="unknown metric 'bleu'"):
        scoring.check_metric("bleu", "here")
    with pytest.raises(UserError, match="'sari' is not available"):
        scoring.check_metric("sari", "here")


# -- named orders ---------------------------------------------------------------------------------------

PUBLISHED = {  # the O-LoRA paper's orders 1-6 (Wang et al. 2023)
    "order1": "dbpedia amazon yahoo agnews",
    "order2": "dbpedia amazon agnews yahoo",
    "order3": "yahoo amazon agnews dbpedia",
    "order4": "MNLI CB WiC COPA QQP BoolQA RTE IMDB yelp amazon SST-2 dbpedia agnews MultiRC yahoo",
    "order5": "MultiRC BoolQA WiC MNLI CB COPA QQP RTE IMDB SST-2 dbpedia agnews yelp amazon yahoo",
    "order6": "yelp amazon MNLI CB COPA QQP RTE IMDB SST-2 dbpedia agnews yahoo MultiRC BoolQA WiC",
}


def test_named_orders_are_the_papers():
    assert {k: " ".join(ORDERS[k]) for k in PUBLISHED} == PUBLISHED
    assert ORDERS["long"] == ORDERS["order6"]


@shared_data
@pytest.mark.parametrize("order", ["order4", "order5"])
def test_text_stream_runs_orders_4_and_5(order, capsys):
    present = {n.rsplit("/", 1)[-1] for n in find_tasks(CL_BENCHMARK, "auto")}
    s = text_stream(data_dir=str(CL_BENCHMARK), order=order, skip_missing=True, train_per_class=1, test_per_class=1)
    assert [t.name.rsplit("/", 1)[-1] for t in s.tasks] == [n for n in PUBLISHED[order].split() if n in present]
    assert s.params["skipped_tasks"] == [n for n in PUBLISHED[order].split() if n not in present]
    assert "yahoo" in capsys.readouterr().err
