"""MIGU (strategies/migu.py): after backward, each linear layer's gradient is zero outside the rows
with the largest output magnitudes on the batch and unchanged inside (masks found by hand); the
first task unmasked; magnitudes summed over the task; transformers' Conv1D by columns; whole
cells on a classifier, clbench's decoder and a tiny Llama; the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clbench.cell import CellContext, cell_manager
from clbench.errors import UserError
from clbench.loop import build_model, build_stream, run_cell
from clbench.strategies.migu import MIGU, row_mask
from clbench.suite import parse_suite
from clbench.suiterun import preflight
from conftest import make_suite


def context(host, strategy) -> CellContext:
    data = make_suite(["naive"], stream_params={"scenario": "class-incremental", "patch_size": 4, "n_tasks": 2})
    cell = parse_suite(data, "t.toml").cells[0]
    stream = build_stream(cell)
    return CellContext(cell, stream, build_model(cell, stream), torch.device("cpu"), cell_manager([("migu", strategy)]).hook)


def linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def gradients_and_magnitudes(ctx, batches):
    """The model's gradients after the loss of ``batches`` (summed), and each linear layer's
    output magnitudes Σ |y| over those forward passes, both without MIGU (by hand)."""
    sums, handles = {}, []
    for name, m in linears(ctx.model):
        def hook(mod, a, y, name=name):
            sums[name] = sums.get(name, 0) + y.detach().abs().reshape(-1, y.shape[-1]).sum(0).double().numpy()
        handles.append(m.register_forward_hook(hook))
    ctx.model.zero_grad()
    for b in batches:
        ctx.loss(b).backward()
    for h in handles:
        h.remove()
    return {n: p.grad.clone() for n, p in ctx.model.named_parameters()}, sums


def by_hand(m: np.ndarray, ratio: float) -> np.ndarray:
    m = m / m.sum()
    return m >= np.quantile(m, 1 - ratio)  # numpy's default quantile is linear, as torch's


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_only_the_top_rows_keep_their_gradient_and_it_is_unchanged(host, ratio):
    migu = MIGU(ratio=ratio)
    ctx = context(host, migu)
    ctx.task_index, ctx.task = 1, ctx.tasks[1]
    ctx.model.train()
    migu.before_task(ctx, ctx.task)
    batch = ctx.task.train[:32]
    want, sums = gradients_and_magnitudes(ctx, [batch])  # MIGU's hooks are on the model too: reset them
    migu.sums = {}
    ctx.model.zero_grad()
    ctx.loss(batch).backward()
    migu.after_backward(ctx, batch)
    names = [n for n, _ in linears(ctx.model)]
    assert {"embed", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc", "blocks.0.mlp.proj", "head"} <= set(names)
    kept_share = []
    for name, layer in linears(ctx.model):
        keep = torch.as_tensor(by_hand(sums[name], ratio))
        g = layer.weight.grad
        assert torch.equal(g[keep], want[name + ".weight"][keep]), name  # unchanged inside
        assert (g[~keep] == 0).all(), name  # zero outside
        assert torch.equal(layer.bias.grad, want[name + ".bias"]), name  # biases are not masked
        assert (want[name + ".weight"][~keep] != 0).any(), name  # there was something to mask
        kept_share.append(keep.float().mean().item())
    assert np.mean(kept_share) == pytest.approx(ratio, abs=0.05)
    assert migu.sums == {}  # "batch": the next batch starts afresh


def test_the_first_task_trains_unmasked_unless_asked(host):
    for first_task, masked in ((False, False), (True, True)):
        migu = MIGU(first_task=first_task)
        ctx = context(host, migu)
        ctx.task_index, ctx.task = 0, ctx.tasks[0]
        ctx.model.train()
        migu.before_task(ctx, ctx.task)
        batch = ctx.task.train[:32]
        ctx.loss(batch).backward()
        want = {n: p.grad.clone() for n, p in ctx.model.named_parameters()}
        migu.after_backward(ctx, batch)
        same = all(torch.equal(p.grad, want[n]) for n, p in ctx.model.named_parameters())
        assert same != masked


def test_task_magnitudes_add_up_the_batches_of_the_task(host):
    migu = MIGU(magnitudes="task")
    ctx = context(host, migu)
    ctx.task_index, ctx.task = 1, ctx.tasks[1]
    ctx.model.train()
    migu.before_task(ctx, ctx.task)
    seen: list[dict] = []  # each forward pass's magnitudes, by hand
    for name, m in linears(ctx.model):
        m.register_forward_hook(lambda mod, a, y, name=name: seen[-1].__setitem__(
            name, y.detach().abs().reshape(-1, y.shape[-1]).sum(0).double().numpy()))
    for b in (ctx.task.train[:32], ctx.task.train[32:64]):
        seen.append({})
        ctx.model.zero_grad()
        ctx.loss(b).backward()
        want = {n: p.grad.clone() for n, p in ctx.model.named_parameters()}
        migu.after_backward(ctx, b)
    differs = 0
    for name, layer in linears(ctx.model):
        keep = torch.as_tensor(by_hand(seen[0][name] + seen[1][name], 0.3))  # both batches of the task
        g = layer.weight.grad
        assert (g[~keep] == 0).all() and torch.equal(g[keep], want[name + ".weight"][keep]), name
        differs += not torch.equal(keep, torch.as_tensor(by_hand(seen[1][name], 0.3)))
    assert differs > 0  # the second batch alone would have kept other rows
    assert len(migu.sums) == len(linears(ctx.model))  # kept for the next batch


def test_a_conv1d_layer_is_masked_by_columns():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = torch.nn.Sequential(Conv1D(10, 6))  # in 6, out 10: weight (6, 10)
    migu = MIGU(ratio=0.4, first_task=True)

    class Cell:
        task_index = 0

    Cell.model = model
    migu.before_task(Cell, None)
    x = torch.randn(3, 4, 6)
    y = model(x)
    y.pow(2).sum().backward()
    want = model[0].weight.grad.clone()
    migu.after_backward(Cell, None)
    keep = torch.as_tensor(by_hand(y.detach().abs().reshape(-1, 10).sum(0).double().numpy(), 0.4))
    assert keep.sum() == 4
    g = model[0].weight.grad
    assert torch.equal(g[:, keep], want[:, keep]) and (g[:, ~keep] == 0).all()


def test_row_mask_keeps_the_share_asked_for():
    m = torch.arange(1.0, 11.0)  # 1..10
    assert row_mask(m, 0.3).tolist() == [False] * 7 + [True] * 3
    assert row_mask(m, 1.0).all()


@pytest.mark.parametrize("where", ["classifier", "decoder", "llama"])
def test_a_cell_runs_on_a_classifier_clbench_s_decoder_and_a_tiny_llama(where, host, tiny_causal_lm):
    if where == "classifier":
        s = make_suite(["migu"], stream_params={"patch_size": 4, "n_tasks": 2})
    else:
        s = make_suite(["migu"], stream="algorithmic",
                       stream_params={"tasks": ["reverse", "copy"], "n_train": 48, "n_test": 8, "length": 3, "max_len": 24},
                       training={"epochs": 1, "batch_size": 16, "lr": 1e-2})
        s["model"] = ({"d_model": 32, "n_layers": 1, "n_heads": 2, "causal": True} if where == "decoder"
                      else {"init": str(tiny_causal_lm("llama"))})
        if where == "decoder":
            s["streams"][0]["params"]["tokenizer"] = "bytes"
    res = run_cell(parse_suite(s, "s.toml").cells[0])
    assert res.status == "ok", res.row["traceback"]


def test_migu_is_refused_with_adapters_and_combines_with_the_rest(host):
    for other in ("seq-lora", "i-lora", "moe-lora"):
        with pytest.raises(UserError, match=f"which '{other}' freezes") as exc:
            preflight(parse_suite(make_suite([{"name": ["migu", other]}]), "s.toml"))
        assert "\n" not in str(exc.value)
    preflight(parse_suite(make_suite([{"name": ["migu", "replay"]}, {"name": ["migu", "ewc"]}]), "s.toml"))
