"""Suite parsing: expansion into cells, config hashes, and one-line errors naming field and file."""

import tomllib

import pytest

from clbench.errors import UserError
from clbench.suite import builtin_suites, load_suite, parse_suite
from conftest import make_suite


def test_expands_streams_orders_strategies_and_seeds(host):
    data = make_suite(["naive", "joint"], orders=["default", [1, 0, 2, 3, 4]], seeds=[0, 1, 2])
    suite = parse_suite(data, "s.toml")
    assert len(suite.cells) == 2 * 2 * 3
    assert {c.order for c in suite.cells} == {"default", "1-0-2-3-4"}
    assert len({c.run_id for c in suite.cells}) == 12
    assert suite.cells[0].model.d_model == 32


def test_config_hash_ignores_the_suite_name_and_device(host):
    a = parse_suite(make_suite(["naive"], name="a"), "a.toml").cells[0]
    b = parse_suite(make_suite(["naive"], name="b", training={"device": "cpu", "eval_batch_size": 7}), "b.toml").cells[0]
    c = parse_suite(make_suite(["naive"], training={"lr": 0.5}), "c.toml").cells[0]
    assert a.run_id == b.run_id
    assert a.run_id != c.run_id


def test_precision_is_hashed_except_at_its_default(host):
    """training.precision came after results format 2: at fp32 the hash is what it was."""
    fp32 = parse_suite(make_suite(["naive"]), "a.toml").cells[0]
    bf16 = parse_suite(make_suite(["naive"], training={"precision": "bf16"}), "b.toml").cells[0]
    assert "precision" not in fp32.config()["training"] and bf16.config()["training"]["precision"] == "bf16"
    assert fp32.run_id != bf16.run_id
    with pytest.raises(UserError, match=r"field 'training\.precision' must be 'fp32' \| 'bf16' \| 'fp16'"):
        parse_suite(make_suite(["naive"], training={"precision": "fp8"}), "c.toml")


def test_defaults_are_filled_into_strategy_params(host):
    cell = parse_suite(make_suite(["joint"]), "s.toml").cells[0]
    assert cell.strategy.parts == (("joint", {"repeat": 0}),)


def test_builtin_suites_parse(host, tiny_causal_lm):
    """Every built-in suite parses. SmolLM2's (``model.init = "smollm2"``) parse with a tiny Llama
    standing in, so that no test but the slow ones de-quantizes the wheel's model
    (tests/test_llm_smol.py and tests/test_gguf.py check it as written)."""
    assert "quick" in builtin_suites()
    for name, text in builtin_suites().items():
        if tomllib.loads(text).get("model", {}).get("init") == "smollm2":
            assert load_suite(name, [f"model.init={tiny_causal_lm('llama')}"]).cells
        else:
            assert load_suite(name).cells


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(sedes=[0]), r"s\.toml: unknown field 'sedes'"),
        (lambda d: d.update(seeds="0"), r"s\.toml: field 'seeds' must be a non-empty list of integers"),
        (lambda d: d["model"].update(d_model="big"), r"s\.toml: field 'model\.d_model' must be int, got 'big'"),
        (lambda d: d["training"].update(epoch=3), r"s\.toml: unknown field 'training\.epoch'"),
        (lambda d: d["training"].update(optimizer="adagrad"), r"field 'training\.optimizer' must be 'adam' \| 'adamw' \| 'sgd'"),
        (lambda d: d.pop("streams"), r"s\.toml: missing field 'streams'"),
        (lambda d: d["streams"][0].pop("name"), r"s\.toml: missing field 'streams\[0\]\.name'"),
        (lambda d: d["streams"][0].update(name="mnist"), r"s\.toml: unknown stream 'mnist' \(known streams: .*split-digits"),
        (lambda d: d["streams"][0]["params"].update(n_taks=5), r"stream 'split-digits' has no parameter 'n_taks'"),
        (lambda d: d["streams"][0]["params"].update(scenario="class-il"), r"parameter 'scenario' must be"),
        (lambda d: d["strategies"].append({"name": "replya"}), r"unknown strategy 'replya' \(known strategies: .*naive"),
        (lambda d: d["strategies"].append({"name": "joint", "params": {"repaet": 1}}), r"strategy 'joint' has no parameter 'repaet'"),
        (lambda d: d["strategies"].append({"name": "naive"}), r"strategy label\(s\) naive appear twice"),
        (lambda d: d["model"].update(n_heads=3), r"model\.d_model must be divisible by model\.n_heads"),
    ],
)
def test_mistakes_are_one_line_errors_naming_the_field_and_file(host, change, message):
    data = make_suite(["naive"])
    change(data)
    with pytest.raises(UserError, match=message) as err:
        parse_suite(data, "s.toml")
    assert "\n" not in str(err.value)


def test_suite_file_errors(tmp_path, host):
    with pytest.raises(UserError, match="suite file not found"):
        load_suite(str(tmp_path / "none.toml"))
    with pytest.raises(UserError, match="unknown suite 'nosuch'.*quick"):
        load_suite("nosuch")
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = [0,\n")
    with pytest.raises(UserError, match=r"bad\.toml: invalid TOML"):
        load_suite(str(bad))


def test_the_default_suite_runs_intransigences_reference(host):
    cells = load_suite("quick").cells
    assert {c.strategy.label for c in cells} >= {"naive", "cumulative"}
    assert len({c.seed for c in cells if c.strategy.label == "cumulative"}) == len({c.seed for c in cells})


def test_set_changes_a_suite_and_its_hash(host, tmp_path):
    from clbench.cli import main

    plain = load_suite("quick")
    changed = load_suite("quick", ["training.epochs=1", "model.d_model=32", "streams.patch_size=2"])
    c = changed.cells[0]
    assert (c.training.epochs, c.model.d_model, c.stream_params["patch_size"]) == (1, 32, 2)
    assert c.config_hash != plain.cells[0].config_hash
    with pytest.raises(UserError, match="expected model.FIELD=VALUE"):
        load_suite("quick", ["epochs=1"])
    with pytest.raises(UserError, match=r"with --set training.epochs=0\): field 'training.epochs' must be greater than 0"):
        load_suite("quick", ["training.epochs=0"])
    assert main(["check", "quick", "--set", "training.nope=1"]) == 2


def test_set_model_init_runs_a_suite_on_a_pretrained_model(host, tiny_causal_lm):
    """A suite sized for a small decoder takes a real checkpoint with one --set: the model's
    architecture replaces the suite's (which would otherwise conflict with it)."""
    folder = str(tiny_causal_lm("llama"))
    from clbench.models.backbones import resolve

    with pytest.raises(UserError, match="conflicts with model.init"):
        load_suite("llm-quick", [f"model.init={folder}", "model.max_len=32"])
    (cell, *_) = load_suite("llm-quick", [f"model.init={folder}"]).cells  # llm-quick says max_len = 32
    assert cell.model.init == folder and cell.init_digest
    assert cell.model.max_len == resolve(folder).arch["max_len"] != 32
    assert cell.stream_params["tokenizer"] == folder  # the stream speaks the model's tokens


def test_a_stream_runs_on_the_tasks_it_names(host):
    from clbench.loop import build_stream
    from clbench.suiterun import preflight

    data = make_suite(["naive"], stream_params={"patch_size": 4, "n_tasks": 3})
    whole = parse_suite(data, "s.toml").cells[0]
    data["streams"][0]["tasks"] = [2, 0]
    cell = parse_suite(data, "s.toml").cells[0]
    assert cell.tasks == (2, 0) and cell.order == "default, tasks 2-0"
    assert cell.run_id != whole.run_id and "tasks" not in whole.config()  # cells without keep their hashes
    full, part = build_stream(whole), build_stream(cell)
    assert [t.name for t in part.tasks] == [full.tasks[2].name, full.tasks[0].name]
    assert part.tasks[0].train.t.unique().tolist() == [0]  # positions in the cell's stream
    data["streams"][0]["tasks"] = [3]
    with pytest.raises(UserError, match=r"^s.toml: stream 'split-digits': tasks \[3\]: the stream has 3 tasks \(positions 0..2\)$"):
        preflight(parse_suite(data, "s.toml"))
    data["streams"][0]["tasks"] = [1, 1]
    with pytest.raises(UserError, match=r"'streams\[0\].tasks' must be a non-empty list of distinct task positions"):
        parse_suite(data, "s.toml")
