"""The mechanics of the built-in strategies, one by one, on a real cell context (split-digits,
a tiny model, fixed seeds): EWC's penalty, A-GEM's projection, SI's path integral, LwF's and
DER's distillation targets, replay's batches, GDumb's restart; and parameter checks."""

from __future__ import annotations

import pytest
import torch

from conftest import make_suite

from clbench.errors import UserError
from clbench.cell import CellContext
from clbench.loop import build_model, build_stream, make_optimizer, train_step
from clbench.suite import parse_suite
from clbench.strategies.ewc import empirical_fisher
from clbench.suiterun import preflight


def context(host, scenario: str = "class-incremental", seed: int = 0) -> CellContext:
    """A cell context as the loop builds it (without running the cell; no strategy on it)."""
    data = make_suite(["naive"], stream_params={"scenario": scenario, "patch_size": 4}, seeds=[seed])
    cell = parse_suite(data, "t.toml").cells[0]
    stream = build_stream(cell)
    return CellContext(cell, stream, build_model(cell, stream), torch.device("cpu"))


def start_task(ctx: CellContext, i: int) -> None:
    ctx.task_index, ctx.task = i, ctx.tasks[i]
    ctx.model.train()
    ctx.optimizer = make_optimizer(ctx.model.parameters(), ctx.config.training)


def train(ctx: CellContext, steps: int = 30, bs: int = 32, lr: float = 3e-3) -> None:
    """A few of the loop's steps on the current task (Adam at ``lr``, batches drawn at random)."""
    ctx.optimizer = torch.optim.Adam(ctx.model.parameters(), lr=lr)
    params = list(ctx.model.parameters())
    data = ctx.task.train
    for _ in range(steps):
        train_step(ctx, data[torch.randperm(len(data), generator=ctx.generator)[:bs]], params)


def strategy(host, name: str, **params):
    return host.get("strategies", name).obj(**params)


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_flat(model, flat: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(flat, model.parameters())


# ---------------------------------------------------------------------------------------- EWC


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_quadratically(host):
    ctx = context(host)
    ewc = strategy(host, "ewc", lambda_=50.0)
    start_task(ctx, 0)
    train(ctx)
    ewc.after_task(ctx, ctx.task)
    fisher, anchor = ewc.penalties[0]
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    assert all((f >= 0).all() for f in fisher.values())

    theta = flat_params(ctx.model)
    assert ewc.penalty(ctx.model).item() == 0.0
    d = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0)) * 1e-2
    values = []
    for s in (0.5, 1.0, 2.0, 4.0):
        set_flat(ctx.model, theta + s * d)
        values.append(ewc.penalty(ctx.model).item())
    assert values[1] > 0
    for s, v in zip((0.5, 1.0, 2.0, 4.0), values):
        assert v == pytest.approx(s**2 * values[1], rel=1e-4)
    # and it is λ/2 Σ F d², by hand
    set_flat(ctx.model, theta + d)
    F = torch.cat([fisher[n].reshape(-1) for n, _ in ctx.model.named_parameters()])
    assert values[1] == pytest.approx(50.0 / 2 * float((F * d**2).sum()), rel=1e-4)


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("scenario", ["class-incremental", "task-incremental"])
def test_ewc_fisher_is_the_mean_squared_per_example_gradient(host, scenario):
    """The vmap path and one backward pass per example give the same Fisher."""
    from clbench.strategies.ewc import _fisher_loop, _fisher_vmap

    ctx = context(host, scenario)
    start_task(ctx, 1)
    train(ctx, steps=5)
    ctx.model.eval()
    data = ctx.task.train[:40]
    params = {n: p for n, p in ctx.model.named_parameters()}
    a = {n: torch.zeros_like(p) for n, p in params.items()}
    b = {n: torch.zeros_like(p) for n, p in params.items()}
    _fisher_vmap(ctx, data, params, a, chunk=16)
    _fisher_loop(ctx, data, params, b)
    for n in params:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-9)


def test_online_ewc_keeps_one_decayed_fisher_anchored_at_the_latest_task(host):
    ctx = context(host)
    ewc = strategy(host, "ewc", lambda_=1.0, mode="online", gamma=0.5)
    start_task(ctx, 0)
    train(ctx, steps=10)
    ewc.after_task(ctx, ctx.task)
    f1 = {n: f.clone() for n, f in ewc.penalties[0][0].items()}
    start_task(ctx, 1)
    train(ctx, steps=10)
    ewc.after_task(ctx, ctx.task)
    assert len(ewc.penalties) == 1
    fisher, anchor = ewc.penalties[0]
    f2 = empirical_fisher(ctx, ctx.task.train, 1000)  # task 1's own Fisher (all its examples)
    for n, p in ctx.model.named_parameters():
        torch.testing.assert_close(fisher[n], 0.5 * f1[n] + f2[n], rtol=1e-4, atol=1e-10)
        assert torch.equal(anchor[n], p.detach())


# -------------------------------------------------------------------------------------- A-GEM


def test_agem_projection_never_points_against_the_memory_gradient():
    from clbench.strategies.agem import project

    gen = torch.Generator().manual_seed(0)
    conflicts = 0
    for _ in range(200):
        g, g_ref = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
        out = project(g, g_ref)
        assert torch.dot(out, g_ref) >= -1e-5 * g_ref.norm() * g.norm()
        if torch.dot(g, g_ref) < 0:
            conflicts += 1
            assert torch.dot(out, g_ref).abs() < 1e-4  # projected onto the plane ⟂ g_ref
            assert torch.dot(out, g) > 0  # and still a descent direction for the batch
        else:
            assert torch.equal(out, g)
    assert conflicts > 50


def test_agem_hook_projects_the_models_gradient(host):
    """After task 0, gradients of task-1 batches conflict with the memory's; after the hook the
    model's gradient has a non-negative dot product with the memory gradient."""
    ctx = context(host)
    agem = strategy(host, "agem", memory_size=64, sample_size=64)  # the whole memory: g_ref is fixed
    start_task(ctx, 0)
    train(ctx)
    agem.after_task(ctx, ctx.task)
    assert len(agem.memory) == 64 and ctx.info["buffer_size"] == 64
    start_task(ctx, 1)
    params = list(ctx.model.parameters())
    mem = agem.memory.data
    g_ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ctx.loss(mem), params)])
    conflicts = 0
    for k in range(6):
        batch = ctx.task.train[k * 16 : (k + 1) * 16]
        ctx.optimizer.zero_grad()
        ctx.loss(batch).backward()
        before = torch.cat([p.grad.reshape(-1) for p in params])
        agem.after_backward(ctx, batch)
        after = torch.cat([p.grad.reshape(-1) for p in params])
        assert torch.dot(after, g_ref) >= -1e-5 * after.norm() * g_ref.norm()
        if torch.dot(before, g_ref) < 0:
            conflicts += 1
            assert not torch.equal(before, after)
    assert conflicts > 0, "no batch conflicted with the memory: the test shows nothing"


# ----------------------------------------------------------------------------------------- SI


def test_si_path_integral_accounts_for_the_loss_drop(host):
    """With small plain-SGD steps on one fixed batch, Σ ω equals the drop of the loss (to first
    order), and the importance and penalty are in place after the task."""
    ctx = context(host)
    si = strategy(host, "si", c=0.5)
    start_task(ctx, 0)
    si.before_task(ctx, ctx.task)
    batch = ctx.task.train[:64]
    opt = torch.optim.SGD(ctx.model.parameters(), lr=0.005)
    ctx.optimizer = opt
    first = ctx.loss(batch).item()
    for s in range(60):
        opt.zero_grad()
        ctx.loss(batch).backward()
        si.after_backward(ctx, batch)
        opt.step()
        si.after_step(ctx, s, None)
    drop = first - ctx.loss(batch).item()
    assert drop > 0.5
    total = sum(float(w.sum()) for w in si.w.values())
    assert total == pytest.approx(drop, rel=0.05)
    si.after_task(ctx, ctx.task)
    assert si.loss_terms(ctx, batch, None, None).item() == 0.0  # at the anchor
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(1e-2)
    assert si.loss_terms(ctx, batch, None, None).item() > 0


# ---------------------------------------------------------------------------------- LwF, DER


@pytest.mark.parametrize("scenario", ["class-incremental", "task-incremental"])
def test_lwf_targets_are_the_previous_model_so_its_gradient_starts_at_zero(host, scenario):
    ctx = context(host, scenario)
    lwf = strategy(host, "lwf")
    start_task(ctx, 0)
    train(ctx, steps=10)
    start_task(ctx, 2)
    lwf.before_task(ctx, ctx.task)
    assert len(lwf.groups) == (2 if scenario == "task-incremental" else 1)
    assert sorted(torch.cat(lwf.groups).tolist()) == [0, 1, 2, 3]
    batch = ctx.task.train[:32]
    logits = ctx.logits(batch)
    term = lwf.loss_terms(ctx, batch, logits, None)
    grads = torch.autograd.grad(term, list(ctx.model.parameters()), allow_unused=True)
    assert max(float(g.abs().max()) for g in grads if g is not None) < 1e-6
    train(ctx, steps=5)  # the model moves away: the term now pulls back
    term = lwf.loss_terms(ctx, batch, ctx.logits(batch), None)
    grads = torch.autograd.grad(term, list(ctx.model.parameters()), allow_unused=True)
    assert max(float(g.abs().max()) for g in grads if g is not None) > 1e-4


@pytest.mark.parametrize("scenario", ["class-incremental", "task-incremental"])
def test_der_stores_logits_and_matches_them(host, scenario):
    ctx = context(host, scenario)
    der = strategy(host, "der++", memory_size=50)
    start_task(ctx, 0)
    batch = ctx.task.train[:32]
    assert der.loss_terms(ctx, batch, ctx.logits(batch), None) is None  # empty memory
    assert len(der.memory) == 32 and ctx.info["buffer_size"] == 32
    torch.testing.assert_close(der.memory.extras["logits"], ctx.logits(der.memory.data))
    # unchanged model: the logit term is 0 (finite even with task-incremental -inf entries)
    der.beta = 0.0
    term = der.loss_terms(ctx, ctx.task.train[32:64], ctx.logits(ctx.task.train[32:64]), None)
    assert torch.isfinite(term) and term.item() == pytest.approx(0.0, abs=1e-10)
    train(ctx, steps=5)
    term = der.loss_terms(ctx, ctx.task.train[64:96], ctx.logits(ctx.task.train[64:96]), None)
    assert term.item() > 0 and len(der.memory) == 50


# ------------------------------------------------------------------------------ replay, GDumb


@pytest.mark.parametrize("update", ["online", "task-end"])
def test_replay_mixes_memory_into_each_batch(host, update):
    ctx = context(host)
    replay = strategy(host, "replay", memory_size=40, ratio=0.5, update=update)
    start_task(ctx, 0)
    batch = ctx.task.train[:32]
    first = replay.train_batch(ctx, batch)
    assert first is None  # nothing to mix in yet
    replay.train_batch(ctx, ctx.task.train[32:64])
    replay.after_task(ctx, ctx.task)
    assert len(replay.memory) == 40 and ctx.info["buffer_size"] == 40
    start_task(ctx, 1)
    batch = ctx.task.train[:32]
    mixed = replay.train_batch(ctx, batch)
    assert len(mixed) == 32 + 16
    assert torch.equal(mixed.x[:32], batch.x)
    assert set(mixed.y[32:].tolist()) <= {0, 1}  # memory of task 0
    if update == "task-end":
        assert replay.memory.seen == len(ctx.stream.tasks[0].train)
    else:
        assert replay.memory.seen == 64 + 32


def test_gdumb_retrains_from_the_initial_weights_on_a_balanced_memory(host):
    ctx = context(host)
    gdumb = strategy(host, "gdumb", memory_size=60, repeat=2)
    initial = flat_params(ctx.model).clone()
    for i in range(3):
        start_task(ctx, i)
        gdumb.before_task(ctx, ctx.task)
        assert torch.equal(flat_params(ctx.model), initial)
        data = gdumb.train_data(ctx, ctx.task)
        assert len(data) == 2 * len(gdumb.memory)
        counts = gdumb.memory.class_counts()
        assert sorted(counts) == list(range(2 * (i + 1)))
        assert max(counts.values()) - min(counts.values()) <= 1
        train(ctx, steps=3)
    assert ctx.info["buffer_size"] == 60


# --------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("replay", {"memory_size": 0}, "parameter 'memory_size' must be a positive integer, got 0"),
        ("replay", {"policy": "fifo"}, "parameter 'policy' must be 'reservoir' | 'class-balanced', got 'fifo'"),
        ("replay", {"ratio": -1.0}, "parameter 'ratio' must be a positive number, got -1.0"),
        ("replay", {"update": "sometimes"}, "parameter 'update' must be 'online' | 'task-end'"),
        ("ewc", {"lambda": -1.0}, "parameter 'lambda' must be a number >= 0, got -1.0"),
        ("ewc", {"lambda": "big"}, "parameter 'lambda' must be float, got 'big'"),
        ("ewc", {"gamma": 0.9}, "parameter 'gamma' must be 1.0 unless mode is 'online', got 0.9"),
        ("ewc", {"mode": "online", "gamma": 1.5}, "parameter 'gamma' must be in (0, 1], got 1.5"),
        ("ewc", {"fisher_samples": 0}, "parameter 'fisher_samples' must be a positive integer, got 0"),
        ("ewc", {"lamda": 1.0}, "has no parameter 'lamda' (it takes: fisher_samples, gamma, lambda, mode)"),
        ("lwf", {"temperature": 0.0}, "parameter 'temperature' must be a positive number, got 0.0"),
        ("lwf", {"alpha": -0.5}, "parameter 'alpha' must be a number >= 0, got -0.5"),
        ("agem", {"sample_size": 0}, "parameter 'sample_size' must be a positive integer, got 0"),
        ("der", {"alpha": -1.0}, "parameter 'alpha' must be a number >= 0, got -1.0"),
        ("der++", {"beta": -1.0}, "parameter 'beta' must be a number >= 0, got -1.0"),
        ("der", {"beta": 1.0}, "has no parameter 'beta'"),
        ("si", {"xi": 0.0}, "parameter 'xi' must be a positive number, got 0.0"),
        ("si", {"c": -1.0}, "parameter 'c' must be a number >= 0, got -1.0"),
        ("gdumb", {"repeat": 0}, "parameter 'repeat' must be a positive integer, got 0"),
        ("gdumb", {"memory_size": -5}, "parameter 'memory_size' must be a positive integer, got -5"),
    ],
)
def test_a_wrong_parameter_is_one_line_naming_it(host, name, params, message):
    data = make_suite([{"name": name, "params": params}])
    with pytest.raises(UserError) as exc:
        preflight(parse_suite(data, "bad.toml"))
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith("bad.toml: ")
    assert f"strategy '{name}'" in text
    assert message in text


def test_lambda_is_spelled_without_underscore_in_suites(host):
    suite = parse_suite(make_suite([{"name": "ewc", "params": {"lambda": 7.0}}]), "t.toml")
    (name, params), = suite.cells[0].strategy.parts
    assert params["lambda_"] == 7.0
    assert host.get("strategies", "ewc").obj(**params).lambda_ == 7.0
