"""MoE-LoRA (strategies/moelora.py): a layer's output is the router-weighted sum of its experts
(whole layers and parts of a fused one), LoRAMoE's balancing term by hand, the router's load
recorded per task and summing to one; whole cells on clbench's decoder and a tiny Llama; the
refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clbench.cell import CellContext, cell_manager
from clbench.errors import UserError
from clbench.loop import build_model, build_stream, make_optimizer, run_cell, train_step
from clbench.strategies.lora import LoRALinear
from clbench.strategies.moelora import MoELoRA, MoELoRALinear, balancing_loss, moe_layers
from clbench.suite import parse_suite
from clbench.suiterun import preflight
from conftest import Snapshot, make_suite


def moe_layer(parts, n=3, rank=2, seed=0) -> tuple[torch.nn.Linear, MoELoRALinear]:
    torch.manual_seed(seed)
    base = torch.nn.Linear(8, 12)
    layer = MoELoRALinear(LoRALinear(base, parts, rank, alpha=4.0), n)
    with torch.no_grad():
        for p in layer.experts.lora_B.values():
            p.normal_()  # B starts at zero: give the experts something to say
    return base, layer


@pytest.mark.parametrize("parts", [{"": (0, 12)}, {"q": (0, 4), "v": (8, 12)}])
def test_a_layer_is_its_base_plus_the_router_weighted_sum_of_its_experts(parts):
    base, layer = moe_layer(parts)
    x = torch.randn(2, 5, 8)
    g = torch.softmax(x @ layer.router.weight.T, dim=-1)  # (2, 5, 3)
    want = base(x)
    lora = layer.experts
    for e in range(3):
        for part, (start, stop) in parts.items():
            key = lora.key(f"e{e}", part)
            delta = x @ lora.lora_A[key].T @ lora.lora_B[key].T * lora.scaling
            want[..., start:stop] += g[..., e : e + 1] * delta
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)
    # while training, the gates are kept for the balancing term (and sum to one per token)
    layer.train()
    layer(x)
    torch.testing.assert_close(layer.gates, g)
    torch.testing.assert_close(layer.gates.sum(-1), torch.ones(2, 5))
    assert [n for n, _ in layer.named_parameters()].count("base.weight") == 1  # the base is not counted twice


def test_the_balancing_term_is_loramoes_by_hand():
    gates = torch.tensor([  # (2 examples, 3 positions, 4 experts)
        [[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]],
        [[0.4, 0.3, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7], [0.9, 0.05, 0.03, 0.02]],  # its third position is padding
    ])
    lengths = torch.tensor([3, 2])
    valid = (torch.arange(3)[None, :] < lengths[:, None]).float()
    old = torch.tensor([True, False])  # example 0 is of an earlier task: the first half of the experts is its own
    got = balancing_loss(gates, valid, old, blc_alpha=0.1)
    g = gates.numpy().astype(np.float64)
    importance = np.array([g[0, :3].sum(0), g[1, :2].sum(0)])  # summed over each example's own tokens
    q = np.array([[1.1, 1.1, 0.9, 0.9], [0.9, 0.9, 1.1, 1.1]])
    z = (importance * q).ravel()
    assert got.item() == pytest.approx(z.var(ddof=1) / z.mean() ** 2, rel=1e-6)
    # no localization: the plain squared coefficient of variation of the importances
    assert balancing_loss(gates, valid, old, 0.0).item() == pytest.approx(importance.var(ddof=1) / importance.mean() ** 2, rel=1e-6)
    # a uniform router has nothing to balance
    assert balancing_loss(torch.full((2, 3, 4), 0.25), torch.ones(2, 3), old, 0.0).item() == pytest.approx(0.0, abs=1e-9)


def context(host, strategy, scenario="class-incremental") -> CellContext:
    data = make_suite(["naive"], stream_params={"scenario": scenario, "patch_size": 4, "n_tasks": 2})
    cell = parse_suite(data, "t.toml").cells[0]
    stream = build_stream(cell)
    return CellContext(cell, stream, build_model(cell, stream), torch.device("cpu"), cell_manager([("moe-lora", strategy)]).hook)


def test_the_loss_term_sums_the_layers_terms_and_types_examples_by_task(host):
    s = MoELoRA(experts=4, blc_weight=0.5, blc_alpha=0.2, dropout=0.0)
    ctx = context(host, s)
    ctx.task_index, ctx.task = 1, ctx.tasks[1]
    ctx.model.train()
    s.before_task(ctx, ctx.task)
    batch = type(ctx.task.train).cat([ctx.tasks[0].train[:6], ctx.task.train[:10]])  # 6 replayed, 10 new
    ctx.logits(batch)
    gates = [layer.gates for layer in moe_layers(ctx.model)]
    assert len(gates) == 2  # fc and mlp.proj of the one block
    term = s.loss_terms(ctx, batch, None, None)
    valid = torch.ones(16, gates[0].shape[1])
    old = torch.arange(16) < 6
    want = 0.5 * sum(balancing_loss(g, valid, old, 0.2) for g in gates)
    assert term.item() == pytest.approx(want.item(), rel=1e-6) and term.requires_grad
    assert all(layer.gates is None for layer in moe_layers(ctx.model))  # used once


def test_the_router_load_is_recorded_per_task_and_sums_to_one(host):
    res = run_cell(parse_suite(make_suite([{"name": "moe-lora", "params": {"experts": 4}}],
                                          stream_params={"patch_size": 4, "n_tasks": 2}), "s.toml").cells[0])
    assert res.status == "ok", res.row["traceback"]
    rows = [m for m in res.measurements if m["metric"] == "router_load"]
    assert sorted((m["train_task"], m["eval_task"]) for m in rows) == [(t, e) for t in range(2) for e in range(4)]
    for t in range(2):
        assert sum(m["value"] for m in rows if m["train_task"] == t) == pytest.approx(1.0, abs=1e-6)
    assert all(0 < m["value"] < 1 for m in rows)
    d, h, rank = 32, 128, 4  # the tiny model: fc and mlp.proj adapted by 4 experts each, their routers, the head
    assert res.row["trainable_params"] == 4 * rank * 2 * (d + h) + 4 * (d + h) + (d * 10 + 10)



@pytest.mark.parametrize("model", ["decoder", "llama"])
def test_a_generative_cell_trains_experts_and_routers_only(model, host, tiny_causal_lm):
    s = make_suite([{"name": "moe-lora", "params": {"experts": 2}}], stream="algorithmic",
                   stream_params={"tasks": ["reverse", "copy"], "n_train": 48, "n_test": 8, "length": 3, "max_len": 24},
                   training={"epochs": 1, "batch_size": 16, "lr": 1e-2})
    if model == "decoder":
        s["model"] = {"d_model": 32, "n_layers": 1, "n_heads": 2, "causal": True}
        s["streams"][0]["params"]["tokenizer"] = "bytes"
    else:
        s["model"] = {"init": str(tiny_causal_lm("llama"))}
    watch = Snapshot()
    res = run_cell(parse_suite(s, "s.toml").cells[0], observers=[watch])
    assert res.status == "ok", res.row["traceback"]
    for name, p, before in watch.before:
        assert torch.equal(p.detach(), before) and not p.requires_grad, name
    layers = moe_layers(watch.model)
    names = {n.rsplit(".", 1)[-1] for n, m in watch.model.named_modules() if m in layers}
    assert names == ({"fc", "proj"} if model == "decoder" else {"gate_proj", "up_proj", "down_proj"})
    assert all(layer.router.weight.requires_grad for layer in layers)
    assert len([m for m in res.measurements if m["metric"] == "router_load"]) == 2 * 2


def test_combinations_follow_the_rules(host):
    with pytest.raises(UserError, match="both decide 'trainable_parameters'"):
        preflight(parse_suite(make_suite([{"name": ["moe-lora", "seq-lora"]}]), "s.toml"))
    preflight(parse_suite(make_suite([{"name": ["moe-lora", "replay"]}]), "s.toml"))  # the balancing term types replayed examples
    with pytest.raises(UserError, match=r"parameter 'experts' must be even when blc_alpha > 0"):
        preflight(parse_suite(make_suite([{"name": "moe-lora", "params": {"experts": 3}}]), "s.toml"))
    preflight(parse_suite(make_suite([{"name": "moe-lora", "params": {"experts": 3, "blc_alpha": 0.0}}]), "s.toml"))
