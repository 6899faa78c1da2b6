"""Every kind of task in every precision, on the CPU, through ``run_cell``: classification of
split digits (patches) and of a text folder (tokens); generation on clbench's decoder and on a
tiny Hugging Face Llama, scored by generated answers (the KV cache) and by rank classification,
with the general text's perplexity. bf16 and fp16 run under autocast: their numbers are not
fp32's, but close to them. bf16 on a device without bf16 arithmetic runs fp32, and says so."""

from __future__ import annotations

import json
import math

import pytest

from conftest import make_suite

from clbench.loop import run_cell
from clbench.suite import parse_suite

PRECISIONS = ("fp32", "bf16", "fp16")
DECODER = {"d_model": 32, "n_layers": 1, "n_heads": 2, "causal": True, "max_len": 96}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classification tasks in the CL_Benchmark format (a task type's folder, as O-LoRA's
    instruction format wants), and a general text."""
    root = tmp_path_factory.mktemp("precision-data")
    for name, labels in (("yesno", ["yes", "no"]), ("colour", ["red", "blue", "green"])):
        task = root / "TC" / name
        task.mkdir(parents=True)
        for split, n in (("train", 8), ("test", 3)):
            recs = [{"sentence": f"{name} {lab} number {i} " + "x" * (i * 5 % 17), "label": lab}
                    for lab in labels for i in range(n)]
            (task / f"{split}.json").write_text(json.dumps(recs), encoding="utf-8")
        (task / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    (root / "general.txt").write_text("The quick brown fox jumps over the lazy dog. " * 8, encoding="utf-8")
    return root


def case(name: str, folder, tiny_causal_lm) -> tuple[dict, dict | None]:
    """(a suite's stream table and model table) of each case."""
    instr = {"data_dir": str(folder), "max_len": 96, "general": "general.txt"}
    return {
        "digits": ({"name": "split-digits", "params": {"patch_size": 4, "n_tasks": 2}}, None),
        "text tokens": ({"name": "text", "params": {"data_dir": str(folder), "max_len": 48}}, {"max_len": 48}),
        "decoder, answers": ({"name": "instructions", "params": instr}, DECODER),
        "decoder, ranked": ({"name": "instructions", "params": {**instr, "metric": "accuracy"}}, DECODER),
        "llama, answers": ({"name": "instructions", "params": instr}, {"init": str(tiny_causal_lm("llama"))}),
        "llama, ranked": ({"name": "instructions", "params": {**instr, "metric": "accuracy"}}, {"init": str(tiny_causal_lm("llama"))}),
    }[name]


def run(host, stream: dict, model: dict | None, precision: str):
    data = make_suite(["naive"], training={"precision": precision, "batch_size": 8, "eval_batch_size": 8})
    data["streams"] = [stream]
    if model is not None:
        data["model"] = model if "init" in model else {**data["model"], **model}
    (cell,) = parse_suite(data, "precision.toml").cells
    return run_cell(cell)


def values(result, metric: str) -> list[float]:
    rows = sorted((m["train_task"], m["eval_task"], m["value"]) for m in result.measurements if m["metric"] == metric)
    return [v for *_, v in rows]


@pytest.mark.parametrize("name", ["digits", "text tokens", "decoder, answers", "decoder, ranked", "llama, answers", "llama, ranked"])
def test_every_kind_runs_in_every_precision(name, folder, tiny_causal_lm, host):
    stream, model = case(name, folder, tiny_causal_lm)
    results = {p: run(host, stream, model, p) for p in PRECISIONS}
    generative = stream["name"] == "instructions"
    for p, r in results.items():
        assert r.status == "ok", r.row["traceback"]
        assert r.row["precision"] == p
        assert all(math.isfinite(m["value"]) for m in r.measurements), p
        assert len(values(r, "acc")) == 3 * 2  # before training and after each of two tasks
        if generative:
            assert len(values(r, "general_ppl")) == 3
    metrics = ["loss", "train_loss"] + (["general_ppl"] if generative else [])
    for low in ("bf16", "fp16"):
        for metric in metrics:
            got, want = values(results[low], metric), values(results["fp32"], metric)
            assert got == pytest.approx(want, rel=0.05), (low, metric)
        # autocast did run: the losses are not fp32's to the last bit
        assert values(results[low], "loss") != values(results["fp32"], "loss"), low
        acc = values(results[low], "acc")
        assert max(abs(a - b) for a, b in zip(acc, values(results["fp32"], "acc"))) <= 0.34, low  # a near-tie may flip


def test_bf16_without_bf16_arithmetic_runs_fp32_and_says_so(host, monkeypatch, capsys):
    import clbench.cell

    monkeypatch.setattr(clbench.cell, "bf16_supported", lambda device: False)
    monkeypatch.setattr(clbench.cell, "_precision_warned", set())
    stream = {"name": "split-digits", "params": {"patch_size": 4, "n_tasks": 2}}
    asked, plain = run(host, stream, None, "bf16"), run(host, stream, None, "fp32")
    assert asked.status == "ok" and asked.row["precision"] == "fp32"
    assert json.loads(asked.row["training"])["precision"] == "bf16"  # what was asked stays in its config
    assert values(asked, "loss") == values(plain, "loss")  # it ran exactly fp32
    err = capsys.readouterr().err
    assert err.count("has no bf16 arithmetic; cells run in fp32") == 1


@pytest.mark.parametrize("arch", ["decoder", "llama", "qwen2", "gpt2"])
def test_evaluation_casts_the_linear_weights_once_and_changes_no_number(arch, folder, tiny_causal_lm, host, one_thread):
    """``evaluating`` holds the linear layers' weights in bf16 for an evaluation instead of
    letting autocast cast them at every forward pass: the same answers, scores and losses, bit
    for bit; the weights come back as they were; an LM head tied to the embeddings (Qwen2's)
    stays fp32, since the embedding lookup uses it too."""
    import torch

    from clbench.cell import CellContext
    from clbench.loop import autocast, build_model, build_stream, evaluating

    model = DECODER if arch == "decoder" else {"init": str(tiny_causal_lm(arch))}
    data = make_suite(["naive"], training={"precision": "bf16", "eval_batch_size": 4})
    data["streams"] = [{"name": "instructions", "params": {"data_dir": str(folder), "max_len": 96, "general": "general.txt"}}]
    data["model"] = model if "init" in model else {**data["model"], **model}
    (cell,) = parse_suite(data, "precision.toml").cells
    stream = build_stream(cell)
    ctx = CellContext(cell, stream, build_model(cell, stream).eval(), torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    task = ctx.tasks[0]
    with autocast("bf16", ctx.device):
        plain = (ctx.kind.evaluate(ctx, 0, task), ctx.kind.answers(ctx, task), ctx.kind.evaluate_stream(ctx))
    with evaluating(ctx):
        dtypes = {n: p.dtype for n, p in ctx.model.named_parameters()}
        cast = (ctx.kind.evaluate(ctx, 0, task), ctx.kind.answers(ctx, task), ctx.kind.evaluate_stream(ctx))
    assert cast == plain
    assert sum(d == torch.bfloat16 for d in dtypes.values()) >= 4 * (1 if arch == "decoder" else 2)
    embeddings = [n for n in dtypes if "embed" in n or "wte" in n]
    assert embeddings and all(dtypes[n] == torch.float32 for n in embeddings)
    for n, p in ctx.model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
