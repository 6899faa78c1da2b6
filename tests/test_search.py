"""Search spaces of clbench tune: the defaults strategies declare, what a suite fixes and
overrides, and the one-line errors for a bad space (every command checks a suite's search tables);
suite files written back as TOML."""

import tomllib

import pytest

from clbench.cli import main
from clbench.search import Dim, SearchRequest, resolve_space
from clbench.suite import parse_suite, to_toml
from conftest import make_suite

DIGITS = {"patch_size": 4, "n_tasks": 2}

BAD_SPACES = [
    ({"lamda": {"log-uniform": [1.0, 10.0]}}, "'strategies[0].search.lamda': strategy 'ewc' has no parameter 'lamda'"),
    ({"lambda": {"log-uniform": [10.0, 1.0]}}, "'strategies[0].search.lambda': empty range [10.0, 1.0]"),
    ({"lambda": {"uniform": [3.0, 3.0]}}, "'strategies[0].search.lambda': empty range [3.0, 3.0]"),
    ({"lambda": {"log-uniform": [0.0, 10.0]}}, "'strategies[0].search.lambda': log range through zero [0.0, 10.0]"),
    ({"lambda": {"uniform": [-1.0, 10.0]}}, "parameter 'lambda' must be a number >= 0, got -1.0"),
    ({"fisher_samples": {"uniform": [10, 100]}}, "parameter 'fisher_samples' must be int, got"),
    ({"lambda": {"normal": [0.0, 1.0]}}, "a dimension is one of"),
    ({"lambda": {"choice": []}}, "choice needs a non-empty list"),
    ({"training": {"lrr": {"log-uniform": [1e-4, 1e-2]}}}, "unknown field 'training.lrr'"),
    ({"training": {"lr": {"uniform": [-1.0, 1.0]}}}, "field 'training.lr' must be greater than 0, got -1.0"),
]


def write(tmp_path, data: dict, name: str = "suite.toml") -> str:
    path = tmp_path / name
    path.write_text(to_toml(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("search, message", BAD_SPACES)
def test_a_bad_search_space_is_one_line_exit_2(tmp_path, capsys, host, search, message):
    path = write(tmp_path, make_suite([{"name": "ewc", "search": search}], stream_params=DIGITS))
    for command in (["check", path], ["run", path, "--out", str(tmp_path / "out")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"clbench: error: {path}: ") and message in err, err
    assert not (tmp_path / "out").exists()


def _space(host, entry: dict, suite_search: dict | None = None):
    data = make_suite([entry], stream_params=DIGITS)
    if suite_search is not None:
        data["search"] = suite_search
    suite = parse_suite(data, "t.toml")
    c = suite.cells[0]
    return resolve_space(c.strategy, c.training, suite.search[c.strategy.label])


def test_every_builtin_default_space_is_valid(host):
    spaces = {}
    for name in host.names("strategies"):
        if getattr(host.get("strategies", name).obj, "search_space", None):
            spaces[name] = _space(host, {"name": name}).dims  # each dimension checked against the strategy
    lr = {("training", "lr"): Dim("log-uniform", (1e-4, 1e-2))}  # the suite's 1e-3, a decade either side
    assert spaces["ewc"] == {("ewc", "lambda_"): Dim("log-uniform", (1.0, 1e6)), **lr}
    assert ("replay", "memory_size") not in spaces["replay"]  # the memory is the suite's budget, not searched
    assert spaces["inc-lora"] == {("inc-lora", "rank"): Dim("choice", (2, 4, 8, 16)), **lr}  # no wider search of lr than the others'
    assert ("o-lora", "lambda_orth") in spaces["o-lora"]


def test_every_strategy_searches_the_learning_rate_alike_unless_the_suite_fixes_it(host):
    """Equal budget by default: naive, which has nothing of its own to search, searches the
    learning rate as EWC and LoRA do, over the same range around the suite's rate."""
    spaces = {n: _space(host, {"name": n}) for n in ("naive", "cumulative", "ewc", "seq-lora")}
    assert {n: s.dims[("training", "lr")] for n, s in spaces.items()} == {n: Dim("log-uniform", (1e-4, 1e-2)) for n in spaces}
    assert spaces["naive"].dims == {("training", "lr"): Dim("log-uniform", (1e-4, 1e-2))}
    data = make_suite([{"name": "naive"}], stream_params=DIGITS, training={"lr": 3e-5})
    c = parse_suite(data, "t.toml").cells[0]
    assert resolve_space(c.strategy, c.training, SearchRequest.of({"name": "naive"}, ["naive"], {}, "x")).dims == {
        ("training", "lr"): Dim("log-uniform", (3e-6, 3e-4))}  # relative to the suite's rate
    for n in ("naive", "ewc"):  # the suite fixes it for all: nothing of the learning rate is searched
        s = _space(host, {"name": n}, {"lr": 1e-3})
        assert ("training", "lr") not in s.dims and s.fixed[("training", "lr")] == 1e-3


def test_what_the_suite_sets_is_fixed_and_its_search_overrides_the_defaults(host):
    lr = {("training", "lr"): Dim("log-uniform", (1e-4, 1e-2))}  # every strategy's default search of the learning rate
    assert _space(host, {"name": "ewc", "params": {"lambda": 100.0}}).dims == lr  # set in params: not searched
    s = _space(host, {"name": "ewc", "params": {"lambda": 100.0}, "search": {"lambda": {"uniform": [1.0, 5.0]}, "gamma": 1.0}})
    assert s.dims == {("ewc", "lambda_"): Dim("uniform", (1.0, 5.0)), **lr} and s.fixed == {("ewc", "gamma"): 1.0}
    s = _space(host, {"name": "seq-lora", "training": {"lr": 1e-3}})
    assert ("training", "lr") not in s.dims  # the entry's own training table fixes the learning rate
    s = _space(host, {"name": "naive"}, {"lr": {"log-uniform": [1e-4, 1e-2]}, "epochs": {"int": [1, 3]}})
    assert s.dims == {("training", "lr"): Dim("log-uniform", (1e-4, 1e-2)), ("training", "epochs"): Dim("int", (1, 3))}
    s = _space(host, {"name": ["replay", "ewc"], "search": {"ewc": {"lambda": 5.0}}})
    assert set(s.dims) == {("replay", "ratio"), ("training", "lr")} and s.fixed == {("ewc", "lambda_"): 5.0}


def test_to_toml_reads_back_as_the_same_data():
    data = make_suite([{"name": ["replay", "ewc"], "label": "r+e", "params": {"ewc": {"lambda": 1e-05}},
                        "training": {"lr": 0.000123}}], orders=["default", [1, 0]])
    data["description"] = 'a "quoted" — text'
    data["streams"][0]["tasks"] = [1]
    assert tomllib.loads(to_toml(data)) == data
