"""FlashAttention-2 forward and backward in Triton (after Dao 2023 and Triton's fused-attention
tutorial), for ``(B, H, N, D)`` tensors in fp32, fp16 or bf16 with ``D <= 128``.

Forward: one program per (query block, batch × head). It streams key/value blocks through an
online softmax in base 2 (the softmax scale times log2(e) is folded into the scores), keeps the
output accumulator in fp32 registers, and saves the row's log-sum-exp (base 2) for the backward.
The attention matrix is never written to memory.

Backward: ``delta = rowsum(dO ∘ O)`` first, then the probabilities are recomputed from the saved
log-sum-exp: one program per key block accumulates dK and dV over the query blocks that see it,
and one program per query block accumulates dQ over its key blocks (deterministic, the
default). With ``CLBENCH_FLASH_DQ=atomic`` the dK/dV programs instead add their share of dQ to
an fp32 buffer with atomic adds, as FlashAttention-2 does (see :func:`dq_mode`).

Masking. ``lengths[b]`` is the number of valid keys of sequence ``b``. Loops stop at the last key
block a query block can see (``min(length, causal diagonal)``), so blocks past a sequence's length
are never loaded, and a key-block program past the length does no work. Each loop has two stages:
blocks that need no mask (fully valid, fully below the diagonal), then the few boundary blocks
that do. Causal attention is aligned to the bottom right (query ``i`` sees keys
``j <= i + N_K - N_Q``), as FlashAttention-2 and :func:`clbench.models.attention.reference_attention`
do. A row without any valid key gets zeros in the output and gradients, never NaN: its
accumulators stay zero and its log-sum-exp is stored as +inf, so its recomputed probabilities
are exactly zero.

On a GPU each kernel is autotuned over block sizes, warps and pipeline stages (keyed on head
dimension, mask flags, dtype and N rounded up to a power of two). Under ``TRITON_INTERPRET=1``
(CPU tensors, tests) each runs one fixed configuration, :data:`INTERPRET_BLOCKS`, and bf16
values are kept in fp32 registers, rounded to bf16's precision where a GPU would round (the
interpreter multiplies bf16 bit patterns as integers and truncates when it converts to bf16).
See docs/kernels.md.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl


def _interpreting() -> bool:
    """Whether ``triton.jit`` builds interpreted kernels (read when this module is imported)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


INTERPRET = _interpreting()
# Triton's own library functions (tl.sum, tl.max, ...) were built, compiled or interpreted, when
# triton.language was first imported; ours must be built the same way or no kernel runs.
if INTERPRET != (type(tl.sum).__name__ == "InterpretedFunction"):
    raise ImportError(
        "TRITON_INTERPRET changed between the first import of triton and that of clbench.models.kernels; "
        "set it (or unset it) before anything imports triton, e.g. in the environment"
    )
LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 128

#: (BLOCK_M, BLOCK_N) of each kernel when interpreting; tests may change it to cover other tilings.
INTERPRET_BLOCKS = {"fwd": (64, 64), "dkdv": (64, 64), "dq": (64, 64)}


# --------------------------------------------------------------------------------------------
# small helpers


@triton.jit
def _round_bf16(x):
    """fp32 ``x`` rounded to bf16's precision (to nearest, ties to even), kept in fp32: what a
    GPU's fp32 -> bf16 conversion gives. Only used when interpreting bf16 (BF16_IN_FP32), where
    Triton's interpreter neither multiplies bf16 tiles correctly nor rounds to them (it
    truncates), so the kernels keep bf16 values in fp32 registers."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _valid_keys(Lengths, b, N_K, HAS_LENGTHS: tl.constexpr):
    """Number of valid keys of sequence ``b``: ``clamp(lengths[b], 0, N_K)``."""
    if HAS_LENGTHS:
        n = tl.load(Lengths + b).to(tl.int32)
        return tl.minimum(tl.maximum(n, 0), N_K)
    else:
        return N_K + tl.zeros([], dtype=tl.int32)


@triton.jit
def _key_bounds(start_m, n_valid, diag, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """For the query block at ``start_m``: the end of the key blocks that need no mask (a multiple
    of BLOCK_N) and the end of all key blocks any of its rows can see."""
    hi = n_valid
    full = n_valid
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BLOCK_M + diag)  # the block's last row sees keys < this
        full = tl.minimum(full, start_m + 1 + diag)  # its first row sees keys < this
    hi = tl.maximum(hi, 0)
    full = tl.maximum(full, 0) // BLOCK_N * BLOCK_N
    return full, hi


# --------------------------------------------------------------------------------------------
# forward


@triton.jit
def _fwd_keys(acc, l_i, m_i, q, k_ptrs, v_ptrs, k_offs, v_offs, stride_kn, stride_vn, offs_m, offs_n, offs_d,
              lo, hi, n_valid, diag, qk_scale,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
              BF16_IN_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """Fold key blocks ``[lo, hi)`` into the online softmax of one query block."""
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k_at = k_ptrs + (k_offs + start_n * stride_kn)
        v_at = v_ptrs + (v_offs + start_n * stride_vn)
        if MASKED or not EVEN_D:
            kt = tl.load(k_at, mask=(cols[None, :] < n_valid) & (offs_d[:, None] < HEAD_DIM), other=0.0)  # (BLOCK_D, BLOCK_N)
            v = tl.load(v_at, mask=(cols[:, None] < n_valid) & (offs_d[None, :] < HEAD_DIM), other=0.0)  # (BLOCK_N, BLOCK_D)
        else:
            kt = tl.load(k_at)
            v = tl.load(v_at)
        if BF16_IN_FP32:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PRECISION)  # (BLOCK_M, BLOCK_N), unscaled
        if MASKED:
            keep = cols[None, :] < n_valid
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(keep, s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
        else:  # qk_scale > 0, so max(s) * qk_scale = max(s * qk_scale); one FMA per score
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if BF16_IN_FP32:
            p = _round_bf16(p)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, Lengths,
              stride_qb, stride_qh, stride_qn, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_on, stride_od,
              H, N_Q, N_K, qk_scale,
              N_BUCKET, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, BF16_IN_FP32: tl.constexpr,
              PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    if CAUSAL:  # the last query blocks see the most keys: start them first
        pid_m = tl.num_programs(0) - 1 - pid_m
    start_m = pid_m * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    diag = N_K - N_Q  # causal: query i sees keys j <= i + diag
    n_valid = _valid_keys(Lengths, b, N_K, HAS_LENGTHS)
    full, hi = _key_bounds(start_m, n_valid, diag, CAUSAL, BLOCK_M, BLOCK_N)

    row_ok = offs_m[:, None] < N_Q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn
                + offs_d[None, :] * stride_qd, mask=row_ok & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if BF16_IN_FP32:  # interpreting bf16: work on fp32 copies (see _round_bf16)
        q = q.to(tl.float32)
    k_ptrs = K + b * stride_kb + h * stride_kh  # scalar bases; int32 tile offsets below
    v_ptrs = V + b * stride_vb + h * stride_vh
    k_offs = offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_offs = offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

    # m starts finite so that a row whose keys are all masked never computes (-inf) - (-inf)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, l_i, m_i = _fwd_keys(acc, l_i, m_i, q, k_ptrs, v_ptrs, k_offs, v_offs, stride_kn, stride_vn, offs_m, offs_n,
                              offs_d, 0, full, n_valid, diag, qk_scale, False, CAUSAL, HEAD_DIM,
                              BLOCK_D, BLOCK_N, BF16_IN_FP32, PRECISION)
    acc, l_i, m_i = _fwd_keys(acc, l_i, m_i, q, k_ptrs, v_ptrs, k_offs, v_offs, stride_kn, stride_vn, offs_m, offs_n,
                              offs_d, full, hi, n_valid, diag, qk_scale, True, CAUSAL, HEAD_DIM,
                              BLOCK_D, BLOCK_N, BF16_IN_FP32, PRECISION)
    has_keys = l_i > 0.0
    acc = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("inf"))
    tl.store(LSE + bh * N_Q + offs_m, lse, mask=offs_m < N_Q)
    if BF16_IN_FP32:
        acc = _round_bf16(acc)
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
             acc.to(O.dtype.element_ty), mask=row_ok & (offs_d[None, :] < HEAD_DIM))


# --------------------------------------------------------------------------------------------
# backward


@triton.jit
def _attn_bwd_delta(O, DO, DELTA,
                    stride_ob, stride_oh, stride_on, stride_od,
                    stride_db, stride_dh, stride_dn, stride_dd,
                    H, N_Q, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d], in fp32."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dn + offs_d[None, :] * stride_dd,
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * N_Q + offs_m, tl.sum(o * do, 1), mask=offs_m < N_Q)


@triton.jit
def _dkdv_queries(dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, stride_qn, stride_don, LSE, DELTA, offs_m,
                  offs_n, offs_d, lo, hi, N_Q, n_valid, diag, qk_scale, sm_scale,
                  MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_M: tl.constexpr, DTYPE: tl.constexpr, BF16_IN_FP32: tl.constexpr,
                  PRECISION: tl.constexpr, DQ_ATOMIC: tl.constexpr):
    """Accumulate the query blocks ``[lo, hi)`` into one key block's dK and dV (and, with
    DQ_ATOMIC, add their share of dQ to the fp32 accumulator)."""
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m
        row_ok = rows < N_Q
        qt = tl.load(q_ptrs + start_m * stride_qn, mask=row_ok[None, :] & (offs_d[:, None] < HEAD_DIM),
                     other=0.0)  # (BLOCK_D, BLOCK_M)
        do = tl.load(do_ptrs + start_m * stride_don, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM),
                     other=0.0)  # (BLOCK_M, BLOCK_D)
        if BF16_IN_FP32:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
        # Pᵀ recomputed from the saved log-sum-exp; +inf (no valid key, or past N_Q) gives 0
        pt = tl.math.exp2(tl.dot(k, qt, input_precision=PRECISION) * qk_scale - lse[None, :])
        if MASKED:
            keep = offs_n[:, None] < n_valid
            if CAUSAL:
                keep = keep & (offs_n[:, None] <= rows[None, :] + diag)
            pt = tl.where(keep, pt, 0.0)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        dst = pt * (dpt - delta[None, :])
        if BF16_IN_FP32:
            pt = _round_bf16(pt)
            dst = _round_bf16(dst)
        else:
            pt = pt.to(DTYPE)
            dst = dst.to(DTYPE)
        dv = tl.dot(pt, do, dv, input_precision=PRECISION)
        dk = tl.dot(dst, tl.trans(qt), dk, input_precision=PRECISION)
        if DQ_ATOMIC:
            dq = tl.dot(tl.trans(dst), k, input_precision=PRECISION) * sm_scale  # (BLOCK_M, BLOCK_D)
            tl.atomic_add(dq_ptrs + start_m * HEAD_DIM, dq, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM),
                          sem="relaxed")
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, Lengths, DQ_ACC,
                   stride_qb, stride_qh, stride_qn, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_dob, stride_doh, stride_don, stride_dod,
                   stride_gb, stride_gh, stride_gn, stride_gd,  # dK and dV share one layout
                   H, N_Q, N_K, qk_scale, sm_scale,
                   N_BUCKET, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, BF16_IN_FP32: tl.constexpr,
                   PRECISION: tl.constexpr, DQ_ATOMIC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    diag = N_K - N_Q
    n_valid = _valid_keys(Lengths, b, N_K, HAS_LENGTHS)

    kv_mask = (offs_n[:, None] < n_valid) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=kv_mask, other=0.0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=kv_mask, other=0.0)
    if BF16_IN_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[None, :] * stride_qn + offs_d[:, None] * stride_qd
    do_ptrs = DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod
    dq_ptrs = DQ_ACC + bh.to(tl.int64) * N_Q * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    LSE += bh * N_Q
    DELTA += bh * N_Q

    # Query blocks [lo, full) need a mask, [full, hi) do not; a block past the length has none.
    hi = tl.where(start_n < n_valid, N_Q, 0)
    lo = tl.zeros([], dtype=tl.int32)
    full = tl.zeros([], dtype=tl.int32)
    if CAUSAL:
        lo = tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M  # first row that sees key start_n
        full = (tl.maximum(start_n + BLOCK_N - 1 - diag, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    full = tl.where(start_n + BLOCK_N > n_valid, hi, full)  # straddles the length: mask throughout
    full = tl.minimum(tl.maximum(full, lo), hi)
    lo = tl.minimum(lo, full)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dk, dv = _dkdv_queries(dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, stride_qn, stride_don, LSE, DELTA, offs_m,
                           offs_n, offs_d, lo, full, N_Q, n_valid, diag, qk_scale, sm_scale, True, CAUSAL,
                           HEAD_DIM, BLOCK_M, Q.dtype.element_ty, BF16_IN_FP32, PRECISION, DQ_ATOMIC)
    dk, dv = _dkdv_queries(dk, dv, k, v, q_ptrs, do_ptrs, dq_ptrs, stride_qn, stride_don, LSE, DELTA, offs_m,
                           offs_n, offs_d, full, hi, N_Q, n_valid, diag, qk_scale, sm_scale, False, CAUSAL,
                           HEAD_DIM, BLOCK_M, Q.dtype.element_ty, BF16_IN_FP32, PRECISION, DQ_ATOMIC)
    g_off = b * stride_gb + h * stride_gh + offs_n[:, None] * stride_gn + offs_d[None, :] * stride_gd
    g_mask = (offs_n[:, None] < N_K) & (offs_d[None, :] < HEAD_DIM)
    dk = dk * sm_scale
    if BF16_IN_FP32:
        dk = _round_bf16(dk)
        dv = _round_bf16(dv)
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=g_mask)
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=g_mask)


@triton.jit
def _dq_keys(dq, q, do, lse, delta, kt_ptrs, vt_ptrs, kt_offs, vt_offs, stride_kn, stride_vn, offs_m, offs_n, offs_d,
             lo, hi, n_valid, diag, qk_scale,
             MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
             BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DTYPE: tl.constexpr,
             BF16_IN_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """Accumulate the key blocks ``[lo, hi)`` into one query block's dQ."""
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if MASKED or not EVEN_D:
            t_mask = (cols[None, :] < n_valid) & (offs_d[:, None] < HEAD_DIM)
            kt = tl.load(kt_ptrs + (kt_offs + start_n * stride_kn), mask=t_mask, other=0.0)  # (BLOCK_D, BLOCK_N)
            vt = tl.load(vt_ptrs + (vt_offs + start_n * stride_vn), mask=t_mask, other=0.0)
        else:
            kt = tl.load(kt_ptrs + (kt_offs + start_n * stride_kn))
            vt = tl.load(vt_ptrs + (vt_offs + start_n * stride_vn))
        if BF16_IN_FP32:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        p = tl.math.exp2(tl.dot(q, kt, input_precision=PRECISION) * qk_scale - lse[:, None])
        if MASKED:
            keep = cols[None, :] < n_valid
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if BF16_IN_FP32:
            ds = _round_bf16(ds)
        else:
            ds = ds.to(DTYPE)
        dq = tl.dot(ds, tl.trans(kt), dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, Lengths,
                 stride_qb, stride_qh, stride_qn, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd,
                 stride_dob, stride_doh, stride_don, stride_dod,
                 stride_gb, stride_gh, stride_gn, stride_gd,
                 H, N_Q, N_K, qk_scale, sm_scale,
                 N_BUCKET, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, BF16_IN_FP32: tl.constexpr,
                 PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    if CAUSAL:  # the last query blocks see the most keys: start them first
        pid_m = tl.num_programs(0) - 1 - pid_m
    start_m = pid_m * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    diag = N_K - N_Q
    n_valid = _valid_keys(Lengths, b, N_K, HAS_LENGTHS)
    full, hi = _key_bounds(start_m, n_valid, diag, CAUSAL, BLOCK_M, BLOCK_N)

    row_ok = offs_m < N_Q
    mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=mask, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                 mask=mask, other=0.0)
    if BF16_IN_FP32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * N_Q + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * N_Q + offs_m, mask=row_ok, other=0.0)
    kt_ptrs = K + b * stride_kb + h * stride_kh  # scalar bases; int32 tile offsets below
    vt_ptrs = V + b * stride_vb + h * stride_vh
    kt_offs = offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    vt_offs = offs_n[None, :] * stride_vn + offs_d[:, None] * stride_vd

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _dq_keys(dq, q, do, lse, delta, kt_ptrs, vt_ptrs, kt_offs, vt_offs, stride_kn, stride_vn, offs_m, offs_n, offs_d,
                  0, full, n_valid, diag, qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N,
                  Q.dtype.element_ty, BF16_IN_FP32, PRECISION)
    dq = _dq_keys(dq, q, do, lse, delta, kt_ptrs, vt_ptrs, kt_offs, vt_offs, stride_kn, stride_vn, offs_m, offs_n, offs_d,
                  full, hi, n_valid, diag, qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N,
                  Q.dtype.element_ty, BF16_IN_FP32, PRECISION)
    dq = dq * sm_scale
    if BF16_IN_FP32:
        dq = _round_bf16(dq)
    tl.store(DQ + b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gn + offs_d[None, :] * stride_gd,
             dq.to(DQ.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launching: autotuned on a GPU, one fixed configuration in the interpreter


def _configs(shapes):
    """``triton.Config`` list from ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` tuples."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


# Candidates for the autotuner (BLOCK_M, BLOCK_N, num_warps, num_stages), after the fused-attention
# tutorial's choices for Hopper: wide query tiles in the forward and the dQ kernel, wide key tiles
# in the dK/dV kernel; smaller tiles for short sequences (see _prune).
FWD_CONFIGS = [(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3),
               (64, 32, 4, 2)]
DKDV_CONFIGS = [(32, 128, 4, 3), (64, 128, 8, 3), (32, 128, 8, 3), (32, 128, 8, 2), (64, 64, 4, 3),
                (16, 64, 4, 2)]
DQ_CONFIGS = [(128, 32, 4, 3), (128, 64, 8, 3), (128, 32, 8, 2), (64, 64, 4, 3), (64, 16, 4, 2)]
# N_BUCKET (N rounded up to a power of two) is a plain argument that the kernels ignore: it keys
# the tuning without compiling a kernel per sequence length.
_KEY = ["N_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_LENGTHS"]  # the autotuner adds the tensors' dtypes


def _prune(configs, named_args, **kwargs):
    """Drop tiles much longer than the sequence (N rounded up to a power of two, at least 32)."""
    n = max(kwargs["N_BUCKET"], 32)
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= n and c.kwargs["BLOCK_N"] <= n]
    return kept or configs[-1:]


def autotuned_kernels(fwd=None, dkdv=None, dq=None, **autotune_kw) -> dict:
    """The kernels wrapped in ``triton.autotune``, as a GPU launches them.

    ``fwd``, ``dkdv``, ``dq``: candidate lists (default: :data:`FWD_CONFIGS`, ...);
    ``autotune_kw`` goes to ``triton.autotune`` (the tests pass a ``do_bench`` that times on the
    CPU, to run this very path in the interpreter). The tuning choice is kept in Triton's cache
    directory (``cache_results``; Triton ignores it when interpreting), so that the processes of a
    suite (one per cell with a process pool) do not each tune again.
    """
    def tuned(kernel, shapes, key=_KEY, **kw):
        return triton.autotune(_configs(shapes), key=key, prune_configs_by={"early_config_prune": _prune},
                               cache_results=True, **kw, **autotune_kw)(kernel)

    dkdv = DKDV_CONFIGS if dkdv is None else dkdv
    return {
        "fwd": tuned(_attn_fwd, FWD_CONFIGS if fwd is None else fwd),
        "dkdv": tuned(_attn_bwd_dkdv, dkdv, key=_KEY + ["DQ_ATOMIC"]),
        # tuning runs the kernel once per candidate: the dQ accumulator is zeroed before each run
        "dkdv_atomic": tuned(_attn_bwd_dkdv, dkdv, key=_KEY + ["DQ_ATOMIC"], reset_to_zero=["DQ_ACC"]),
        "dq": tuned(_attn_bwd_dq, DQ_CONFIGS if dq is None else dq),
    }


if INTERPRET:  # the autotuner cannot time anything without a GPU: one fixed tiling each
    _KERNELS = {"fwd": _attn_fwd, "dkdv": _attn_bwd_dkdv, "dkdv_atomic": _attn_bwd_dkdv, "dq": _attn_bwd_dq}
else:
    _KERNELS = autotuned_kernels()


def _launch(name: str, grid_dim: str, n: int, bh: int, args: tuple, constexprs: dict) -> None:
    """Launch kernel ``name`` on a ``(cdiv(n, BLOCK_<grid_dim>), bh)`` grid."""
    kernel = _KERNELS[name]
    if isinstance(kernel, triton.runtime.Autotuner):
        kernel[lambda meta: (triton.cdiv(n, meta[f"BLOCK_{grid_dim}"]), bh)](*args, **constexprs)
    else:
        m, nb = INTERPRET_BLOCKS[name.split("_")[0]]
        blocks = {"BLOCK_M": m, "BLOCK_N": nb}
        kernel[(triton.cdiv(n, blocks[f"BLOCK_{grid_dim}"]), bh)](*args, **constexprs, **blocks)


def dq_mode() -> str:
    """How the backward computes dQ: ``CLBENCH_FLASH_DQ=split`` (default) or ``atomic``.

    ``split``: a second kernel, one program per query block, recomputes P and dP (7 tile products
    per block pair instead of 5) and writes dQ once: deterministic. ``atomic``: the dK/dV kernel
    also adds each block pair's share of dQ to an fp32 buffer with atomic adds, as
    FlashAttention-2 does: fewer products, more memory traffic, run-to-run differences in the
    last bits of dQ.
    """
    mode = os.environ.get("CLBENCH_FLASH_DQ", "split")
    if mode not in ("split", "atomic"):
        from ...errors import UserError

        raise UserError(f"CLBENCH_FLASH_DQ={mode!r} is not one of: split, atomic")
    return mode


def _meta(q: torch.Tensor, n: int, causal: bool, has_lengths: bool) -> dict:
    """The keyword arguments the three kernels share (``n``: the longer of N_Q and N_K)."""
    d = q.shape[-1]
    tf32 = q.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return dict(
        N_BUCKET=triton.next_power_of_2(max(n, 16)),
        HEAD_DIM=d,
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        CAUSAL=bool(causal),
        HAS_LENGTHS=has_lengths,
        BF16_IN_FP32=INTERPRET and q.dtype == torch.bfloat16,
        # fp32 inputs: full-precision products unless the user allowed TF32 for torch's matmuls too
        PRECISION="ieee" if q.dtype == torch.float32 and not tf32 else "tf32",
    )


def _empty_bnhd(b: int, h: int, n: int, d: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``(B, H, N, D)`` tensor laid out as ``(B, N, H, D)`` in memory, so that
    the model's transpose back to ``(B, N, H·D)`` costs no copy."""
    return torch.empty((b, n, h, d), dtype=like.dtype, device=like.device).transpose(1, 2)


def _forward(q, k, v, lengths, causal, scale):
    B, H, N_Q, D = q.shape
    N_K = k.shape[2]
    o = _empty_bnhd(B, H, N_Q, D, q)
    lse = torch.empty((B, H, N_Q), dtype=torch.float32, device=q.device)
    if o.numel() == 0 or N_K == 0:
        return o.zero_(), lse.fill_(float("inf"))
    args = (q, k, v, o, lse, lse if lengths is None else lengths,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), H, N_Q, N_K, scale * LOG2E)
    _launch("fwd", "M", N_Q, B * H, args, _meta(q, max(N_Q, N_K), causal, lengths is not None))
    return o, lse


def _backward(do, q, k, v, o, lse, lengths, causal, scale):
    B, H, N_Q, D = q.shape
    N_K = k.shape[2]
    dq = _empty_bnhd(B, H, N_Q, D, q)
    dk = _empty_bnhd(B, H, N_K, D, k)
    dv = _empty_bnhd(B, H, N_K, D, v)
    if dq.numel() == 0 or dk.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    meta = _meta(q, max(N_Q, N_K), causal, lengths is not None)
    delta = torch.empty_like(lse)
    block = 64
    _attn_bwd_delta[(triton.cdiv(N_Q, block), B * H)](
        o, do, delta, *o.stride(), *do.stride(), H, N_Q,
        HEAD_DIM=D, BLOCK_D=meta["BLOCK_D"], BLOCK_M=block)
    common = (*q.stride(), *k.stride(), *v.stride(), *do.stride())
    lens = lse if lengths is None else lengths
    qk_scale = scale * LOG2E
    if dq_mode() == "atomic":
        dq_acc = torch.zeros((B, H, N_Q, D), dtype=torch.float32, device=q.device)
        _launch("dkdv_atomic", "N", N_K, B * H,
                (q, k, v, do, dk, dv, lse, delta, lens, dq_acc, *common, *dk.stride(), H, N_Q, N_K, qk_scale,
                 scale), {**meta, "DQ_ATOMIC": True})
        return dq.copy_(dq_acc), dk, dv
    _launch("dkdv", "N", N_K, B * H,
            (q, k, v, do, dk, dv, lse, delta, lens, delta, *common, *dk.stride(), H, N_Q, N_K, qk_scale, scale),
            {**meta, "DQ_ATOMIC": False})
    _launch("dq", "M", N_Q, B * H,
            (q, k, v, do, dq, lse, delta, lens, *common, *dq.stride(), H, N_Q, N_K, qk_scale, scale),
            meta)
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """``FlashAttention.apply(q, k, v, lengths, causal, scale)``; prefer :func:`flash_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, lengths, causal, scale):
        o, lse = _forward(q, k, v, lengths, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse, lengths)
        ctx.causal = causal
        ctx.scale = scale
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse, lengths = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, o, lse, lengths, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None, None


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None = None) -> str | None:
    """Why these kernels cannot take these inputs, or None if they can."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "q, k and v must be (batch, heads, N, head_dim) tensors"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {q.dtype} is not supported (float32, float16 or bfloat16)"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q, k and v have different dtypes ({q.dtype}, {k.dtype}, {v.dtype})"
    B, H, _, D = q.shape
    if k.shape[:2] != (B, H) or k.shape[3] != D or v.shape != k.shape:
        return f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if not 1 <= D <= MAX_HEAD_DIM:
        return f"head_dim {D} is outside 1..{MAX_HEAD_DIM}"
    if len({q.device, k.device, v.device}) != 1:
        return "q, k and v are on different devices"
    if q.device.type != "cuda" and not INTERPRET:
        return "tensors on the CPU need TRITON_INTERPRET=1 (set before clbench.models.kernels is first imported)"
    if lengths is not None and (lengths.shape != (B,) or lengths.is_floating_point()):
        return f"lengths must be an integer tensor of shape ({B},), got {lengths.dtype} {tuple(lengths.shape)}"
    return None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None = None,
                    causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over ``(B, H, N, D)`` tensors, differentiable in q, k and v.

    :param lengths: ``(B,)`` number of valid keys of each sequence (None: all ``N_K`` are valid).
    :param causal: query ``i`` sees keys ``j <= i + N_K - N_Q`` only.
    :param scale: the softmax scale (positive), ``1/sqrt(head_dim)`` by default.
    :returns: ``(B, H, N_Q, D)`` in the inputs' dtype (laid out as ``(B, N_Q, H, D)`` in memory).
    """
    why = unsupported(q, k, v, lengths)
    if why:
        raise ValueError(why)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"the softmax scale must be positive, got {scale}")
    if lengths is not None:
        lengths = lengths.to(device=q.device, dtype=torch.int32).contiguous()
    return FlashAttention.apply(q, k, v, lengths, bool(causal), scale)
