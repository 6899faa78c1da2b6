"""The Avalanche bridge: streams both ways, ``avalanche:*`` strategies in clbench's runner, and
cross-checks of clbench against Avalanche (metrics, the EWC penalty and Fisher, a naive run).

Importing Avalanche takes tens of seconds on a busy machine; this module imports it once."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clbench.errors import UserError
from clbench.plugins.avalanche import pack, stream_from_benchmark, unpack
from clbench.results import metrics
from clbench.tasks import Examples

from conftest import make_suite

avalanche = pytest.importorskip("avalanche")


def matrix(result) -> np.ndarray:
    T = result.row["n_tasks"]
    R = np.full((T, T), np.nan)
    for m in result.measurements:
        if m["metric"] == "acc" and m["train_task"] >= 0:
            R[m["train_task"], m["eval_task"]] = m["value"]
    return R


def run(host, strategies, **kw):
    from clbench.loop import run_cell
    from clbench.suite import parse_suite

    suite = parse_suite(make_suite(strategies, **kw), "test-suite.toml")
    return [run_cell(cell) for cell in suite.cells]


TWO_TASKS = {"patch_size": 4, "n_tasks": 2}
LEARNS = {"epochs": 3, "lr": 3e-3, "batch_size": 16}  # enough for the tiny model to learn each task well


# -- packing and streams ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tokens", "patches"])
def test_pack_round_trip(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 50, (5, 7), generator=g) if kind == "tokens" else torch.rand(5, 7, 3, generator=g)
    ex = Examples(x, torch.arange(5), torch.tensor([7, 3, 1, 7, 5]), torch.tensor([0, 1, 2, 3, 4]))
    xp = pack(ex, 9)
    assert xp.shape[1] == 11
    x2, lengths, t = unpack(xp)
    assert torch.equal(x2[:, :7], x) and not x2[:, 7:].any()
    assert torch.equal(lengths, ex.lengths) and torch.equal(t, ex.t)


def _tensor_benchmark(xs_train, ys_train, xs_test, ys_test, task_labels=None):
    from avalanche.benchmarks.scenarios import benchmark_from_datasets
    from avalanche.benchmarks.utils.classification_dataset import (
        _make_taskaware_tensor_classification_dataset as tensor_dataset,
    )

    tl = task_labels or [0] * len(xs_train)
    return benchmark_from_datasets(
        train=[tensor_dataset(x, y, targets=y, task_labels=t) for x, y, t in zip(xs_train, ys_train, tl)],
        test=[tensor_dataset(x, y, targets=y, task_labels=t) for x, y, t in zip(xs_test, ys_test, tl)],
    )


def test_stream_from_benchmark_images_become_the_digits_patches():
    """8×8 one-channel images through the adapter give exactly split-digits' patch sequences."""
    from clbench.tasks.digits import split_digits

    ref = split_digits(n_tasks=2, patch_size=2)
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)
    y = torch.from_numpy(d.target.astype(np.int64))
    parts = [(images[(y == 0) | (y == 1)], y[(y == 0) | (y == 1)]), (images[(y == 2) | (y == 3)], y[(y == 2) | (y == 3)])]
    bench = _tensor_benchmark(
        [p[0][:, None] for p in parts], [p[1] for p in parts], [p[0][:10, None] for p in parts], [p[1][:10] for p in parts]
    )
    stream = stream_from_benchmark(bench, patch_size=2, name="av")
    assert stream.scenario == "class-incremental" and stream.input_kind == "patches"
    assert stream.labels == ("0", "1", "2", "3") and stream.input_dim == 4 and stream.max_len == 16
    assert [t.classes for t in stream.tasks] == [(0, 1), (2, 3)]
    assert len(stream.tasks[1].train) == len(parts[1][0]) and len(stream.tasks[1].test) == 10
    assert stream.tasks[1].train.t.eq(1).all() and stream.tasks[1].train.lengths.eq(16).all()
    # the same image gives the same patches as the built-in stream
    from clbench.tasks.digits import _patches

    assert torch.equal(stream.tasks[0].train.x, torch.from_numpy(_patches(parts[0][0].numpy(), 2)))
    assert ref.tasks[0].train.x.shape[1:] == stream.tasks[0].train.x.shape[1:]
    # reordering, and task labels make it task-incremental
    rev = stream_from_benchmark(bench, patch_size=2, order=[1, 0])
    assert [t.classes for t in rev.tasks] == [(2, 3), (0, 1)] and rev.tasks[0].train.t.eq(0).all()
    tl = _tensor_benchmark([p[0][:, None] for p in parts], [p[1] for p in parts], [p[0][:5, None] for p in parts], [p[1][:5] for p in parts], task_labels=[0, 1])
    assert stream_from_benchmark(tl, patch_size=2).scenario == "task-incremental"
    with pytest.raises(UserError, match="patch_size 3"):
        stream_from_benchmark(bench, patch_size=3)


def test_stream_from_benchmark_tokens_take_lengths_from_padding():
    x = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [4, 0, 9, 0]])
    y = torch.tensor([0, 1, 0])
    bench = _tensor_benchmark([x], [y], [x], [y])
    stream = stream_from_benchmark(bench)
    assert stream.input_kind == "tokens" and stream.input_dim == 10
    assert stream.tasks[0].train.lengths.tolist() == [3, 1, 3]
    assert stream.scenario == "domain-incremental"  # one experience: every task has the same classes


def test_benchmark_from_stream_round_trip():
    """clbench stream -> Avalanche benchmark (packed) holds the same examples."""
    from clbench.plugins.avalanche import benchmark_from_stream
    from clbench.plugins.avalanche import _tensors
    from clbench.tasks.digits import split_digits

    stream = split_digits(n_tasks=2, patch_size=4, scenario="task-incremental")
    bench = benchmark_from_stream(stream)
    assert len(bench.train_stream) == 2 and len(bench.test_stream) == 2
    xp, y, t = _tensors(bench.train_stream[1].dataset)
    x, lengths, pos = unpack(xp)
    assert torch.equal(x, stream.tasks[1].train.x) and torch.equal(y, stream.tasks[1].train.y)
    assert t.eq(1).all() and pos.eq(1).all()  # task-incremental: Avalanche task label = position


# -- metrics: clbench against Avalanche's forgetting and BWT ---------------------------------

# R[i, j]: accuracy on task j after training task i; multiples of 1/20 so a batch of 20
# examples gives each exactly. Task 0 improves after task 1, then drops: the max-based
# forgetting and Avalanche's first-minus-last differ on it.
R = np.array(
    [
        [0.90, 0.10, 0.05],
        [0.95, 0.80, 0.00],
        [0.50, 0.60, 0.85],
    ]
)


def avalanche_stream_metrics(R: np.ndarray) -> dict[str, float]:
    """Feed R to Avalanche's StreamForgetting, StreamBWT and ExperienceForgetting plugin metrics
    through the callbacks they use: after training experience i, an evaluation on every
    experience j whose predictions are right on a fraction R[i, j] of 20 examples."""
    from avalanche.evaluation.metrics import ExperienceForgetting, StreamBWT, StreamForgetting

    ms = {"forgetting": StreamForgetting(), "bwt": StreamBWT(), "exp": ExperienceForgetting()}
    T, n = R.shape[0], 20
    out = {}
    for i in range(T):
        train_exp = SimpleNamespace(current_experience=i)
        for m in ms.values():
            m.before_training_exp(SimpleNamespace(experience=train_exp))
        strategy = SimpleNamespace(clock=SimpleNamespace(train_iterations=i), is_training=False, is_eval=True)
        for m in ms.values():
            m.before_eval(strategy)
        for j in range(T):
            k = int(round(R[i, j] * n))
            y = torch.zeros(n, dtype=torch.long)
            logits = torch.zeros(n, 2)
            logits[k:, 1] = 1.0  # the first k are right
            strategy.experience = SimpleNamespace(
                current_experience=j, task_labels=[0], origin_stream=SimpleNamespace(name="test")
            )
            strategy.mb_y, strategy.mb_output, strategy.mb_task_id = y, logits, torch.zeros(n, dtype=torch.long)
            for m in ms.values():
                m.before_eval_exp(strategy)
                m.after_eval_iteration(strategy)
                m.after_eval_exp(strategy)
        for name, m in ms.items():
            if name != "exp":
                m.after_eval(strategy)
    out["forgetting"] = ms["forgetting"].result()
    out["bwt"] = ms["bwt"].result()
    out["per_experience"] = ms["exp"].result()
    return out


def test_avalanche_forgetting_is_clbench_forgetting_last_and_bwt_agrees():
    av = avalanche_stream_metrics(R)
    # Avalanche's forgetting: first accuracy after learning minus last, over experiences 0..T-2
    assert av["forgetting"] == pytest.approx(metrics.forgetting_last(R), abs=1e-12)
    assert av["forgetting"] == pytest.approx(((0.90 - 0.50) + (0.80 - 0.60)) / 2, abs=1e-12)
    assert av["per_experience"] == pytest.approx({0: 0.40, 1: 0.20}, abs=1e-12)
    # BWT: the same number with the other sign, divided by T-1 in both libraries
    assert av["bwt"] == pytest.approx(metrics.bwt(R), abs=1e-12)
    assert av["bwt"] == pytest.approx(-av["forgetting"], abs=1e-12)


def test_clbench_forgetting_differs_from_avalanche_where_accuracy_rose_after_learning():
    av = avalanche_stream_metrics(R)
    # clbench's forgetting takes the max over R[0..T-2, j] (every earlier row): task 0 peaked at 0.95, not 0.90
    assert metrics.forgetting(R) == pytest.approx(((0.95 - 0.50) + (0.80 - 0.60)) / 2)
    assert metrics.forgetting(R) - av["forgetting"] == pytest.approx((0.95 - 0.90) / 2, abs=1e-12)
    # on a matrix where nothing rises after it is learned, the two agree
    R2 = R.copy()
    R2[1, 0] = 0.85
    assert metrics.forgetting(R2) == pytest.approx(avalanche_stream_metrics(R2)["forgetting"], abs=1e-12)


# -- EWC: clbench's `ewc` against Avalanche's EWCPlugin --------------------------------------


def _tiny_model(seed=0):
    from clbench.models import ModelConfig, Transformer

    torch.manual_seed(seed)
    return Transformer(ModelConfig(d_model=16, n_layers=1, n_heads=2), input_kind="patches", input_dim=4, n_classes=4)


def test_ewc_penalty_matches_avalanche_with_lambda_halved():
    """Same parameters, anchors and Fisher: clbench's lambda_/2·ΣF(θ−θ*)² equals Avalanche's
    ewc_lambda·ΣF(θ−θ*)² when lambda_ = 2·ewc_lambda (separate and online modes)."""
    from avalanche.training.plugins import EWCPlugin
    from avalanche.training.utils import ParamData

    from clbench.plugins.avalanche import PackedModel
    from clbench.strategies.ewc import EWC

    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    anchors = [{n: p.detach() + 0.1 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()} for _ in range(2)]
    fishers = [{n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()} for _ in range(2)]
    wrapped = PackedModel(model)
    for mode in ("separate", "online"):
        n_exp = 2 if mode == "separate" else 1
        ours = EWC(lambda_=2 * 0.7, mode=mode)
        ours.penalties = [(fishers[e], anchors[e]) for e in range(n_exp)]
        theirs = EWCPlugin(ewc_lambda=0.7, mode=mode, decay_factor=None if mode == "separate" else 0.5)
        for e in range(n_exp):
            exp = e if mode == "separate" else 0
            theirs.saved_params[exp] = {f"net.{n}": ParamData(f"net.{n}", init_tensor=a.clone()) for n, a in anchors[e].items()}
            theirs.importances[exp] = {f"net.{n}": ParamData(f"net.{n}", init_tensor=f.clone()) for n, f in fishers[e].items()}
        strategy = SimpleNamespace(
            clock=SimpleNamespace(train_exp_counter=n_exp), model=wrapped, device=torch.device("cpu"), loss=torch.zeros(())
        )
        theirs.before_backward(strategy)
        expected = ours.penalty(model)
        assert expected.item() > 0
        assert strategy.loss.item() == pytest.approx(expected.item(), rel=1e-6)
        # and the gradients agree too (the penalty is what trains)
        g1 = torch.autograd.grad(expected, list(model.parameters()))
        g2 = torch.autograd.grad(strategy.loss, list(model.parameters()))
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_ewc_fisher_matches_avalanche_importances_at_batch_size_one():
    """Avalanche's importance is the mean over minibatches of the squared minibatch gradient; at
    batch size 1 it is clbench's empirical Fisher (mean over examples of squared per-example
    gradients) on the same examples."""
    from avalanche.training.plugins import EWCPlugin

    from clbench.plugins.avalanche import PackedModel, benchmark_from_stream
    from clbench.strategies.ewc import empirical_fisher
    from clbench.tasks.digits import split_digits

    stream = split_digits(n_tasks=2, patch_size=2)
    stream.tasks = stream.tasks[:1]
    task = stream.tasks[0]
    task.train = task.train[:40]
    model = _tiny_model()
    model.head = torch.nn.Linear(16, 10)  # the stream has 10 labels
    cell = SimpleNamespace(model=model, rng=np.random.default_rng(0), loss=lambda b: torch.nn.functional.cross_entropy(model(b.x, b.lengths), b.y))
    ours = empirical_fisher(cell, task.train, max_samples=1000)
    wrapped = PackedModel(model)
    data = benchmark_from_stream(stream).train_stream[0].dataset
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.0)
    theirs = EWCPlugin(ewc_lambda=1.0).compute_importances(
        wrapped, torch.nn.CrossEntropyLoss(), opt, data, torch.device("cpu"), batch_size=1
    )
    for n, f in ours.items():
        assert f.abs().sum() > 0 or n.startswith("pos")
        torch.testing.assert_close(theirs[f"net.{n}"].data, f, rtol=1e-4, atol=1e-10)


# -- strategies through clbench's runner -----------------------------------------------------


def test_avalanche_naive_gives_clbench_naives_accuracy_matrix(host):
    """Same model, seed, batches (the adapter feeds Avalanche clbench's batch order), optimizer
    (fresh Adam per task), clipping and evaluation: the matrices are equal."""
    naive, av = run(host, ["naive", "avalanche:Naive"], stream_params=TWO_TASKS, training=LEARNS)
    assert naive.status == av.status == "ok", av.row["traceback"]
    Rn, Ra = matrix(naive), matrix(av)
    assert Rn[0, 0] > 0.9 and Rn[1, 0] < 0.5  # a real run: the first task learned, then forgotten
    np.testing.assert_allclose(Ra, Rn, atol=1e-6)


def test_avalanche_strategy_parameters_come_from_the_suite(host, capsys, monkeypatch):
    from clbench.plugins.avalanche import AvalancheStrategy
    from clbench.cell import make_strategies
    from clbench.suite import parse_suite

    with pytest.raises(UserError, match="missing required parameter 'ewc_lambda'"):
        parse_suite(make_suite(["avalanche:EWC"]), "s.toml")
    with pytest.raises(UserError, match="has no parameter 'lambda_'"):
        parse_suite(make_suite([{"name": "avalanche:EWC", "params": {"lambda_": 1.0}}]), "s.toml")
    with pytest.raises(UserError, match="parameter 'mem_size' must be int"):
        parse_suite(make_suite([{"name": "avalanche:Replay", "params": {"mem_size": "big"}}]), "s.toml")
    suite = parse_suite(make_suite([{"name": "avalanche:EWC", "params": {"ewc_lambda": 5.0}}], stream_params=TWO_TASKS), "s.toml")
    (cell,) = suite.cells
    [(_, obj)] = make_strategies(cell)
    assert obj.params == {"ewc_lambda": 5.0, "mode": "separate", "decay_factor": None, "keep_importance_data": False}
    from clbench.loop import run_cell

    made = []
    init = AvalancheStrategy.__init__
    monkeypatch.setattr(AvalancheStrategy, "__init__", lambda self, *a, **k: (made.append(self), init(self, *a, **k))[1])
    res = run_cell(cell)
    assert res.status == "ok", res.row["traceback"]
    from avalanche.training.plugins import EWCPlugin

    (obj,) = made
    ewc = next(p for p in obj.strategy.plugins if isinstance(p, EWCPlugin))
    assert ewc.ewc_lambda == 5.0 and sorted(ewc.importances) == [0, 1]
    assert capsys.readouterr().out == ""  # Avalanche's loggers stay quiet


def test_avalanche_strategy_cannot_be_combined(host):
    (res,) = run(host, [{"name": ["avalanche:Naive", "ewc"]}], stream_params=TWO_TASKS)
    assert res.status == "failed" and "cannot be combined" in res.row["error"]  # that cell's failure


AVALANCHE_PARAMS = {
    "Naive": {},
    "Cumulative": {},
    "EWC": {"ewc_lambda": 1.0},
    "LwF": {"alpha": 1.0, "temperature": 2.0},
    "Replay": {"mem_size": 100},
    "GEM": {"patterns_per_exp": 20},
    "AGEM": {"patterns_per_exp": 20, "sample_size": 20},
    "SynapticIntelligence": {"si_lambda": 1.0},
    "MAS": {},
    "GDumb": {"mem_size": 100},
    "LFL": {"lambda_e": 1.0},
    "MIR": {"mem_size": 100, "subsample": 50, "batch_size_mem": 10},
    "ER_ACE": {"mem_size": 100},
    "DER": {"mem_size": 100},
}


def test_every_registered_avalanche_strategy_has_test_parameters(host):
    names = {n.split(":", 1)[1] for n in host.names("strategies") if n.startswith("avalanche:")}
    assert names == set(AVALANCHE_PARAMS)


def test_avalanches_gem_has_a_qp_solver():
    # GEM solves a QP with qpsolvers' quadprog; avalanche-lib's own requirement installs no solver
    # with the pip a new venv ships, so clbench requires quadprog itself (pyproject.toml)
    qpsolvers = pytest.importorskip("qpsolvers")
    assert "quadprog" in qpsolvers.available_solvers


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AVALANCHE_PARAMS))
def test_each_avalanche_strategy_runs_and_learns(host, name):
    (res,) = run(host, [{"name": f"avalanche:{name}", "params": AVALANCHE_PARAMS[name]}], stream_params=TWO_TASKS, training=LEARNS)
    assert res.status == "ok", res.row["traceback"]
    R = matrix(res)
    assert R[0, 0] > 0.8  # it trained: the first task was learned (chance is 0.1 over ten labels)


@pytest.mark.slow
def test_avalanche_strategies_on_a_task_incremental_stream(host):
    params = {**TWO_TASKS, "scenario": "task-incremental"}
    naive, av = run(host, ["naive", "avalanche:Naive"], stream_params=params, training=LEARNS)
    assert av.status == "ok", av.row["traceback"]
    np.testing.assert_allclose(matrix(av), matrix(naive), atol=1e-6)
    # Masked heads keep task 0 answerable after task 1; class-IL naive predicts only task 1's
    # classes (R[-1, 0] near 0). One seed cannot show it: at this budget task-IL's R[-1, 0] ranged
    # from 0.20 to 0.84 over seeds 0-7 with d_model 64 (0.66 to 0.89 over seeds 0-3 with this tiny
    # model; a new machine's releases gave 0.37 at seed 0): the features drift under task 1 and a
    # masked 2-way head can even fall below chance. Compare the means over four seeds.
    seeds = (0, 1, 2, 3)
    til = [matrix(r)[-1, 0] for r in run(host, ["naive"], stream_params=params, training=LEARNS, seeds=seeds)]
    cil = [matrix(r)[-1, 0] for r in run(host, ["naive"], stream_params=TWO_TASKS, training=LEARNS, seeds=seeds)]
    assert np.mean(cil) < 0.2 and np.mean(til) > np.mean(cil) + 0.25, (til, cil)
