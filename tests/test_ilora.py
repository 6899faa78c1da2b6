"""I-LoRA (strategies/ilora.py): the slow adapter is the interpolation of the fast one step by
step (by hand), the slow one answers at evaluation, the consistency term by hand, replay from
the second task on; whole cells on clbench's decoder and a tiny Llama; the refusals."""

from __future__ import annotations

import pytest
import torch

import clbench
from clbench.cell import CellContext, cell_manager
from clbench.errors import UserError
from clbench.loop import build_model, build_stream, make_optimizer, run_cell, train_step
from clbench.strategies.ilora import ILoRA, layer_stack
from clbench.strategies.lora import lora_layers
from clbench.suite import parse_suite
from clbench.suiterun import preflight
from conftest import Snapshot, make_suite


def context(host, strategy, observers=(), scenario="class-incremental") -> CellContext:
    """A split-digits cell context (2 tasks, the tiny model) whose hooks are ``strategy``'s."""
    data = make_suite(["naive"], stream_params={"scenario": scenario, "patch_size": 4, "n_tasks": 2})
    cell = parse_suite(data, "t.toml").cells[0]
    stream = build_stream(cell)
    pm = cell_manager([("i-lora", strategy)], observers)
    return CellContext(cell, stream, build_model(cell, stream), torch.device("cpu"), pm.hook)


def start(ctx: CellContext, i: int, params=None) -> list:
    ctx.task_index, ctx.task = i, ctx.tasks[i]
    ctx.model.train()
    ctx.hook.before_task(cell=ctx, task=ctx.task)
    params = ctx.hook.trainable_parameters(cell=ctx)
    ctx.optimizer = make_optimizer(params, ctx.config.training)
    return params


class Steps:
    """An observer: the fast adapter's matrices after every optimizer step."""

    __test__ = False

    def __init__(self, strategy: ILoRA):
        self.s, self.fast = strategy, []

    @clbench.hookimpl
    def after_step(self, cell, step, loss):
        self.fast.append([f.detach().clone() for _, f in self.s.pairs()])


def test_the_slow_adapter_is_the_interpolation_of_the_fast_one_step_by_step(host):
    lam = 0.6  # above 1/2: the first step's a is min(1 - 1/2, λ) = 0.5, then 2/3 -> λ
    s = ILoRA(lambda_=lam, dropout=0.0)
    steps = Steps(s)
    ctx = context(host, s, [steps])
    params = start(ctx, 0)
    slow = [p.detach().clone() for p, _ in s.pairs()]
    assert all(not p.requires_grad for p, _ in s.pairs())
    data = ctx.task.train
    for k in range(5):
        train_step(ctx, data[k * 16 : (k + 1) * 16], params)
    assert len(steps.fast) == 5
    for k, fast in enumerate(steps.fast, start=1):
        a = min(1 - 1 / (k + 1), lam)
        assert a == (0.5 if k == 1 else lam)
        slow = [a * s_ + (1 - a) * f for s_, f in zip(slow, fast)]
    for (p, f), want in zip(s.pairs(), slow):
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7)
        assert not torch.equal(p.detach(), f.detach())  # it follows, it does not copy
    # a new task restarts the count: its first step interpolates with a = 0.5 again
    params = start(ctx, 1)
    before = [p.detach().clone() for p, _ in s.pairs()]
    train_step(ctx, ctx.task.train[:16], params)
    for (p, f), b in zip(s.pairs(), before):
        torch.testing.assert_close(p.detach(), 0.5 * b + 0.5 * f.detach(), rtol=1e-6, atol=1e-7)


def test_the_slow_learner_answers_at_evaluation(host):
    s = ILoRA(dropout=0.0)
    ctx = context(host, s)
    params = start(ctx, 0)
    for k in range(4):
        train_step(ctx, ctx.task.train[k * 16 : (k + 1) * 16], params)
    batch = ctx.tasks[0].test[:32]
    ctx.model.eval()
    with torch.no_grad():
        s.route("fast")
        fast = ctx.logits(batch)
        ctx.hook.before_eval(cell=ctx, task_index=0, task=ctx.tasks[0])
        assert all(layer.active == ["slow"] for layer in lora_layers(ctx.model))
        evaluated = ctx.logits(batch)
        assert not torch.allclose(evaluated, fast)
        for slow_p, fast_p in s.pairs():  # the same numbers in the fast adapter's place
            fast_p.copy_(slow_p)
        s.route("fast")
        torch.testing.assert_close(ctx.logits(batch), evaluated)


def block_outputs(model, run) -> list[torch.Tensor]:
    out = []
    handles = [b.register_forward_hook(lambda m, a, o: out.append(o)) for b in layer_stack(model)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return out


def test_replay_starts_at_the_second_task_and_the_consistency_term_is_as_by_hand(host):
    s = ILoRA(dropout=0.0, consistency_weight=2.0, memory_size=40, ratio=0.5)
    ctx = context(host, s)
    params = start(ctx, 0)
    first = ctx.task.train[:16]
    assert ctx.hook.train_batch(cell=ctx, batch=first) is None  # the first task: no replay
    for k in range(1, 6):
        train_step(ctx, ctx.task.train[k * 16 : (k + 1) * 16], params)
    assert len(s.memory) == 40 and ctx.info["buffer_size"] == 40
    start(ctx, 1)
    new = ctx.task.train[:16]
    for consistency in ("mse", "max"):
        s.consistency = consistency
        mixed = ctx.hook.train_batch(cell=ctx, batch=new)
        assert len(mixed) == 16 + 8 and (mixed.t[:16] == 1).all() and (mixed.t[16:] == 0).all()
        logits = ctx.logits(mixed)
        term = s.loss_terms(ctx, mixed, logits, None)
        assert term.requires_grad and term.item() > 0

        mem = mixed[16:]
        fast = block_outputs(ctx.model, lambda: ctx.model.hidden_states(mem.x, mem.lengths))
        s.route("slow")
        slow = block_outputs(ctx.model, lambda: ctx.model.hidden_states(mem.x, mem.lengths))
        s.route("fast")
        target = [torch.where(hf > hs, hf, hs) if consistency == "max" else hs for hf, hs in zip(fast, slow)]
        by_hand = torch.stack([(t - hf).pow(2).mean() for hf, t in zip(fast, target)]).mean()
        assert term.item() == pytest.approx(2.0 * by_hand.item(), rel=1e-5), consistency

    # its gradient reaches the fast adapter only
    term.backward()
    assert all(f.grad is not None for _, f in s.pairs()) and all(sl.grad is None for sl, _ in s.pairs())
    # and it is zero where the slow learner is the fast one
    with torch.no_grad():
        for slow_p, fast_p in s.pairs():
            slow_p.copy_(fast_p)
    mixed = ctx.hook.train_batch(cell=ctx, batch=new)
    assert s.loss_terms(ctx, mixed, ctx.logits(mixed), None).item() < 1e-12


def suite_on(init, strategies, **training):
    s = make_suite(strategies, stream="algorithmic",
                   stream_params={"tasks": ["reverse", "copy"], "n_train": 48, "n_test": 8, "length": 3, "max_len": 24},
                   training={"epochs": 1, "batch_size": 16, "lr": 1e-2, **training})
    if init == "decoder":
        s["model"] = {"d_model": 32, "n_layers": 1, "n_heads": 2, "causal": True}
        s["streams"][0]["params"]["tokenizer"] = "bytes"
    else:
        s["model"] = {"init": str(init)}
    return s



@pytest.mark.parametrize("model", ["decoder", "llama"])
def test_a_generative_cell_trains_the_fast_adapter_only(model, host, tiny_causal_lm):
    init = "decoder" if model == "decoder" else tiny_causal_lm("llama")
    watch = Snapshot()
    res = run_cell(parse_suite(suite_on(init, [{"name": "i-lora", "params": {"memory_size": 16}}]), "s.toml").cells[0],
                   observers=[watch])
    assert res.status == "ok", res.row["traceback"]
    for name, p, before in watch.before:  # every base weight, the LM head and the embeddings too
        assert torch.equal(p.detach(), before) and not p.requires_grad, name
    layers = lora_layers(watch.model)
    assert layers and all(layer.adapters == ["fast", "slow"] for layer in layers)
    assert all(p.abs().sum() > 0 for layer in layers for p in layer.parameters_of("slow")[len(layer.parts):])  # B moved
    assert res.row["buffer_size"] == 16


def test_combinations_follow_the_rules(host):
    for other, says in (("replay", "both decide 'train_batch'"), ("seq-lora", "both decide 'trainable_parameters'")):
        with pytest.raises(UserError, match=says):
            preflight(parse_suite(make_suite([{"name": ["i-lora", other]}]), "s.toml"))
    preflight(parse_suite(make_suite([{"name": ["i-lora", "ewc"]}]), "s.toml"))  # allowed
    with pytest.raises(UserError, match=r"strategy 'i-lora': parameter 'lambda' must be in \[0, 1\), got 1.5"):
        preflight(parse_suite(make_suite([{"name": "i-lora", "params": {"lambda": 1.5}}]), "s.toml"))
    with pytest.raises(UserError, match="parameter 'target_modules' must be a list of") as exc:
        preflight(parse_suite(make_suite([{"name": "i-lora", "params": {"target_modules": ["q_proj"]}}]), "s.toml"))
    assert "\n" not in str(exc.value)


def test_the_consistency_term_sees_a_batch_computed_in_two_length_groups_as_one(host):
    """With length batching, a batch of new and memory examples of very different lengths is
    computed in two passes (clbench.kinds.computed_groups): the blocks' outputs, put back
    in the batch's order, are those of one pass over the whole batch, at every real position."""
    from clbench.tasks import Examples
    from clbench.tasks.batching import length_groups

    cell = parse_suite(suite_on("decoder", [{"name": "i-lora", "params": {"memory_size": 16}}], batching="length"),
                       "s.toml").cells[0]
    stream = build_stream(cell)
    strategy = ILoRA(memory_size=16)
    ctx = CellContext(cell, stream, build_model(cell, stream), torch.device("cpu"), cell_manager([("i-lora", strategy)]).hook)
    start(ctx, 0)
    ctx.model.eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([6, 7, 6, 5, 20, 19, 20, 18])
    batch = Examples(torch.randint(1, 200, (8, 20), generator=g), torch.zeros(8, dtype=torch.long), lengths,
                     torch.zeros(8, dtype=torch.long), start=lengths - 2)
    assert length_groups(batch.lengths) is not None  # two passes
    with torch.no_grad():
        strategy._captured = []
        ctx.kind.logits(ctx, batch, ctx.model)
        grouped = strategy._captured
        strategy._captured = []
        ctx.model.hidden_states(batch.x, batch.lengths)
        whole = strategy._captured
        strategy._captured = None
    assert len(grouped) == 2 * len(strategy.blocks) and len(whole) == len(strategy.blocks)
    valid = torch.arange(20)[None, :] < lengths[:, None]
    for got, want in zip(strategy._whole_batch(ctx, batch, grouped), whole):
        assert got.shape == want.shape
        torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-4)
