"""LoRA (strategies/lora.py): the mechanics, the numbers against peft, and the effect on split-digits."""

import copy
import warnings

import pytest
import torch

import clbench
from clbench.errors import UserError
from clbench.models import ModelConfig, Transformer
from clbench.results import accuracy_matrix
from clbench.loop import run_cell
from clbench.strategies.lora import LoRALinear, inject, lora_layers, orthogonality
from clbench.suite import parse_suite
from clbench.suiterun import preflight
from conftest import TINY_MODEL, make_suite


def one_cell(host, strategy, scenario="task-incremental", stream_params=None, **kw):
    stream_params = stream_params or {"patch_size": 4, "scenario": scenario}
    data = make_suite([strategy], stream_params=stream_params, **kw)
    return parse_suite(data, "test.toml").cells[0]


def adapted_count(d: int, n_layers: int, mlp_ratio: int, rank: int, targets=("qkv", "proj", "fc")) -> int:
    """LoRA parameters of clbench's Transformer, from the shapes: rank · (in + out) per layer."""
    h = mlp_ratio * d
    shapes = {"qkv": (d, 3 * d), "attn.proj": (d, d), "fc": (d, h), "mlp.proj": (h, d), "q": (d, d), "v": (d, d)}
    names = [t for t in targets if t != "proj"] + (["attn.proj", "mlp.proj"] if "proj" in targets else [])
    return n_layers * sum(rank * sum(shapes[n]) for n in names)


class Watch:
    """An observer: snapshots every parameter before the first task, and checks at the end of
    each task what the optimizer trained."""

    __test__ = False

    def __init__(self):
        self.before = None
        self.trained: list[set[int]] = []
        self.grads_outside: list[int] = []
        self.model = None

    @clbench.hookimpl
    def before_task(self, cell, task):
        # observers are registered after strategies, so pluggy calls this before LoRA's before_task
        if self.before is None:
            self.model = cell.model
            self.before = [(name, p, p.detach().clone()) for name, p in cell.model.named_parameters()]

    @clbench.hookimpl
    def after_task(self, cell, task):
        opt_params = {id(p) for g in cell.optimizer.param_groups for p in g["params"]}
        self.trained.append(opt_params)
        self.grads_outside.append(
            sum(1 for p in cell.model.parameters() if p.grad is not None and id(p) not in opt_params)
        )


# -- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, message",
    [
        ({"mode": "lora"}, "parameter 'mode' must be"),
        ({"rank": 0}, "strategy 'lora': parameter 'rank' must be >= 1, got 0"),
        ({"alpha": 1.5, "rnak": 4}, "has no parameter 'rnak'"),
        ({"target_modules": ["qkv", "attention"]}, "parameter 'target_modules' must be"),
        ({"target_modules": ["qkv", "q"]}, "parameter 'target_modules' must be without 'q' when it names 'qkv'"),
        ({"target_modules": []}, "parameter 'target_modules' must be at least one projection, got \\[\\]"),
        ({"mode": "seq", "lambda_orth": 0.1}, "parameter 'lambda_orth' must be left out unless mode is 'olora'"),
    ],
)
def test_a_wrong_parameter_is_one_line_naming_it(host, params, message):
    with pytest.raises(UserError, match=message) as exc:  # as `clbench run` checks a suite
        preflight(parse_suite(make_suite([{"name": "lora", "params": params}]), "s.toml"))
    assert "\n" not in str(exc.value) and str(exc.value).count("strategy 'lora'") == 1


def test_the_aliases_fix_the_mode(host):
    for name, mode in (("seq-lora", "seq"), ("inc-lora", "inc"), ("o-lora", "olora")):
        assert host.get("strategies", name).obj().mode == mode
        with pytest.raises(UserError, match="has no parameter 'mode'"):
            parse_suite(make_suite([{"name": name, "params": {"mode": "seq"}}]), "s.toml")
    with pytest.raises(UserError, match="has no parameter 'lambda_orth'"):
        parse_suite(make_suite([{"name": "inc-lora", "params": {"lambda_orth": 1.0}}]), "s.toml")


def test_per_task_adapters_are_refused_where_no_task_id_is_given_at_test_time(host):
    cell = one_cell(host, "lora", scenario="class-incremental")
    res = run_cell(cell)  # run alone (no suite's preflight): that cell's failure
    assert res.status == "failed" and "only task-incremental streams" in res.row["error"]
    assert "seq-lora" in res.row["error"] and "\n" not in res.row["error"]


def test_per_task_adapters_on_a_class_incremental_stream_stop_the_suite_before_it_runs(host, tmp_path, run_suite_dict):
    suite = make_suite(["naive", "lora"], stream_params={"patch_size": 4, "scenario": "class-incremental"})
    with pytest.raises(UserError, match=r"strategy 'lora': .*only task-incremental streams"):
        run_suite_dict(suite, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused in preflight: not even naive's cell ran


# -- mechanics ----------------------------------------------------------------------------------


def test_per_task_lora_leaves_every_base_weight_unchanged_and_trains_only_adapters(host):
    rank = 4
    cell = one_cell(host, {"name": "lora", "params": {"rank": rank}}, seeds=[1])
    watch = Watch()
    result = run_cell(cell, observers=[watch])
    assert result.status == "ok", result.row["traceback"]

    # bit for bit: every parameter the model had before LoRA, the original head included (in
    # per-task mode each task trains its own copy of the head)
    for name, p, before in watch.before:
        assert torch.equal(p.detach(), before), name
        assert not p.requires_grad and p.grad is None, name

    model = watch.model
    layers = lora_layers(model)
    assert len(layers) == 4 * TINY_MODEL["n_layers"]
    for i, opt_params in enumerate(watch.trained):
        expected = [p for layer in layers for p in layer.parameters_of(f"task{i}")]
        expected += list(model.head.copies[f"task{i}"].parameters())
        assert opt_params == {id(p) for p in expected}, f"task {i}"
    assert watch.grads_outside == [0] * 5

    d = TINY_MODEL["d_model"]
    head = d * 10 + 10
    n = adapted_count(d, TINY_MODEL["n_layers"], 4, rank) + head
    assert n == sum(p.numel() for p in expected)
    assert result.row["trainable_params"] == n == 2048 + 330


def test_shared_modes_train_the_adapter_and_the_head(host):
    cell = one_cell(host, {"name": "inc-lora", "params": {"rank": 2, "target_modules": ["q", "v"]}}, scenario="class-incremental")
    watch = Watch()
    result = run_cell(cell, observers=[watch])
    assert result.status == "ok", result.row["traceback"]
    for name, p, before in watch.before:
        if name.startswith("head."):
            assert not torch.equal(p.detach(), before), name  # the shared head trains
        else:
            assert torch.equal(p.detach(), before), name
    layers = lora_layers(watch.model)
    assert [layer.parts for layer in layers] == [{"q": (0, 32), "v": (64, 96)}]
    assert layers[0].active == [f"task{i}" for i in range(5)]  # inc: every adapter in the forward pass
    # each task trains only its new adapter: the earlier ones are frozen
    for i, opt_params in enumerate(watch.trained):
        new = {id(p) for p in layers[0].parameters_of(f"task{i}")} | {id(p) for p in watch.model.head.parameters()}
        assert opt_params == new
    assert result.row["trainable_params"] == adapted_count(32, 1, 4, 2, ("q", "v")) + 330 == 256 + 330


def test_q_and_v_slices_of_the_fused_qkv_layer():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 24)
    layer = LoRALinear(base, {"q": (0, 8), "v": (16, 24)}, rank=2, alpha=4.0)
    layer.add("a")
    for p in layer.lora_B.values():
        torch.nn.init.normal_(p)
    layer.active = ["a"]
    x = torch.randn(3, 5, 8)
    y = layer(x)
    want = base(x).clone()
    for part, (s, e) in layer.parts.items():
        want[..., s:e] += 2.0 * x @ layer.lora_A[f"a_{part}"].T @ layer.lora_B[f"a_{part}"].T
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(y[..., 8:16], base(x)[..., 8:16], rtol=0, atol=0)  # k untouched


def test_olora_orthogonality_term_decreases_during_training(host):
    """O-LoRA's penalty drives each new adapter's A towards orthogonality with the earlier ones;
    IncLoRA (the same adapters without the penalty) shows what happens without it."""

    class Orth:
        __test__ = False

        def __init__(self):
            self.values: dict[int, list[float]] = {}

        @clbench.hookimpl
        def after_step(self, cell, step, loss):
            if cell.task_index >= 1:
                self.values.setdefault(cell.task_index, []).append(orthogonality(cell.model).item())

    runs = {}
    same = {"rank": 4, "alpha": 16.0, "target_modules": ["qkv", "proj", "fc"], "dropout": 0.0}
    for name in ("o-lora", "inc-lora"):
        cell = one_cell(
            host,
            {"name": name, "params": same},
            scenario="class-incremental",
            stream_params={"patch_size": 4, "scenario": "class-incremental", "n_tasks": 3},
            training={"epochs": 5, "batch_size": 32},
        )
        obs = Orth()
        assert run_cell(cell, observers=[obs]).status == "ok"
        runs[name] = obs.values
    for task, values in runs["o-lora"].items():
        assert values[0] > 0
        assert values[-1] < 0.6 * values[0], (task, values[0], values[-1])
        assert values[-1] < 0.5 * runs["inc-lora"][task][-1], task


# -- against peft -------------------------------------------------------------------------------


def test_adapters_match_peft_numbers(host):
    """Our LoRALinear against peft's LoRA on the same Transformer, the same initial adapters and
    the same optimizer: forward, one adapter trained, then a second adapter trained on top of the
    frozen first (IncLoRA)."""
    peft = pytest.importorskip("peft")
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=32, n_layers=2, n_heads=2), input_kind="patches", input_dim=16, n_classes=10)
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    targets, rank, alpha = ["qkv", "proj", "fc"], 4, 8.0
    ours_layers = inject(ours, targets, rank, alpha)
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)

    def add(name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns that a model gets a second adapter
            peft.inject_adapter_in_model(cfg, theirs, adapter_name=name)
        for layer in ours_layers:
            layer.add(name)
        module_names = {m: n for n, m in ours.named_modules()}
        for layer in ours_layers:
            p = theirs.get_submodule(module_names[layer])
            assert isinstance(p, LoraLayer)
            torch.nn.init.normal_(p.lora_B[name].weight, std=0.02)  # non-zero B: a real update
            layer.lora_A[name].data.copy_(p.lora_A[name].weight)
            layer.lora_B[name].data.copy_(p.lora_B[name].weight)
        return module_names

    def train(active, new, steps=15):
        peft_layers = [m for m in theirs.modules() if isinstance(m, LoraLayer)]
        for m in peft_layers:
            m.set_adapter(active)
        for layer in ours_layers:
            layer.active = list(active)
        groups = []
        for net, params_of in (
            (ours, lambda: [p for layer in ours_layers for p in layer.parameters_of(new)]),
            (theirs, lambda: [p for m in peft_layers for p in (m.lora_A[new].weight, m.lora_B[new].weight)]),
        ):
            for p in net.parameters():
                p.requires_grad_(False)
            params = params_of() + list(net.head.parameters())
            for p in params:
                p.requires_grad_(True)
            groups.append(torch.optim.Adam(params, lr=1e-2))
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            x = torch.randn(16, 4, 16, generator=gen)
            y = torch.randint(0, 10, (16,), generator=gen)
            for net, opt in zip((ours, theirs), groups):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()

    x = torch.randn(8, 4, 16)
    base_out = model(x)
    add("a")
    for layer in ours_layers:
        layer.active = ["a"]  # peft's first adapter is active from the start
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)  # same ops, same numbers
    assert not torch.allclose(ours(x), base_out)
    train(["a"], "a")
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    add("b")
    train(["a", "b"], "b")
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    # the base weights of both are still the original ones
    want = {n: p for n, p in model.named_parameters() if not n.startswith("head.")}
    for net, infix in ((ours, ".base."), (theirs, ".base_layer.")):
        got = {
            n.replace(infix, "."): p
            for n, p in net.named_parameters()
            if "lora_" not in n and not n.startswith("head.")
        }
        assert got.keys() == want.keys()
        assert all(torch.equal(got[n], want[n]) for n in want)


# -- effect on split-digits ---------------------------------------------------------------------


def test_per_task_adapters_do_not_forget_and_joint_stays_above(run_suite_dict):
    data = make_suite(
        ["naive", "lora", {"name": "joint", "params": {"repeat": 1}}],
        stream_params={"patch_size": 4, "scenario": "task-incremental"},
        training={"epochs": 4, "batch_size": 32},
    )
    run, t = run_suite_dict(data)
    assert all(r.status == "ok" for r in run.ran), [r.row["error"] for r in run.ran]
    ids = t.cells.set_index("strategy")["run_id"]
    R, _ = accuracy_matrix(t.measurements, ids["lora"])
    for j in range(5):  # R[i, j] for i >= j: exactly the accuracy right after learning task j
        assert (R[j:, j] == R[j, j]).all(), R
    s = t.summary.set_index("strategy")
    assert s.loc["lora", "bwt"] == 0.0 and s.loc["lora", "forgetting"] == 0.0
    assert s.loc["naive", "forgetting"] > 0.1
    assert s.loc["lora", "acc"] > s.loc["naive", "acc"] + 0.1
    assert s.loc["joint", "acc"] > s.loc["lora", "acc"]


def test_lora_and_si_give_the_same_cell_in_either_order_and_si_sees_the_adapters(run_suite_dict, monkeypatch):
    """pluggy calls the latest registered plugin first; LoRA (``changes_model``) runs first in
    both orders, so SI snapshots and anchors the adapters it trains, not the frozen base."""
    from clbench import loop

    made = []
    real = loop.make_strategies

    def spy(cell):
        out = real(cell)
        made.append(dict(out))
        return out

    monkeypatch.setattr(loop, "make_strategies", spy)
    params = {"seq-lora": {"rank": 4}, "si": {"c": 100.0}}
    data = make_suite([{"name": ["seq-lora", "si"], "params": params},
                       {"name": ["si", "seq-lora"], "params": params}], training={"epochs": 2})
    _, tables = run_suite_dict(data)
    assert set(tables.cells["status"]) == {"ok"}
    m = tables.measurements.sort_values(["train_task", "eval_task", "metric"])
    a, b = (m[m["strategy"] == s]["value"].to_numpy() for s in ("seq-lora+si", "si+seq-lora"))
    assert len(a) and a.tolist() == b.tolist()
    for objs in made:
        anchor = objs["si"].anchor
        assert any("lora_A" in n for n in anchor) and any("lora_B" in n for n in anchor)
        assert not any(n.endswith("base.weight") for n in anchor)  # the frozen base is not SI's


def test_o_lora_defaults_are_the_o_lora_repositorys_adapter(host):
    s = host.get("strategies", "o-lora").obj()
    assert (s.rank, s.alpha, s.dropout, s.targets) == (8, 32.0, 0.1, ("q", "v"))
    model = Transformer(ModelConfig(**TINY_MODEL), input_kind="patches", input_dim=16, n_classes=4)
    layers = inject(model, s.targets, s.rank, s.alpha, s.dropout)
    assert layers and all(set(layer.parts) == {"q", "v"} for layer in layers)


def test_dropout_draws_a_mask_per_part_of_a_fused_layer():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(6, 6), {"q": (0, 3), "v": (3, 6)}, rank=6, alpha=6.0, dropout=0.5)
    layer.add("a")
    with torch.no_grad():
        for k in ("a_q", "a_v"):
            layer.lora_A[k].copy_(torch.eye(6))
        layer.lora_B["a_q"].copy_(torch.eye(6)[:3])
        layer.lora_B["a_v"].copy_(torch.eye(6)[:3])  # both slices read the same 3 inputs
    layer.active = ["a"]
    layer.train()
    x = torch.ones(200, 6)
    delta = layer(x) - layer.base(x)  # each slice is its dropped-out copy of x[:, :3]
    q_kept, v_kept = delta[:, :3] != 0, delta[:, 3:] != 0
    assert q_kept.any() and (q_kept != v_kept).any()  # one mask for both: the same positions kept
