"""Generative streams read from data folders (``instructions`` in O-LoRA's format, ``trace``,
``jsonl-instructions``), the scorers TRACE and O-LoRA report, and bad input.

The tests marked ``shared_data`` read the real CL_Benchmark tasks from ../shared/data and skip,
saying so, when that folder is absent; the others write small folders themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clbench.cli import main
from clbench.errors import UserError
from clbench.tasks import scoring
from clbench.tasks.instructions import instructions
from clbench.tasks.jsonl_instructions import jsonl_instructions
from clbench.tasks.text import ORDERS, find_tasks, text_stream
from clbench.tasks.trace import trace
from conftest import CL_BENCHMARK, make_suite, pairs_of, shared_data

pytestmark = pytest.mark.usefixtures("isolated_data")



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


def test_trace_rouge_l_is_the_rouge_package_called_as_trace_calls_it():
    from rouge import Rouge

    # the audit's cases: TRACE's value (the rouge package) against rouge-score's (stemmed, lower-cased)
    cases = [("Hello, world", "hello world", 0.5, 1.0),  # case and punctuation stay on the words
             ("The council met. It approved the city budget.", "It approved the city budget. The council met.", 1.0, 0.625),
             ("the the the the", "the", 1.0, 0.4)]
    for pred, ref, trace_value, rouge_score_value in cases:
        assert scoring.trace_rouge_l([pred], [ref]) == pytest.approx(trace_value, abs=1e-6)
        assert scoring.rouge_l([pred], [ref]) == pytest.approx(rouge_score_value, abs=1e-6)
    # TRACE's score_rouge(target, prediction): the reference is the package's first argument
    preds = ["Council adopts ordinance. District 7 gets a park.", "the budget", "", "."]
    refs = ["Recommendation to adopt ordinance for District 7. A park.", "The budget was approved.", "x", "a summary"]
    want = [Rouge(metrics=["rouge-l"]).get_scores(refs[0], preds[0], avg=True)["rouge-l"]["f"],
            Rouge(metrics=["rouge-l"]).get_scores(refs[1], preds[1], avg=True)["rouge-l"]["f"], 0.0, 0.0]
    assert 0.1 < want[0] < 0.9 and 0.1 < want[1] < 0.9
    # an empty prediction scores 0 and counts (TRACE skips it, keeping it in the denominator);
    # a prediction of full stops only, which the package refuses, scores 0
    assert scoring.trace_rouge_l(preds, refs) == pytest.approx(sum(want) / 4)


def test_trace_choice_accuracy_takes_the_first_character():
    preds = ["A", "B\nBecause it is", "", " A", "a", "C. neutral"]
    refs = ["A", "B\nBecause of that", "A", "A", "A", "C"]
    assert scoring.choice_accuracy(preds, refs) == pytest.approx(3 / 6)  # no stripping, no lower-casing


def test_trace_strict_match_compares_whole_strings():
    assert scoring.strict_match(["42", "42 ", "", "3.50", "7"], ["42", "42", "7", "3.5", "7"]) == pytest.approx(2 / 5)
    # FOMC and C-STANCE are scored so (eval_FOMC.py, eval_CStance.py): an option's letter with
    # anything after it is wrong, where ScienceQA's first-character rule would count it right
    preds, refs = ["A.", "AB", "Apple", "A"], ["A"] * 4
    assert scoring.strict_match(preds, refs) == pytest.approx(1 / 4)
    assert scoring.choice_accuracy(preds, refs) == pytest.approx(4 / 4)


def test_trace_edit_similarity_by_hand():
    # difflib matching blocks: "return " (7 of 16 chars) -> 87.5 -> 88; "abcde" (5 of 16) -> 62.5 -> 62
    # (round half to even, as fuzzywuzzy's int(round(.)) does); "ab"+"d" (3 of 8) -> 75; empty -> 0;
    # Py150's placeholders are replaced first: <NUM_LIT:2> is 2, so the last pair is equal -> 100
    preds = ["return x", "abcde123", "abcd", "", "x = <NUM_LIT:2> + <NUM_LIT> + <STR_LIT>"]
    refs = ["return y", "abcdeXYZ", "abxd", "x", "x = 2 + 0 + "]
    assert [scoring.fuzz_ratio(scoring.py150_postprocess(p), scoring.py150_postprocess(r)) for p, r in zip(preds, refs)] == [88, 62, 75, 0, 100]
    assert scoring.edit_similarity(preds, refs) == pytest.approx((88 + 62 + 75 + 0 + 100) / 500)
    assert scoring.py150_postprocess("f(<STR_LIT:a b>, <CHAR_LIT>)") == "f(a b, )"
    # a line that is only a string literal is empty after post-processing: an empty answer to it
    # scores 0, as caculate_fuzz skips the pair (fuzz.ratio itself would say 100)
    assert scoring.fuzz_ratio("", "") == 100
    assert scoring.edit_similarity(["", "<STR_LIT>"], ["<STR_LIT>", ""]) == 0.0
    assert scoring.edit_similarity(["", "return x"], ["<STR_LIT:doc>", "return y"]) == pytest.approx((0 + 88) / 200)


def test_metric_names():
    assert set(scoring.METRICS) >= {"exact_match", "rouge_l", "trace_rouge_l", "accuracy", "choice_accuracy", "strict_match",
                                    "edit_similarity"}
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


# -- O-LoRA's instruction format ----------------------------------------------------------------------

# O-LoRA's configs/instruction_config.json as published (the wording every prompt must carry).
OLORA_CONFIG = r"""{
  "NLI": [{"instruction_type": "zero-shot", "instruction": "What is the logical relationship between the \"sentence 1\" and the \"sentence 2\"? Choose one from the option.\n"}],
  "QQP": [{"instruction_type": "zero-shot", "instruction": "Whether the \"first sentence\" and the \"second sentence\" have the same meaning? Choose one from the option.\n"}],
  "SC": [{"instruction_type": "zero-shot", "instruction": "What is the sentiment of the following paragraph? Choose one from the option.\n"}],
  "TC": [{"instruction_type": "zero-shot", "instruction": "What is the topic of the following paragraph? Choose one from the option.\n"}],
  "BoolQA": [{"instruction_type": "zero-shot", "instruction": "According to the following passage, is the question true or false? Choose one from the option.\n"}],
  "MultiRC": [{"instruction_type": "zero-shot", "instruction": "According to the following passage and question, is the candidate answer true or false? Choose one from the option.\n"}],
  "WiC": [{"instruction_type": "zero-shot", "instruction": "Given a word and two sentences, whether the word is used with the same sense in both sentence? Choose one from the option.\n"}]
}"""


def olora_builder(task_type: str, dataset: str, labels: list[str], sentence: str) -> str:
    """The prompt as O-LoRA's code makes it: ``load_<type>_dataset`` in uie_dataset_lora.py (the
    instruction, the options, ``{0}``, the answer prefix; COPA: ``{0}`` and the prefix alone),
    then uie_collator.py's ``get_instruction`` with ``--add_task_name True --add_dataset_name
    True``, as its scripts run."""
    config = json.loads(OLORA_CONFIG)
    if task_type == "COPA":
        instruction = "{0}" + "\nAnswer:"
    else:
        instruction = config[task_type][0]["instruction"]
        instruction += "Option: " + ", ".join(labels) + " \n" + "{0}" + "\nAnswer:"
    prefix = "Task:" + task_type + "\n"
    prefix = prefix + "Dataset:"
    prefix = prefix + dataset + "\n"
    return (prefix + instruction).format(sentence)


def write_cl_task(root: Path, name: str, train, test, labels):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        (folder / f"{split}.json").write_text(json.dumps([{"label": y, "sentence": x} for x, y in rows]), encoding="utf-8")
    (folder / "labels.json").write_text(json.dumps(labels), encoding="utf-8")


@shared_data
def test_olora_prompts_on_the_shared_data():
    names = ["TC/agnews", "SC/SST-2", "TC/dbpedia", "SC/amazon"]
    s = instructions(data_dir=str(CL_BENCHMARK), tasks=names, train_per_class=2, test_per_class=1, max_len=100_000)
    assert [t.name for t in s.tasks] == names and s.kinds == ("generation",)
    for k, name in enumerate(names):
        folder = CL_BENCHMARK / name
        labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
        task = s.tasks[k]
        assert task.labels == tuple(labels) and task.metric == "exact_match"
        for split in ("train", "test"):
            records = json.loads((folder / f"{split}.json").read_text(encoding="utf-8"))
            expected = {olora_builder(name[:2], name[3:], labels, r["sentence"]): r["label"] for r in records}
            got = pairs_of(s, k, split)
            assert len(got) == len(labels) * (2 if split == "train" else 1)
            for prompt, answer in got:
                assert expected[prompt] == answer  # the prompt O-LoRA builds, and its label text as the answer
            ex = getattr(task, split)
            assert [labels[int(y)] for y in ex.y] == [a for _, a in got]  # y: the answer's index in labels
        assert sorted(a for _, a in pairs_of(s, k)) == sorted(labels * 2)  # two per class


def test_olora_prompt_of_each_task_type(tmp_path):
    kinds = {  # type/dataset: labels
        "NLI/CB": ["contradiction", "entailment", "neutral"], "QQP/QQP": ["False", "True"],
        "BoolQA/BoolQA": ["False", "True"], "MultiRC/MultiRC": ["False", "True"], "WiC/WiC": ["False", "True"],
        "COPA/COPA": ["A", "B"], "SC/yelp": ["negative", "positive"], "TC/agnews": ["World", "Sports"],
    }
    for name, labels in kinds.items():
        rows = [(f"{name} example {i}: sentence 1: a.\nsentence 2: b.", labels[i % len(labels)]) for i in range(4)]
        write_cl_task(tmp_path, name, rows, rows[:2], labels)
    s = instructions(data_dir=str(tmp_path), order=list(kinds))
    for k, (name, labels) in enumerate(kinds.items()):
        t, d = name.split("/")
        for i, (prompt, answer) in enumerate(pairs_of(s, k)):
            assert prompt == olora_builder(t, d, labels, f"{name} example {i}: sentence 1: a.\nsentence 2: b.")
            assert answer == labels[i % len(labels)]
    assert s.params["task_types"]["COPA/COPA"] == "COPA"
    bare = instructions(data_dir=str(tmp_path), tasks=["TC/agnews"], task_prefix=False)
    assert pairs_of(bare, 0)[0][0] == olora_builder("TC", "agnews", ["World", "Sports"], "TC/agnews example 0: sentence 1: a.\nsentence 2: b.").split("\n", 2)[2]


def test_task_types_from_the_folder_or_the_parameter(tmp_path):
    write_cl_task(tmp_path, "mine", [("good", "pos"), ("bad", "neg")], [("ok", "pos")], ["pos", "neg"])
    with pytest.raises(UserError, match=r"task 'mine' has no O-LoRA task type .*task_types"):
        instructions(data_dir=str(tmp_path))
    s = instructions(data_dir=str(tmp_path), task_types={"mine": "SC"}, metric="accuracy")
    assert pairs_of(s, 0)[0][0].startswith("Task:SC\nDataset:mine\nWhat is the sentiment")
    assert s.tasks[0].metric == "accuracy" and s.tasks[0].labels == ("pos", "neg")
    with pytest.raises(UserError, match="'XX'; the types are NLI"):
        instructions(data_dir=str(tmp_path), task_types={"mine": "XX"})


@shared_data
@pytest.mark.parametrize("order", list(PUBLISHED))
def test_orders_skip_absent_tasks_and_name_them(order, capsys):
    present = {n.rsplit("/", 1)[-1] for n in find_tasks(CL_BENCHMARK, "auto")}
    want = [n for n in PUBLISHED[order].split() if n in present]
    absent = [n for n in PUBLISHED[order].split() if n not in present]
    s = instructions(data_dir=str(CL_BENCHMARK), order=order, skip_missing=True, train_per_class=1, test_per_class=1)
    assert [t.name.rsplit("/", 1)[-1] for t in s.tasks] == want and len(want) >= 3
    assert s.params["skipped_tasks"] == absent
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "skipped" in x]
    assert line.endswith(", ".join(absent))
    with pytest.raises(UserError, match=r"task\(s\) .*yahoo.* not found"):
        instructions(data_dir=str(CL_BENCHMARK), order=order, train_per_class=1, test_per_class=1)


def test_instructions_bad_input(tmp_path, capsys):
    write_cl_task(tmp_path / "c", "SC/x", [("a", "p")], [("b", "p")], ["p"])
    _fails(tmp_path, capsys, "instructions", {"data_dir": str(tmp_path / "c"), "metric": "f1"},
           "stream 'instructions': task 'SC/x': unknown metric 'f1'", "exact_match")
    write_cl_task(tmp_path / "d", "mine", [("a", "p")], [("b", "p")], ["p"])
    _fails(tmp_path, capsys, "instructions", {"data_dir": str(tmp_path / "d")}, "task 'mine' has no O-LoRA task type")
    (tmp_path / "c" / "SC/x" / "train.json").write_text('[\n{"label": "p" "sentence": "a"}\n]')
    _fails(tmp_path, capsys, "instructions", {"data_dir": str(tmp_path / "c")}, "SC/x/train.json", "invalid JSON at line 2 column 15")


@shared_data
def test_instructions_stream_runs_end_to_end_with_a_tiny_causal_model(run_suite_dict, tmp_path):
    (tmp_path / "general.txt").write_text("A general sentence to measure.\nAnother one.\n", encoding="utf-8")
    suite = make_suite(
        ["naive"],
        stream="instructions",
        stream_params={"data_dir": str(CL_BENCHMARK), "tasks": ["SC/SST-2", "TC/agnews"], "train_per_class": 4,
                       "test_per_class": 2, "general": str(tmp_path / "general.txt")},
        model={"causal": True},
        training={"epochs": 1, "batch_size": 8},
    )
    _, tables = run_suite_dict(suite)
    assert tables.cells["status"].tolist() == ["ok"]
    m = tables.measurements
    em = m[m.metric == "exact_match"]
    assert sorted(set(zip(em.train_task, em.eval_task))) == [(i, j) for i in (-1, 0, 1) for j in (0, 1)]
    assert em.value.between(0, 1).all()
    assert (m[m.metric == "general_ppl"].value > 1).all() and len(m[m.metric == "general_ppl"]) == 3


# -- TRACE ------------------------------------------------------------------------------------------

TRACE_PAPER = {  # the metric the TRACE paper reports for each task, as its evaluations/eval_*.py compute it
    "C-STANCE": "strict_match", "FOMC": "strict_match", "MeetingBank": "trace_rouge_l", "Py150": "edit_similarity",
    "ScienceQA": "choice_accuracy", "NumGLUE-cm": "strict_match", "NumGLUE-ds": "strict_match", "20Minuten": "sari",
}


def write_trace(root: Path, name: str, n_train=4, n_test=2, eval_text=None):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        recs = [{"prompt": f"{name} {split} question {i}?\nAnswer:", "answer": f"A {i}"} for i in range(n)]
        (folder / f"{split}.json").write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    (folder / "eval.json").write_text(eval_text if eval_text is not None else "[]", encoding="utf-8")
    return folder


@pytest.fixture
def trace_dir(tmp_path):
    root = tmp_path / "TRACE"
    for name in reversed(TRACE_PAPER):
        write_trace(root, name, eval_text="not JSON: eval.json is not read")
    return root


def test_trace_tasks_get_tracess_metrics_in_tracess_order(trace_dir):
    s = trace(data_dir=str(trace_dir), metrics={"20Minuten": "rouge_l"})
    assert [t.name for t in s.tasks] == list(TRACE_PAPER)  # the order of TRACE's scripts
    assert {t.name: t.metric for t in s.tasks} == {**TRACE_PAPER, "20Minuten": "rouge_l"}
    assert s.params["metrics"]["Py150"] == "edit_similarity"
    assert pairs_of(s, 1, "test") == [("FOMC test question 0?\nAnswer:", "A 0"), ("FOMC test question 1?\nAnswer:", "A 1")]
    with pytest.raises(UserError, match=r"task '20Minuten' is scored by 'sari', which is not available.*metrics = "):
        trace(data_dir=str(trace_dir))
    s = trace(data_dir=str(trace_dir), tasks=["FOMC", "Py150"], order=[1, 0])
    assert [t.name for t in s.tasks] == ["Py150", "FOMC"]


def test_trace_task_without_a_known_metric(tmp_path):
    write_trace(tmp_path, "FOMC")
    write_trace(tmp_path, "MyTask")
    with pytest.raises(UserError, match=r"task 'MyTask' has no known metric .*metrics = \{ \"MyTask\" = "):
        trace(data_dir=str(tmp_path))
    s = trace(data_dir=str(tmp_path), metrics={"MyTask": "exact_match"})
    assert [(t.name, t.metric) for t in s.tasks] == [("FOMC", "strict_match"), ("MyTask", "exact_match")]


def test_per_task_caps_are_seeded(trace_dir):
    def picked(seed):
        s = trace(data_dir=str(trace_dir), tasks=["FOMC", "Py150"], train_per_task=2, test_per_task=1, sample_seed=seed)
        return [pairs_of(s, k) for k in range(2)], [len(t.test) for t in s.tasks]
    a, n_test = picked(0)
    assert n_test == [1, 1] and all(len(p) == 2 for p in a)
    assert picked(0)[0] == a
    assert any(picked(seed)[0] != a for seed in (1, 2, 3))
    with pytest.raises(UserError, match="train_per_task must be at least 1"):
        trace(data_dir=str(trace_dir), train_per_task=0)


def test_general_text_from_files_relative_to_the_data_folder(trace_dir, tmp_path):
    (trace_dir / "general").mkdir()
    (trace_dir / "general" / "a.txt").write_text("first document\n\n  second document  \n", encoding="utf-8")
    (trace_dir / "general" / "b.txt").write_text("third\n", encoding="utf-8")
    s = trace(data_dir=str(trace_dir), tasks=["FOMC"], general="general")
    assert len(s.general) == 3
    assert s.tokenizer.decode(s.general.x[2, : s.general.lengths[2]].tolist()) == "third"
    (tmp_path / "one.txt").write_text("only one\n", encoding="utf-8")
    assert len(trace(data_dir=str(trace_dir), tasks=["FOMC"], general=[str(tmp_path / "one.txt"), "general/b.txt"]).general) == 2
    with pytest.raises(UserError, match="general text not found"):
        trace(data_dir=str(trace_dir), tasks=["FOMC"], general="nowhere")


def test_streams_without_a_general_text_measure_the_default_one(trace_dir):
    from clbench.tasks.lmdata import default_general

    docs = default_general()
    assert len(docs) == 24 and 8000 < sum(map(len, docs)) < 12000 and all(d.isascii() for d in docs)
    assert docs[0].startswith("It is a truth universally acknowledged")
    s = trace(data_dir=str(trace_dir), tasks=["FOMC"], max_len=64)
    assert len(s.general) == 24 and int(s.general.lengths.max()) == 64  # each document cut to max_len tokens
    assert s.tokenizer.decode(s.general.x[0, :20].tolist()) == docs[0][:20]
    assert trace(data_dir=str(trace_dir), tasks=["FOMC"], general=[]).general is None


def test_trace_error_missing_prompt_or_answer_field(tmp_path, capsys):
    folder = write_trace(tmp_path / "d", "FOMC")
    (folder / "train.json").write_text(json.dumps([{"prompt": "p", "answer": "a"}, {"prompt": "p", "label": "a"}]))
    _fails(tmp_path, capsys, "trace", {"data_dir": str(tmp_path / "d")}, "train.json: items[1] has no field 'answer'", "prompt, label")
    (folder / "train.json").write_text(json.dumps([{"answer": "a"}]))
    _fails(tmp_path, capsys, "trace", {"data_dir": str(tmp_path / "d")}, "train.json: items[0] has no field 'prompt'")


def test_trace_error_empty_answer(tmp_path, capsys):
    folder = write_trace(tmp_path / "d", "NumGLUE-ds")
    (folder / "test.json").write_text(json.dumps([{"prompt": "p", "answer": "1"}, {"prompt": "p", "answer": " "}]))
    _fails(tmp_path, capsys, "trace", {"data_dir": str(tmp_path / "d")}, "test.json: items[1] has an empty answer")


def test_trace_error_unknown_metric(tmp_path, capsys):
    write_trace(tmp_path / "d", "FOMC")
    _fails(tmp_path, capsys, "trace", {"data_dir": str(tmp_path / "d"), "metrics": {"FOMC": "bleu"}},
           "stream 'trace': task 'FOMC': unknown metric 'bleu'", "exact_match")


def test_trace_error_task_without_a_known_metric(tmp_path, capsys):
    write_trace(tmp_path / "d", "Papyrus-f")
    _fails(tmp_path, capsys, "trace", {"data_dir": str(tmp_path / "d")}, "task 'Papyrus-f' has no known metric", "C-STANCE, FOMC")
    write_trace(tmp_path / "d", "20Minuten")
    _fails(tmp_path, capsys, "trace", {"data_dir": str(tmp_path / "d"), "metrics": {"Papyrus-f": "rouge_l"}},
           "task '20Minuten' is scored by 'sari'", "not installed")


def test_trace_error_malformed_json_says_file_and_line(tmp_path, capsys):
    folder = write_trace(tmp_path / "d", "FOMC")
    (folder / "train.json").write_text('[\n{"prompt": "p", "answer": "a"},\n{"prompt": "p" "answer": "a"}\n]')
    _fails(tmp_path, capsys, "trace", {"data_dir": str(tmp_path / "d")}, "FOMC/train.json", "invalid JSON at line 3 column 16")


# -- JSONL instructions -------------------------------------------------------------------------------

def write_jsonl(root: Path, name: str, train: list[dict], test: list[dict]):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, recs in (("train", train), ("test", test)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")


def test_jsonl_instructions_in_super_naturalinstructions_format(tmp_path):
    rec = {"instruction": "Summarize the text", "input": "  The cat sat on the mat ", "output": ["A cat sat.", "Cat sits."]}
    write_jsonl(tmp_path, "summ", [rec] * 3, [{"input": "Is it raining?", "output": "no"}])
    write_jsonl(tmp_path, "math", [{"instruction": "Add.", "input": "2+2", "output": "4"}] * 2, [{"input": "1+1", "output": "2"}])
    s = jsonl_instructions(data_dir=str(tmp_path), metrics={"math": "strict_match"})
    assert [(t.name, t.metric) for t in s.tasks] == [("math", "strict_match"), ("summ", "rouge_l")]
    assert pairs_of(s, 1)[0] == (
        "Definition: Summarize the text.\n\nNow complete the following example -\nInput: The cat sat on the mat.\nOutput: ",
        "A cat sat.",
    )
    assert pairs_of(s, 1, "test") == [("Now complete the following example -\nInput: Is it raining?\nOutput: ", "no")]
    assert pairs_of(s, 0)[0][0] == "Definition: Add.\n\nNow complete the following example -\nInput: 2+2.\nOutput: "
    plain = jsonl_instructions(data_dir=str(tmp_path), tasks=["math"], template="plain", metric="exact_match")
    assert pairs_of(plain, 0)[0] == ("Add.\n2+2", "4") and pairs_of(plain, 0, "test") == [("1+1", "2")]


def test_jsonl_bad_input(tmp_path, capsys):
    write_jsonl(tmp_path / "j", "t", [{"input": "x", "output": "y"}], [{"input": "x", "output": "y"}, {"input": "x"}])
    _fails(tmp_path, capsys, "jsonl-instructions", {"data_dir": str(tmp_path / "j")}, "test.jsonl: line 2 has no field 'output'")
    write_jsonl(tmp_path / "j", "t", [{"instruction": "i", "output": "y"}], [{"input": "x", "output": "y"}])
    _fails(tmp_path, capsys, "jsonl-instructions", {"data_dir": str(tmp_path / "j")}, "train.jsonl: line 1 has no field 'input'")
    write_jsonl(tmp_path / "j", "t", [{"input": "x", "output": ""}], [{"input": "x", "output": "y"}])
    _fails(tmp_path, capsys, "jsonl-instructions", {"data_dir": str(tmp_path / "j")}, "train.jsonl: line 1 has an empty answer")
    write_jsonl(tmp_path / "j", "t", [{"input": "x", "output": "y"}], [{"input": "x", "output": "y"}])
    _fails(tmp_path, capsys, "jsonl-instructions", {"data_dir": str(tmp_path / "j"), "metric": "bleu"}, "unknown metric 'bleu'")
    (tmp_path / "j" / "t" / "test.jsonl").write_text('{"input": "x", "output": "y"}\n\n{"input": "x", output: "y"}\n')
    _fails(tmp_path, capsys, "jsonl-instructions", {"data_dir": str(tmp_path / "j")}, "t/test.jsonl", "invalid JSON at line 3")
