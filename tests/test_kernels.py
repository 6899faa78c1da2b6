"""The Triton attention kernels (clbench.models.kernels) and the attention dispatch.

Triton decides when a kernel is *defined* whether it is compiled for the GPU or run by its CPU
interpreter, and its own library (tl.sum, ...) is defined when triton is first imported. So
``TRITON_INTERPRET=1`` must be set before anything imports triton: tests/conftest.py sets it
(some test dependencies import triton), this module sets it again for a run of this file alone,
and clbench.models.kernels refuses to import if the two were built differently. The whole test process
keeps the variable: it only matters to code that imports Triton. With
``CLBENCH_TEST_DEVICE=cuda`` the same tests run the compiled kernels on a GPU instead.

Accuracy criterion (FlashAttention's own, as in its hopper/test_flash_attn.py): against a float64
reference, the error of our output and gradients is at most twice the error of a plain torch
implementation in the same dtype (:func:`clbench.models.attention.reference_attention`) plus a noise
floor: ``(ref + 0.3 - 0.3 - ref)`` in that dtype, plus 1e-6 for the output and 1e-5 for the
gradients. The gradients' extra floor is for fp32 only in practice: a query row with a single
valid key (length 1) makes torch's softmax backward cancel exactly (``dP - sum(P dP)`` with P = 1),
while FlashAttention-2 subtracts ``delta = rowsum(dO * O)``, computed apart, and is off by about
ulp(dP), which dK sums over every query row (a few 1e-6 at N = 200).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

DEVICE = os.environ.get("CLBENCH_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before the first import of triton (see above)

triton = pytest.importorskip("triton", reason="triton is not installed on this platform")

from clbench.models import attention as dispatch  # noqa: E402
from clbench.models import kernels  # noqa: E402
from clbench.models.attention import attention, reference_attention  # noqa: E402
from clbench.errors import UserError  # noqa: E402
from clbench.models.kernels import flash_attention  # noqa: E402

if DEVICE == "cpu" and not kernels.INTERPRET:
    raise RuntimeError(
        "clbench.models.kernels was imported compiled before tests/test_kernels.py set TRITON_INTERPRET=1; "
        "set TRITON_INTERPRET=1 in the environment"
    )

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _grads(fn, q, k, v, do, **kw):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kw)
    out.backward(do)
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


def check_against_reference(q, k, v, lengths=None, causal=False, scale=None, seed=0):
    """Output and dq, dk, dv of our kernels against float64, FlashAttention's criterion."""
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(q.shape, generator=g).to(device=q.device, dtype=q.dtype)
    kw = dict(lengths=lengths, causal=causal, scale=scale)
    ours = _grads(flash_attention, q, k, v, do, **kw)
    ref = _grads(reference_attention, q.double(), k.double(), v.double(), do.double(), **kw)
    same_dtype = _grads(reference_attention, q, k, v, do, **kw)
    for name in ("out", "dq", "dk", "dv"):
        a, r, t = ours[name], ref[name], same_dtype[name]
        assert a.dtype == q.dtype and a.shape == r.shape, name
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        err = (a.double() - r).abs().max().item()
        err_torch = (t.double() - r).abs().max().item()
        rounded = r.to(q.dtype)
        noise = (rounded + 0.3 - 0.3 - rounded).abs().max().item() + (1e-6 if name == "out" else 1e-5)
        assert err <= 2 * err_torch + noise, (
            f"{name}: max error {err:.3g} > 2 x torch's {err_torch:.3g} + {noise:.3g}"
        )


def make_inputs(B, H, N, D, dtype, seed=0, n_k=None, lengths="mixed"):
    """q, k, v ~ N(0, 1) and lengths: a length-1 sequence, a full one, the rest random."""
    g = torch.Generator().manual_seed(seed)
    n_k = N if n_k is None else n_k
    q = torch.randn(B, H, N, D, generator=g).to(DEVICE, DTYPES[dtype])
    k, v = (torch.randn(B, H, n_k, D, generator=g).to(DEVICE, DTYPES[dtype]) for _ in range(2))
    if lengths == "mixed":
        lens = torch.randint(1, n_k + 1, (B,), generator=g)
        lens[0] = 1
        lens[-1] = n_k
        lengths = lens.to(DEVICE)
    return q, k, v, lengths


@pytest.fixture(autouse=True)
def _one_candidate_each_on_a_gpu(monkeypatch):
    """On a GPU each kernel runs one small candidate (64 x 64 tiles) only: tuning every new shape
    of these tests would compile every candidate for every (dtype, head dim, mask) variant,
    minutes of compiling. test_every_autotuning_candidate_on_a_gpu covers the others, and
    benchmarks/attention.py checks the tuned choices' answers at the large shapes."""
    if DEVICE == "cuda":
        f, one = kernels.flash, [(64, 64, 4, 2)]
        monkeypatch.setattr(f, "_KERNELS", f.autotuned_kernels(fwd=one, dkdv=one, dq=one))


@pytest.mark.slow
@pytest.mark.skipif(DEVICE != "cuda", reason="the interpreter runs one tiling (see test_other_tilings)")
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("mode", ["split", "atomic"])
def test_every_autotuning_candidate_on_a_gpu(monkeypatch, d, mode):
    f = kernels.flash
    monkeypatch.setenv("CLBENCH_FLASH_DQ", mode)
    lists = (f.FWD_CONFIGS[d], f.DKDV_CONFIGS[d], f.DQ_CONFIGS[d])
    for i in range(max(map(len, lists))):
        fwd, dkdv, dq = ([c[i % len(c)]] for c in lists)
        monkeypatch.setattr(f, "_KERNELS", f.autotuned_kernels(fwd=fwd, dkdv=dkdv, dq=dq))
        q, k, v, lengths = make_inputs(2, 2, 200, d, "bf16", seed=i)
        for causal in (False, True):
            check_against_reference(q, k, v, lengths, causal, seed=i)


# -- the correctness matrix ------------------------------------------------------------------

# A representative part runs by default; the full matrix is marked slow (it runs in CI).
FAST = [
    # (N, D, causal, dtype, lengths)
    (1, 64, True, "fp16", "mixed"),
    (17, 32, False, "fp32", "mixed"),
    (97, 64, True, "fp16", "mixed"),
    (97, 32, True, "bf16", "mixed"),
    (128, 32, True, "fp32", None),
    (200, 32, False, "fp16", "mixed"),
]
FULL = [
    (n, d, c, dt, ln)
    for dt in ("fp32", "fp16", "bf16")
    for c in (False, True)
    for n in (1, 17, 97, 128, 200)
    for d in (32, 64)
    for ln in ("mixed", None)
    if (n, d, c, dt, ln) not in FAST and not (ln is None and n in (1, 17))
]


def _id(case):
    n, d, c, dt, ln = case
    return f"N{n}-D{d}-{'causal' if c else 'full'}-{dt}-{'lengths' if ln else 'dense'}"


@pytest.mark.parametrize("case", FAST, ids=_id)
def test_matches_float64_reference(case):
    n, d, causal, dtype, lengths = case
    q, k, v, lengths = make_inputs(3, 2, n, d, dtype, lengths=lengths)
    check_against_reference(q, k, v, lengths, causal)


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL, ids=_id)
def test_matches_float64_reference_full_matrix(case):
    n, d, causal, dtype, lengths = case
    q, k, v, lengths = make_inputs(3, 2, n, d, dtype, seed=n + d, lengths=lengths)
    check_against_reference(q, k, v, lengths, causal, seed=1)


@pytest.mark.parametrize("case", [(97, 64, True, "fp16", "mixed"), (50, 32, False, "fp32", "mixed")], ids=_id)
def test_atomic_dq_matches_float64_reference(monkeypatch, case):
    """CLBENCH_FLASH_DQ=atomic: dQ accumulated by the dK/dV kernel with atomic adds."""
    monkeypatch.setenv("CLBENCH_FLASH_DQ", "atomic")
    n, d, causal, dtype, lengths = case
    q, k, v, lengths = make_inputs(3, 2, n, d, dtype, seed=11, lengths=lengths)
    check_against_reference(q, k, v, lengths, causal)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in FULL if c[1] == 64 and c[4] == "mixed"], ids=_id)
def test_atomic_dq_full_matrix(monkeypatch, case):
    monkeypatch.setenv("CLBENCH_FLASH_DQ", "atomic")
    n, d, causal, dtype, lengths = case
    q, k, v, lengths = make_inputs(3, 2, n, d, dtype, seed=n + 2, lengths=lengths)
    check_against_reference(q, k, v, lengths, causal, seed=2)


# A long run of full key blocks, then a partial last block, with mixed lengths and causal: on a GPU
# at N = 1531 (the device script's first gate runs the same case), in the interpreter at a shorter
# N that still gives 5 full 64-row blocks and a partial one. Lengths: 1, one that ends a row into a
# block, and the full N. Each case alternates the tensor-descriptor (TMA) loads off and on.
LONG_N = 1531 if DEVICE == "cuda" else 331


@pytest.mark.parametrize("d, mode, tma", [(64, "split", "0"), (64, "atomic", "1"), (128, "split", "1"),
                                          (128, "atomic", "0")], ids=lambda x: str(x))
def test_a_long_run_of_full_blocks_then_a_partial_one(monkeypatch, d, mode, tma):
    monkeypatch.setenv("CLBENCH_FLASH_DQ", mode)
    monkeypatch.setenv("CLBENCH_FLASH_TMA", tma)
    q, k, v, _ = make_inputs(3, 1, LONG_N, d, "bf16", seed=d)
    lengths = torch.tensor([1, LONG_N - 74, LONG_N], device=DEVICE)
    check_against_reference(q, k, v, lengths, causal=True)


# Other tilings (on a GPU the autotuner picks among several); interpreted runs default to 64 x 64.
TILINGS = [
    {"fwd": (16, 32), "dkdv": (32, 16), "dq": (16, 32)},
    {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)},
]


@pytest.mark.skipif(DEVICE != "cpu", reason="block sizes are fixed only in the interpreter")
@pytest.mark.parametrize("tiling", TILINGS, ids=["narrow-keys", "narrow-queries"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_other_tilings(monkeypatch, tiling, causal):
    monkeypatch.setattr(kernels.flash, "INTERPRET_BLOCKS", tiling)
    q, k, v, lengths = make_inputs(3, 1, 50, 32, "fp32", seed=3)
    check_against_reference(q, k, v, lengths, causal)


@pytest.mark.slow
@pytest.mark.skipif(DEVICE != "cpu", reason="block sizes are fixed only in the interpreter")
@pytest.mark.parametrize("tiling", TILINGS + [{"fwd": (128, 64), "dkdv": (32, 128), "dq": (128, 32)}])
@pytest.mark.parametrize("n", [33, 130])
def test_other_tilings_full(monkeypatch, tiling, n):
    monkeypatch.setattr(kernels.flash, "INTERPRET_BLOCKS", tiling)
    for causal in (False, True):
        q, k, v, lengths = make_inputs(2, 2, n, 64, "fp16", seed=n)
        check_against_reference(q, k, v, lengths, causal)


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU every test already runs the autotuned kernels")
@pytest.mark.parametrize("mode", ["split", "atomic"])
def test_the_autotuned_launch_path(monkeypatch, mode):
    """What a GPU runs, in the interpreter: the kernels wrapped in triton.autotune with our key,
    pruning and reset of the atomic dQ buffer, launched on the grid of the chosen tiling. Each
    candidate runs once on the CPU; the ranking is made up (the last one run wins) so that the
    winners are the tiles narrow along each kernel's grid, which a grid computed from the wrong
    block size would not cover."""
    timed = []

    def last_run_wins(kernel_call, quantiles):
        kernel_call()
        timed.append(1.0 / (len(timed) + 1))
        return [timed[-1]] * len(quantiles)

    # N = 40 buckets to 64: all three kept; N = 17 buckets to 32: the 64 x 64 tile is pruned
    narrow_m = [(32, 16, 4, 1), (64, 64, 4, 1), (16, 32, 4, 1)]  # fwd and dQ: grid over query blocks
    narrow_n = [(16, 32, 4, 1), (64, 64, 4, 1), (32, 16, 4, 1)]  # dK/dV: grid over key blocks
    tuned = kernels.flash.autotuned_kernels(fwd=narrow_m, dkdv=narrow_n, dq=narrow_m, do_bench=last_run_wins)
    monkeypatch.setattr(kernels.flash, "_KERNELS", tuned)
    monkeypatch.setenv("CLBENCH_FLASH_DQ", mode)
    q, k, v, lengths = make_inputs(2, 2, 40, 32, "fp16", seed=5)
    # each candidate runs once while tuning, then the chosen one for real: an atomic dQ buffer not
    # zeroed between runs would hold several runs' sums
    check_against_reference(q, k, v, lengths, causal=True)
    used = ["fwd", "dkdv_atomic"] if mode == "atomic" else ["fwd", "dkdv", "dq"]
    assert len(timed) == 3 * len(used)
    for name in used:
        assert set(tuned[name].configs_timings) == set(tuned[name].configs)
        assert [c.kwargs for c in tuned[name].cache.values()] == [tuned[name].configs[-1].kwargs]
    # the choice is kept: new inputs of that shape run the chosen tiling alone (alone: the tuning
    # runs above also wrote every output row, so only now would a grid too small show)
    q, k, v, lengths = make_inputs(2, 2, 40, 32, "fp16", seed=7)
    check_against_reference(q, k, v, lengths, causal=True)
    assert len(timed) == 3 * len(used)
    for name in used:  # launched directly, without the autotuner
        assert [c.kwargs for c in tuned[name].chosen.values()] == [tuned[name].configs[-1].kwargs]

    # a short sequence prunes the tiles longer than it (N = 17 buckets to 32)
    q, k, v, lengths = make_inputs(2, 2, 17, 32, "fp16", seed=6)
    timed.clear()
    check_against_reference(q, k, v, lengths, causal=False)
    assert len(timed) == 2 * len(used)
    for name in used:
        assert all(c.kwargs["BLOCK_M"] <= 32 and c.kwargs["BLOCK_N"] <= 32 for c in tuned[name].configs_timings)


def test_autotuning_candidates_are_pruned_by_head_dim_dtype_and_length():
    f = kernels.flash
    prune = f._pruner(f.FWD_CONFIGS)
    every = f._configs(dict.fromkeys(s for by_d in f.FWD_CONFIGS.values() for s in by_d))
    bf16, fp32 = (torch.empty(1, dtype=t) for t in (torch.bfloat16, torch.float32))
    kept = {d: [f._shape(c) for c in prune(every, {"Q": bf16}, N_BUCKET=4096, BLOCK_D=d)] for d in (32, 64, 128)}
    assert set(kept[32]) == set(kept[64]) == set(f.FWD_CONFIGS[64]) and set(kept[128]) == set(f.FWD_CONFIGS[128])
    assert set(map(f._shape, prune(every, {"Q": fp32}, N_BUCKET=4096, BLOCK_D=128))) == set(f.FWD_CONFIGS["fp32"])
    short = set(map(f._shape, prune(every, {"Q": bf16}, N_BUCKET=64, BLOCK_D=64)))
    assert short and short == {c for c in f.FWD_CONFIGS[64] if max(c[:2]) <= 64} != set(f.FWD_CONFIGS[64])
    assert {w for *_, w, _ in f.FWD_CONFIGS[64]} >= {4, 8} and {s for *_, s in f.FWD_CONFIGS[64]} >= {2, 4}


def test_dq_mode_and_descriptors_by_device(monkeypatch):
    """atomic dQ and tensor descriptors by default on Hopper (compute capability 9) and newer."""
    f = kernels.flash
    monkeypatch.delenv("CLBENCH_FLASH_DQ", raising=False)
    monkeypatch.delenv("CLBENCH_FLASH_TMA", raising=False)
    cuda = torch.device("cuda", 0)
    for capability, mode in (((9, 0), "atomic"), ((8, 0), "split")):
        monkeypatch.setattr(f, "_capability", lambda index, c=capability: c)
        assert f.dq_mode(cuda) == mode
    assert f.dq_mode(torch.device("cpu")) == f.dq_mode() == "split"
    t = torch.randn(2, 3, 8, 16, dtype=torch.float16)
    assert not f.descriptors(t)  # not a Hopper GPU
    monkeypatch.setenv("CLBENCH_FLASH_TMA", "1")
    assert f.descriptors(t, t.transpose(1, 2)) == f.HAS_DESCRIPTORS
    assert f.descriptors(torch.ones(1, 1, 8, 16).expand(2, 3, 8, 16)) == f.HAS_DESCRIPTORS  # one head for all
    assert not f.descriptors(torch.ones(2, 3, 1, 16).expand(2, 3, 8, 16))  # one row for all
    assert not f.descriptors(torch.randn(2, 3, 8, 6, dtype=torch.float16))  # rows 12 bytes apart
    monkeypatch.setenv("CLBENCH_FLASH_TMA", "0")
    assert not f.descriptors(t)


@pytest.mark.parametrize("d", [16, 48, 128])
def test_head_dims(d):
    """16 and 128 are the ends of the range; 48 is padded to a 64-wide tile."""
    q, k, v, lengths = make_inputs(2, 2, 40, d, "fp16", seed=d)
    check_against_reference(q, k, v, lengths, causal=True)


def test_queries_and_keys_of_different_lengths_and_a_scale():
    """Causal attention is aligned to the bottom right (query i sees keys j <= i + N_K - N_Q)."""
    q, k, v, lengths = make_inputs(2, 2, 20, 32, "fp32", n_k=45, seed=4)
    check_against_reference(q, k, v, lengths, causal=True, scale=0.3)
    q, k, v, lengths = make_inputs(2, 2, 45, 32, "fp32", n_k=20, seed=5)  # first rows see no key
    check_against_reference(q, k, v, None, causal=True)
    check_against_reference(q, k, v, lengths, causal=False, scale=0.05)


def test_rows_without_a_valid_key_give_zeros_not_nan():
    q, k, v, _ = make_inputs(3, 2, 70, 32, "fp16", seed=6)
    lengths = torch.tensor([0, 70, 0], device=DEVICE)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = flash_attention(q, k, v, lengths=lengths, causal=True)
    out.backward(torch.ones_like(out))
    assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))
    for b in (0, 2):
        assert torch.equal(out[b], torch.zeros_like(out[b]))
        assert not q.grad[b].any() and not k.grad[b].any() and not v.grad[b].any()
    assert out[1].abs().sum() > 0 and q.grad[1].abs().sum() > 0


def test_padding_content_does_not_matter():
    """Keys and values past a sequence's length, even NaN, change neither output nor gradients."""
    q, k, v, lengths = make_inputs(3, 1, 70, 32, "fp32", seed=7)
    clean = [flash_attention(q, k, v, lengths=lengths, causal=c) for c in (False, True)]
    k2, v2 = k.clone(), v.clone()
    for b, n in enumerate(lengths.tolist()):
        k2[b, :, n:] = float("nan")
        v2[b, :, n:] = float("inf")
    k2.requires_grad_()
    for c, ref in zip((False, True), clean):
        out = flash_attention(q, k2, v2, lengths=lengths, causal=c)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        out.sum().backward()
        assert torch.isfinite(k2.grad).all()


@pytest.mark.parametrize("mode", ["split", "atomic"])
def test_skipping_padded_query_rows(monkeypatch, mode):
    """skip_padded_queries: rows at or past a sequence's length give zeros, the other rows and,
    when the discarded rows get no gradient, dq, dk and dv are those of the full computation; SDPA
    and the reference zero the same rows."""
    monkeypatch.setenv("CLBENCH_FLASH_DQ", mode)
    q, k, v, lengths = make_inputs(3, 2, 150, 32, "fp32", seed=12)
    padded = torch.arange(150, device=DEVICE)[None, None, :, None] >= lengths[:, None, None, None]
    do = torch.randn(q.shape, device=DEVICE).masked_fill(padded, 0.0)
    for causal in (False, True):
        full = _grads(flash_attention, q, k, v, do, lengths=lengths, causal=causal)
        skip = _grads(flash_attention, q, k, v, do, lengths=lengths, causal=causal, skip_padded_queries=True)
        assert not skip["out"].masked_select(padded).any() and full["out"].masked_select(padded).any()
        torch.testing.assert_close(skip["out"], full["out"].masked_fill(padded, 0.0), rtol=0, atol=0)
        for name in ("dq", "dk", "dv"):
            torch.testing.assert_close(skip[name], full[name], rtol=1e-6, atol=1e-6)
        for fn in (dispatch.sdpa_attention, reference_attention):
            torch.testing.assert_close(fn(q, k, v, lengths, causal, None, True), skip["out"], rtol=1e-5, atol=1e-5)


def test_the_model_discards_the_skipped_rows(monkeypatch):
    """CLBENCH_SKIP_PADDED_QUERIES=1 changes the padded positions only: the model's features are
    the same, bit for bit (on the CPU's SDPA path; the kernels compute the same rows the same way)."""
    from clbench.models import ModelConfig, Transformer

    monkeypatch.delenv("CLBENCH_ATTENTION", raising=False)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=32, n_heads=2, n_layers=3), input_kind="tokens", input_dim=20,
                        n_classes=4)
    x, lengths = torch.randint(0, 20, (3, 12)), torch.tensor([12, 5, 1])
    monkeypatch.setenv("CLBENCH_SKIP_PADDED_QUERIES", "0")
    h_full, f_full = model.hidden_states(x, lengths), model.features(x, lengths)
    monkeypatch.setenv("CLBENCH_SKIP_PADDED_QUERIES", "1")
    h_skip, f_skip = model.hidden_states(x, lengths), model.features(x, lengths)
    assert torch.equal(f_skip, f_full)
    valid = torch.arange(12)[None, :] < lengths[:, None]
    assert torch.equal(h_skip[valid], h_full[valid]) and not torch.equal(h_skip[~valid], h_full[~valid])


def test_lengths_of_any_integer_dtype():
    q, k, v, lengths = make_inputs(3, 2, 70, 32, "fp16", seed=13)
    out = {dt: flash_attention(q, k, v, lengths=lengths.to(dt), causal=True) for dt in (torch.int64, torch.int32)}
    assert torch.equal(out[torch.int64], out[torch.int32])


def test_autocast_casts_fp32_inputs(monkeypatch):
    """Under autocast the kernels (and the dispatch, whatever it picks) run in autocast's dtype."""
    q, k, v, lengths = make_inputs(2, 2, 40, 32, "fp32", seed=14)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        ours = flash_attention(q, k, v, lengths=lengths, causal=True)
        monkeypatch.setenv("CLBENCH_ATTENTION", "reference")
        ref = attention(q, k, v, lengths=lengths, causal=True)
    assert ours.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(ours, flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), lengths=lengths, causal=True))
    assert torch.equal(ref, reference_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), lengths, True))


@pytest.mark.skipif(DEVICE != "cpu", reason="counts the interpreter's matrix products")
def test_key_blocks_past_the_length_and_the_diagonal_are_skipped(monkeypatch):
    """Count the tile products the interpreter executes: blocks that no query can see (past the
    sequence's length, above the causal diagonal) are never visited, not merely masked."""
    from triton.runtime import interpreter

    monkeypatch.setattr(kernels.flash, "INTERPRET_BLOCKS", {"fwd": (64, 64), "dkdv": (64, 64), "dq": (64, 64)})
    count = [0]
    real_dot = interpreter.interpreter_builder.create_dot

    def counting_dot(*args, **kw):
        count[0] += 1
        return real_dot(*args, **kw)

    monkeypatch.setattr(interpreter.interpreter_builder, "create_dot", counting_dot)

    def products(lengths, causal, skip=False):
        q, k, v, _ = make_inputs(1, 1, 256, 32, "fp16", seed=8)
        q.requires_grad_()
        count[0] = 0
        out = flash_attention(q, k, v, lengths=lengths, causal=causal, skip_padded_queries=skip)
        fwd = count[0]
        out.sum().backward()
        return fwd, count[0] - fwd

    # 4 query blocks x 4 key blocks; per (query, key) block pair the forward does 2 products, the
    # backward 4 (dK and dV: S, dV, dP, dK) + 3 (dQ: S, dP, dQ)
    assert products(None, False) == (4 * 4 * 2, 4 * 4 * 7)
    # length 70: key blocks 2 and 3 are never visited
    assert products(torch.tensor([70]), False) == (4 * 2 * 2, 4 * 2 * 7)
    # causal: query block i visits key blocks 0..i
    assert products(None, True) == (10 * 2, 10 * 7)
    # both: min(i + 1, 2) key blocks
    assert products(torch.tensor([70]), True) == (7 * 2, 7 * 7)
    # a length-0 sequence: nothing at all
    assert products(torch.tensor([0]), True) == (0, 0)
    # atomic dQ: 5 products per block pair in the backward (S, dV, dP, dK, dQ)
    monkeypatch.setenv("CLBENCH_FLASH_DQ", "atomic")
    assert products(torch.tensor([70]), True) == (7 * 2, 7 * 5)
    # skipping padded query rows: query blocks 2 and 3 (past 70) do no work either
    assert products(torch.tensor([70]), False, skip=True) == (2 * 2 * 2, 2 * 2 * 5)


def test_bad_inputs_are_refused_with_a_reason():
    q = torch.randn(1, 1, 4, 8, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(q, q, q)
    q = torch.randn(1, 1, 4, 256, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim 256"):
        flash_attention(q, q, q)
    q = torch.randn(2, 1, 4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="lengths"):
        flash_attention(q, q, q, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="scale must be positive"):
        flash_attention(q, q, q, scale=-1.0)


def test_second_derivatives_are_refused_not_wrong():
    q = torch.randn(1, 1, 4, 16, device=DEVICE, requires_grad=True)
    (g,) = torch.autograd.grad(flash_attention(q, q, q).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice|does not require grad"):
        g.sum().backward()


def test_an_unknown_dq_mode_is_a_user_error(monkeypatch):
    monkeypatch.setenv("CLBENCH_FLASH_DQ", "fast")
    q = torch.randn(1, 1, 4, 16, device=DEVICE, requires_grad=True)
    out = flash_attention(q, q, q)
    with pytest.raises(UserError, match="CLBENCH_FLASH_DQ='fast' is not one of: split, atomic"):
        out.sum().backward()


# -- the dispatch ----------------------------------------------------------------------------


def test_dispatch_defaults_and_forcing(monkeypatch):
    monkeypatch.delenv("CLBENCH_ATTENTION", raising=False)
    cpu = torch.randn(1, 1, 4, 8)
    assert dispatch.choose(cpu) == "sdpa"
    q, k, v, lengths = make_inputs(2, 2, 9, 16, "fp32", seed=9)
    for name in ("triton", "sdpa", "reference"):
        monkeypatch.setenv("CLBENCH_ATTENTION", name)
        assert dispatch.choose(q, k, v, lengths) == name
        out = attention(q, k, v, lengths=lengths, causal=True)
        torch.testing.assert_close(out, reference_attention(q, k, v, lengths, True), atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("CLBENCH_ATTENTION", "flash")
    with pytest.raises(UserError, match="not one of: triton, sdpa, reference"):
        attention(q, k, v)
    monkeypatch.setenv("CLBENCH_ATTENTION", "triton")
    q64 = q.double()
    with pytest.raises(UserError, match="cannot run here: dtype torch.float64"):
        attention(q64, q64, q64)


class FakeCuda:
    """What choose() and unsupported() look at, without a GPU."""

    is_cuda = True
    device = torch.device("cuda", 0)
    shape = torch.Size([1, 1, 4, 8])

    def __init__(self, dtype=torch.bfloat16):
        self.dtype = dtype

    def dim(self):
        return 4


def test_cuda_tensors_default_to_triton_in_16_bits(monkeypatch, recwarn):
    """choose() sends fp16/bf16 CUDA tensors to the kernels when they take them, fp32 ones and
    the rest to SDPA, with one warning per reason."""
    monkeypatch.delenv("CLBENCH_ATTENTION", raising=False)
    monkeypatch.setattr(dispatch, "_warned", set())
    seen = []
    monkeypatch.setattr(kernels, "unsupported", lambda *a: seen.append(a) or None)
    assert dispatch.choose(FakeCuda()) == "triton" and seen and not recwarn.list
    for _ in range(2):
        assert dispatch.choose(FakeCuda(torch.float32)) == "sdpa"
    monkeypatch.setattr(kernels, "unsupported", lambda *a: "head_dim 256 is outside 1..128")
    assert dispatch.choose(FakeCuda()) == "sdpa"
    monkeypatch.setattr(dispatch, "_kernels", False)  # triton missing
    assert dispatch.choose(FakeCuda()) == "sdpa"
    said = [str(w.message) for w in recwarn.list]
    assert len(said) == 3 and "fp32 goes to SDPA" in said[0] and "head_dim 256" in said[1], said


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter is on only in the CPU run")
def test_the_interpreter_refuses_cuda_tensors(monkeypatch):
    fake = FakeCuda()
    assert "TRITON_INTERPRET=1 would run them in Triton's CPU interpreter" in kernels.unsupported(fake, fake, fake)
    monkeypatch.setenv("CLBENCH_ATTENTION", "triton")
    with pytest.raises(UserError, match="cannot run here: TRITON_INTERPRET=1"):
        dispatch.choose(fake, fake, fake)


def test_recording_the_implementations_that_ran(monkeypatch):
    q, k, v, lengths = make_inputs(2, 1, 9, 16, "fp32", seed=9)
    with dispatch.recording() as outer:
        monkeypatch.setenv("CLBENCH_ATTENTION", "reference")
        attention(q, k, v)
        with dispatch.recording() as inner:
            monkeypatch.setenv("CLBENCH_ATTENTION", "triton")
            attention(q, k, v, lengths=lengths)
        monkeypatch.delenv("CLBENCH_ATTENTION")
        attention(q, k, v)
    assert inner == {"triton"} and outer == {"reference", "sdpa"}


def test_kernels_refuse_to_import_when_triton_was_imported_in_the_other_mode():
    code = (
        "import os, triton.language\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "import clbench.models.kernels\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "TRITON_INTERPRET changed between the first import of triton" in r.stderr


def test_cpu_users_never_import_triton():
    code = (
        "import sys, torch\n"
        "from clbench.models import ModelConfig, Transformer\n"
        "m = Transformer(ModelConfig(d_model=32, n_heads=2, n_layers=1), input_kind='tokens', input_dim=9, n_classes=3)\n"
        "m(torch.randint(0, 9, (2, 5)), torch.tensor([3, 5])).sum().backward()\n"
        "assert 'triton' not in sys.modules and 'clbench.models.kernels' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CLBENCH_ATTENTION", "TRITON_INTERPRET")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- the model trains the same on both paths ---------------------------------------------------


def test_model_training_steps_match_sdpa(monkeypatch):
    from clbench.models import ModelConfig, Transformer

    def losses(impl: str) -> list[float]:
        monkeypatch.setenv("CLBENCH_ATTENTION", impl)
        torch.manual_seed(0)
        cfg = ModelConfig(d_model=32, n_heads=2, n_layers=2, causal=False)
        model = Transformer(cfg, input_kind="tokens", input_dim=20, n_classes=4).to(DEVICE)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        x = torch.randint(0, 20, (4, 24), generator=g).to(DEVICE)
        y = torch.randint(0, 4, (4,), generator=g).to(DEVICE)
        lengths = torch.tensor([24, 5, 17, 1], device=DEVICE)
        out = []
        for _ in range(4):
            loss = torch.nn.functional.cross_entropy(model(x, lengths), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    sdpa, ours = losses("sdpa"), losses("triton")
    assert sdpa[-1] < sdpa[0]  # it learns something, so the steps matter
    assert ours == pytest.approx(sdpa, rel=1e-4, abs=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU, run the script itself")
def test_the_device_script_runs_through_in_a_dry_run(tmp_path):
    """benchmarks/gpu_checks.sh --dry-run: every step's code on the CPU, the kernels interpreted,
    at tiny shapes, with python3 and a PYTHONPATH shim as on the device: every step ok, the gate's
    six cases passed, each kernel's candidates compiled, a row of ours with numbers and answers
    close to SDPA's for every case, and the model's step on each implementation."""
    root = os.path.join(os.path.dirname(__file__), "..")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLBENCH_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    run = subprocess.run(["bash", "benchmarks/gpu_checks.sh", str(tmp_path), "--dry-run"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]

    def of(step):
        return [r for r in rows if r["step"] == step]

    steps = ("versions", "gate", "compile", "time", "model", "tests")
    assert {r["name"]: r["result"] for r in of("script")} == dict.fromkeys(steps, "ok")
    assert len(of("versions")) == 1 and of("versions")[0]["interpreted"]
    assert len(of("gate")) == 6 and all(r["ok"] and r["max_gap"] < 0.05 for r in of("gate"))
    compiled = [r for r in of("compile") if "kernel" in r]
    assert {r["kernel"] for r in compiled} == {"fwd", "dkdv", "dkdv_atomic", "dq"}
    assert not any("error" in r for r in of("compile"))
    # dense: (bf16: 3 of ours, fp32: 2) x 2 causal modes; padded: 3 of ours x 2 dtypes
    for kind, count in (("dense", 10), ("padded", 6)):
        ours = [r for r in of(kind) if r.get("impl", "").startswith("ours")]
        assert len(ours) == count and all(r["tflops"]["fwd+bwd"] > 0 and r["gap"] < 0.05 for r in ours), ours
    model = {(r["precision"], r["impl"]): r for r in of("model")}
    assert len(model) == 4 and all(r["ms"] > 0 for r in model.values())
    assert model["bf16", "ours (dQ atomic)"]["attention"] == "triton"
    assert model["fp32", "sdpa (the default)"]["attention"] == "sdpa"


def test_causal_attention_of_fewer_queries_than_keys_aligns_them_with_the_last_keys():
    """Queries that continue a cache (the last ``n_q`` of ``n_k`` positions) see the keys up to
    their own position, on every path, with or without lengths (SDPA's own ``is_causal`` would
    align them with the first keys)."""
    q, k, v, lengths = make_inputs(2, 2, 12, 16, "fp32", seed=21)
    q = q[:, :, -5:]
    for lens in (None, lengths.clamp(min=8)):
        want = reference_attention(q, k, v, lens, True)
        torch.testing.assert_close(dispatch.sdpa_attention(q, k, v, lens, True), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(flash_attention(q, k, v, lengths=lens, causal=True), want, rtol=1e-4, atol=1e-4)
