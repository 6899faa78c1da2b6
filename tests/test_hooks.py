"""Every hook: documented with its signature in docs/hooks.md, exercised by a ``test_hook_<name>``
test below (datasette's rule, checked by :func:`test_every_hook_has_a_test`), called in the
order docs/hooks.md states, and refused on the wrong plugin manager."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import clbench
from conftest import make_suite

from clbench import hookspecs
from clbench.cell import cell_manager
from clbench.errors import UserError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"
TWO = {"patch_size": 4, "n_tasks": 2}
TWO_CLASS = {"patch_size": 4, "n_tasks": 2, "classes_per_task": 1}  # 1 class per task: tiny and fast


def _specs():
    return [(n, getattr(hookspecs.HostSpecs, n)) for n in hookspecs.HOST_HOOKS] + [
        (n, getattr(hookspecs.CellSpecs, n)) for n in hookspecs.CELL_HOOKS
    ]


def _signature(fn) -> str:
    return ", ".join(p for p in inspect.signature(fn).parameters if p != "self")


def test_every_hook_is_documented_with_its_signature():
    text = DOCS.read_text()
    documented = dict(re.findall(r"^### `(\w+)\(([^)]*)\)`", text, flags=re.M))
    names = {n for n, _ in _specs()}
    assert len(names) >= 15
    assert names == set(documented), f"undocumented: {names - set(documented)}, stale: {set(documented) - names}"
    for name, fn in _specs():
        assert documented[name] == _signature(fn), f"docs/hooks.md: {name}({documented[name]}) vs the spec's ({_signature(fn)})"


def _firstresult(fn) -> bool:
    return bool(getattr(fn, "clbench_spec", {}).get("firstresult"))


def test_the_firstresult_marks_in_the_docs_match_the_specs():
    """docs/hooks.md marks a hook's heading "— firstresult", and writing-a-strategy.md's table
    "*firstresult*", exactly where the spec says ``firstresult=True``."""
    assert any(_firstresult(fn) for _, fn in _specs())
    headings = dict(re.findall(r"^### `(\w+)\([^)]*\)`(.*)$", DOCS.read_text(), flags=re.M))
    table = dict(re.findall(r"^\| `(\w+)\([^)]*\)`([^|]*)\|", (DOCS.parent / "writing-a-strategy.md").read_text(), flags=re.M))
    assert set(table) == set(hookspecs.CELL_HOOKS) - {"check_cell"}  # the table lists the loop's hooks
    for name, fn in _specs():
        assert ("firstresult" in headings[name]) == _firstresult(fn), f"docs/hooks.md: {name}'s firstresult mark"
        if name in table:
            assert ("*firstresult*" in table[name]) == _firstresult(fn), f"writing-a-strategy.md: {name}'s firstresult mark"


def test_every_hook_has_a_docstring():
    for name, fn in _specs():
        assert (fn.__doc__ or "").strip(), name


def test_every_hook_has_a_test():
    tests = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        tests |= set(re.findall(r"^def (test_hook_\w+)\(", path.read_text(), flags=re.M))
    missing = [n for n, _ in _specs() if not any(t == f"test_hook_{n}" or t.startswith(f"test_hook_{n}_") for t in tests)]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"


# -- the call order ----------------------------------------------------------------------------


class Recorder:
    """Records every cell hook call (name, task index where the hook has one)."""

    def __init__(self):
        self.calls = []

    @clbench.hookimpl
    def before_task(self, cell, task):
        self.calls.append(("before_task", cell.task_index))

    @clbench.hookimpl
    def train_data(self, cell, task):
        self.calls.append(("train_data", cell.task_index))

    @clbench.hookimpl
    def trainable_parameters(self, cell):
        self.calls.append(("trainable_parameters", cell.task_index))

    @clbench.hookimpl
    def fit_task(self, cell, task, data):
        self.calls.append(("fit_task", cell.task_index))

    @clbench.hookimpl
    def train_batch(self, cell, batch):
        self.calls.append(("train_batch", cell.task_index))

    @clbench.hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        self.calls.append(("loss_terms", cell.task_index))

    @clbench.hookimpl
    def after_backward(self, cell, batch):
        self.calls.append(("after_backward", cell.task_index))

    @clbench.hookimpl
    def after_step(self, cell, step, loss):
        self.calls.append(("after_step", cell.task_index))

    @clbench.hookimpl
    def after_task(self, cell, task):
        self.calls.append(("after_task", cell.task_index))

    @clbench.hookimpl
    def before_eval(self, cell, task_index, task):
        self.calls.append(("before_eval", task_index))


def _run(host, strategies=("naive",), observers=(), stream_params=TWO_CLASS, training=None):
    from clbench.loop import run_cell
    from clbench.suite import parse_suite

    data = make_suite(list(strategies), stream_params=stream_params, training={"batch_size": 128, **(training or {})})
    (cell,) = parse_suite(data, "t.toml").cells
    res = run_cell(cell, observers=observers)
    assert res.status == "ok", res.row["traceback"]
    return res


def _collapse(calls):
    out = []
    for c in calls:
        if not out or out[-1] != c:
            out.append(c)
    return out


def test_cell_hooks_are_called_in_the_documented_order(host):
    rec = Recorder()
    _run(host, observers=[rec])
    steps = ["train_batch", "loss_terms", "after_backward", "after_step"]
    expected = [("before_eval", 0), ("before_eval", 1)]
    for i in (0, 1):
        expected += [("before_task", i), ("train_data", i), ("trainable_parameters", i), ("fit_task", i)]
        expected += [(s, i) for s in steps]  # one class of 124 or 127 examples: one batch of 128
        expected += [("after_task", i), ("before_eval", 0), ("before_eval", 1)]
    assert rec.calls == expected
    # docs/hooks.md's "A cell, step by step" names the hooks in this order
    section = DOCS.read_text().split("## A cell, step by step", 1)[1]
    said = [h for h in re.findall(r"`(\w+)`", section) if h in hookspecs.CELL_HOOKS]
    assert said == ["check_cell", "before_eval", "before_task", "train_data", "trainable_parameters", "fit_task",
                    *steps, "after_task", "before_eval"]


# -- the wrong manager -------------------------------------------------------------------------


def test_a_cell_hook_on_a_host_plugin_is_refused(host):
    class Misplaced:
        @clbench.hookimpl
        def before_task(self, cell, task):
            pass

    with pytest.raises(UserError, match="plugin 'misplaced': unknown hook 'before_task'"):
        host.register(Misplaced(), name="misplaced")
    assert not host.pm.has_plugin("misplaced")


def test_a_registration_hook_on_a_strategy_is_refused(host, tmp_path):
    class Confused:
        @clbench.hookimpl
        def register_streams(self, register):
            pass

    with pytest.raises(UserError, match="strategy 'confused': unknown hook 'register_streams'"):
        cell_manager([("confused", Confused())])

    class Plugin:
        @clbench.hookimpl
        def register_strategies(self, register):
            register("confused", Confused)

    host.register(Plugin(), name="confused-plugin")
    from clbench.cli import main

    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[[streams]]\nname = "split-digits"\n[[strategies]]\nname = "confused"\n')
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert not (tmp_path / "out").exists()


# -- registration hooks ------------------------------------------------------------------------


def test_hook_register_streams(host, run_suite_dict):
    from clbench.tasks.digits import split_digits

    class Plugin:
        @clbench.hookimpl
        def register_streams(self, register):
            def two_digits(patch_size: int = 4, order=None):
                """digits 0 and 1 as one task"""
                return split_digits(n_tasks=1, classes_per_task=2, patch_size=patch_size, order=order)

            register("two-digits", two_digits)

    host.register(Plugin(), name="p")
    assert host.get("streams", "two-digits").description == "digits 0 and 1 as one task"
    run, tables = run_suite_dict(make_suite(["naive"], stream="two-digits", stream_params={}))
    assert set(tables.cells["n_tasks"]) == {1} and set(tables.cells["status"]) == {"ok"}


def test_hook_register_strategies(host):
    class Echo:
        """An echo."""

    class Plugin:
        @clbench.hookimpl
        def register_strategies(self, register):
            register("echo", Echo)

    host.register(Plugin(), name="p")
    entry = host.get("strategies", "echo")
    assert (entry.obj, entry.plugin, entry.description) == (Echo, "p", "An echo.")


def test_hook_register_metrics(host, run_suite_dict):
    class Plugin:
        @clbench.hookimpl
        def register_metrics(self, register):
            register("first_task_last", lambda m: float(m.R[-1, 0]))

    host.register(Plugin(), name="p")
    _, tables = run_suite_dict(make_suite(["naive"], stream_params=TWO_CLASS))
    R = tables.measurements.query("metric == 'acc' and train_task == 1 and eval_task == 0")["value"]
    assert tables.summary["first_task_last"].tolist() == R.tolist()


def test_hook_register_reporters(host, run_suite_dict, tmp_path):
    seen = []

    class Plugin:
        @clbench.hookimpl
        def register_reporters(self, register):
            register("count", lambda tables, out, console: seen.append((len(tables.cells), out)))

    host.register(Plugin(), name="p")
    run_suite_dict(make_suite(["naive"], stream_params=TWO_CLASS))
    from clbench.cli import main

    assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "rep"), "--reporter", "count"]) == 0
    assert seen == [(1, tmp_path / "rep")]


def test_hook_register_executors(host, run_suite_dict):
    ran = []

    class Reversed:
        in_process = True

        def map(self, fn, cells):
            for cell in reversed(list(cells)):
                ran.append(cell.seed)
                yield fn(cell)

    class Plugin:
        @clbench.hookimpl
        def register_executors(self, register):
            register("reversed", Reversed)

    host.register(Plugin(), name="p")
    run, tables = run_suite_dict(make_suite(["naive"], stream_params=TWO_CLASS, seeds=(0, 1)), executor="reversed")
    assert ran == [1, 0] and sorted(tables.cells["seed"]) == [0, 1]


def test_hook_register_observers(host, run_suite_dict):
    log = []

    class Watch:
        def __init__(self, total, console, quiet):
            log.append(("start", total, quiet))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            log.append(("end",))

        def cell(self, config):
            rec = Recorder()
            log.append(("cell", config.seed, rec))
            return rec

        def done(self, result):
            log.append(("done", result.row["seed"], result.status))

    class Plugin:
        @clbench.hookimpl
        def register_observers(self, register):
            register("watch", Watch)

    host.register(Plugin(), name="p")
    run_suite_dict(make_suite(["naive"], stream_params=TWO_CLASS, seeds=(0, 1)))
    assert [e[:2] for e in log] == [("start", 2), ("cell", 0), ("done", 0), ("cell", 1), ("done", 1), ("end",)]
    assert log[0][2] is True  # the tests run with progress=False
    assert all(e[2] == "ok" for e in log if e[0] == "done")
    assert ("after_step", 1) in log[1][2].calls  # its plugin saw the cell's hooks


# -- cell hooks --------------------------------------------------------------------------------


def test_hook_check_cell(host, tmp_path):
    seen = []

    class Picky:
        @clbench.hookimpl
        def check_cell(self, config, stream):
            seen.append(([n for n, _ in config.strategy.parts], stream.scenario))
            if "replay" in [n for n, _ in config.strategy.parts]:
                raise UserError("picky does not mix with replay")

    class Plugin:
        @clbench.hookimpl
        def register_strategies(self, register):
            register("picky", Picky)

    host.register(Plugin(), name="p")
    from clbench.cli import main
    from clbench.suite import parse_suite
    from clbench.suiterun import preflight

    preflight(parse_suite(make_suite(["picky"], stream_params=TWO), "t.toml"))
    assert seen == [(["picky"], "class-incremental")]
    with pytest.raises(UserError, match="strategy 'picky\\+replay': picky does not mix with replay"):
        preflight(parse_suite(make_suite([{"name": ["picky", "replay"]}], stream_params=TWO), "t.toml"))
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[[streams]]\nname = "split-digits"\n[[strategies]]\nname = ["picky", "replay"]\n')
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert not (tmp_path / "out").exists()


GENERATIVE_SUITE = ('name = "s"\n[model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nmax_len = 32\ncausal = true\n'
                    '[training]\nepochs = 1\n[[streams]]\nname = "algorithmic"\nparams = {{ n_train = 8, n_test = 4 }}\n'
                    '[[strategies]]\nname = {names}\n')


def test_a_strategy_serves_the_kinds_of_task_it_declares(host, tmp_path, capsys):
    """``serves``: a strategy that serves classification only is refused on a generative stream in
    one line, by ``clbench check`` and ``clbench run`` before anything runs, and by a cell run
    alone; it runs on a classification stream; a strategy that declares nothing serves every kind."""
    from clbench.cli import main
    from clbench.loop import run_cell
    from clbench.suite import parse_suite

    class LabelsOnly:
        serves = ("classification",)

    _strategy(host, "labels-only", LabelsOnly)
    path = tmp_path / "gen.toml"
    path.write_text(GENERATIVE_SUITE.format(names='"labels-only"'))
    for command in (["check", str(path)], ["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err == (f"clbench: error: {path}: strategy 'labels-only': serves classification streams only, "
                       "and stream 'algorithmic' has generation tasks\n")
    assert not (tmp_path / "out").exists()
    path.write_text(GENERATIVE_SUITE.format(names='["replay", "labels-only"]'))
    assert main(["check", str(path)]) == 2
    assert "strategy 'replay+labels-only': 'labels-only' serves classification streams only" in capsys.readouterr().err
    path.write_text(GENERATIVE_SUITE.format(names='"naive"'))  # declares nothing: every kind
    assert main(["check", str(path)]) == 0
    (cell,) = parse_suite(make_suite(["labels-only"], stream_params=TWO_CLASS), "t.toml").cells
    assert run_cell(cell).status == "ok"  # a classification stream
    path.write_text(GENERATIVE_SUITE.format(names='"labels-only"'))
    from clbench.suite import load_suite

    (cell,) = load_suite(str(path)).cells
    res = run_cell(cell)  # alone, without the suite's preflight: the cell fails with the same line
    assert res.status == "failed" and res.row["error"] == (
        "strategy 'labels-only': serves classification streams only, and stream 'algorithmic' has generation tasks")


def test_serves_names_kinds_of_task(host):
    from clbench.suite import parse_suite
    from clbench.suiterun import preflight

    class Typo:
        serves = ("clasification",)

    _strategy(host, "typo", Typo)
    with pytest.raises(UserError, match="strategy 'typo' declares serves = \\('clasification',\\), but 'clasification' "
                                        "is not a kind of task \\(kinds: classification, generation\\)"):
        preflight(parse_suite(make_suite(["typo"], stream_params=TWO_CLASS), "t.toml"))


def _strategy(host, name, cls):
    class Plugin:
        @clbench.hookimpl
        def register_strategies(self, register):
            register(name, cls)

    host.register(Plugin(), name=f"plugin-{name}")


def test_hook_before_task(host):
    seen = []

    class Marks:
        @clbench.hookimpl
        def before_task(self, cell, task):
            seen.append((cell.task_index, task is cell.tasks[cell.task_index], cell.model.training, cell.optimizer))

    _strategy(host, "marks", Marks)
    _run(host, ["marks"])
    assert [s[:3] for s in seen] == [(0, True, True), (1, True, True)]
    assert seen[0][3] is None  # the optimizer is built after it


def test_hook_after_task(host):
    seen = []

    class Marks:
        @clbench.hookimpl
        def after_task(self, cell, task):
            seen.append((cell.task_index, task is cell.tasks[cell.task_index], cell.steps_in_task,
                         cell.optimizer.state_dict()["state"][0]["step"].item()))

    _strategy(host, "marks", Marks)
    _run(host, ["marks"], training={"epochs": 2})
    assert seen == [(0, True, 2, 2), (1, True, 2, 2)]  # after the task's steps: one batch of 128 per epoch


def test_hook_train_data(host):
    class Nothing:
        @clbench.hookimpl
        def train_data(self, cell, task):
            return task.train.empty()

    _strategy(host, "nothing", Nothing)
    res = _run(host, ["nothing"])
    assert res.row["examples_seen"] == 0
    acc = [m["value"] for m in res.measurements if m["metric"] == "acc"]
    assert acc[:2] == acc[2:4] == acc[4:6]  # nothing trained: every evaluation is the initial one


def test_hook_trainable_parameters(host):
    class HeadOnly:
        @clbench.hookimpl
        def trainable_parameters(self, cell):
            return list(cell.model.head.parameters())

        @clbench.hookimpl
        def after_task(self, cell, task):
            self.blocks = [p.detach().clone() for p in cell.model.blocks.parameters()]

    obj = HeadOnly()
    _strategy(host, "head-only", lambda: obj)
    res = _run(host, ["head-only"])
    assert res.row["trainable_params"] == 32 * 10 + 10  # the head: d_model 32, the ten digits
    from clbench.loop import build_model, build_stream
    from clbench.suite import parse_suite

    (cell,) = parse_suite(make_suite(["naive"], stream_params=TWO_CLASS), "t.toml").cells
    fresh = build_model(cell, build_stream(cell))
    assert all(torch.equal(a, b) for a, b in zip(obj.blocks, fresh.blocks.parameters()))


def test_hook_fit_task(host):
    class OwnLoop:
        calls = 0

        @clbench.hookimpl
        def fit_task(self, cell, task, data):
            OwnLoop.calls += 1
            with torch.no_grad():
                cell.model.head.bias.fill_(0.0)
                cell.model.head.bias[task.classes[0]] = 100.0  # "learned": always say this task's class
            return True

    rec = Recorder()
    _strategy(host, "own-loop", OwnLoop)
    res = _run(host, ["own-loop"], observers=[rec])
    assert OwnLoop.calls == 2 and res.row["examples_seen"] == 0
    assert not any(c == "after_step" for c, _ in rec.calls)
    R = {(m["train_task"], m["eval_task"]): m["value"] for m in res.measurements if m["metric"] == "acc"}
    assert R[(0, 0)] == 1.0 and R[(0, 1)] == 0.0 and R[(1, 0)] == 0.0 and R[(1, 1)] == 1.0


def test_hook_train_batch(host):
    class Twice:
        @clbench.hookimpl
        def train_batch(self, cell, batch):
            from clbench.tasks import Examples

            return Examples.cat([batch, batch])

    _strategy(host, "twice", Twice)
    plain, twice = _run(host, ["naive"]), _run(host, ["twice"])
    assert twice.row["examples_seen"] == 2 * plain.row["examples_seen"] > 0


def test_hook_loss_terms(host):
    class Plus:
        @clbench.hookimpl
        def loss_terms(self, cell, batch, logits, loss):
            assert logits.shape == (len(batch), 10) and loss.dim() == 0
            return logits.new_tensor(7.0)  # no gradient: training is unchanged, the loss is not

    _strategy(host, "plus", Plus)
    plain, plus = _run(host, ["naive"]), _run(host, ["plus"])
    lp = [m["value"] for m in plain.measurements if m["metric"] == "train_loss"]
    lq = [m["value"] for m in plus.measurements if m["metric"] == "train_loss"]
    np.testing.assert_allclose(np.array(lq) - np.array(lp), 7.0, rtol=1e-6)


def test_hook_after_backward(host):
    class Freeze:
        @clbench.hookimpl
        def after_backward(self, cell, batch):
            for p in cell.model.parameters():
                if p.grad is not None:
                    p.grad.zero_()

    _strategy(host, "freeze", Freeze)
    res = _run(host, ["freeze"], training={"optimizer": "sgd"})  # zero gradient, plain SGD: no change
    acc = [m["value"] for m in res.measurements if m["metric"] == "acc"]
    assert acc[:2] == acc[2:4] == acc[4:6]
    assert res.row["examples_seen"] > 0


def test_hook_after_step(host):
    class Count:
        steps = []

        @clbench.hookimpl
        def after_step(self, cell, step, loss):
            Count.steps.append((cell.task_index, step, loss.requires_grad))

    _strategy(host, "count", Count)
    _run(host, ["count"], training={"epochs": 2, "batch_size": 64})
    per_task = [sum(1 for t, *_ in Count.steps if t == i) for i in (0, 1)]
    assert per_task[0] == per_task[1] == 2 * 2  # 124 and 127 examples: 2 batches of 64, 2 epochs
    assert [s for _, s, _ in Count.steps] == list(range(1, 9)) and not any(g for *_, g in Count.steps)


def test_hook_before_eval(host):
    seen = []

    class Route:
        @clbench.hookimpl
        def before_eval(self, cell, task_index, task):
            assert task is cell.tasks[task_index] and not cell.model.training
            seen.append(task_index)

    _strategy(host, "route", Route)
    _run(host, ["route"])
    assert seen == [0, 1] * 3
