"""FlashAttention-2 forward and backward in Triton (after Dao 2023 and Triton's fused-attention
tutorial), for ``(B, H, N, D)`` tensors in fp32, fp16 or bf16 with ``D <= 128``.

Forward: one program per (query block, batch × head). It streams key/value blocks through an
online softmax in base 2 (the softmax scale times log2(e) is folded into the scores), keeps the
output accumulator in fp32 registers, and saves the row's log-sum-exp (base 2) for the backward.
The attention matrix is never written to memory.

Backward: ``delta = rowsum(dO ∘ O)`` first, then the probabilities are recomputed from the saved
log-sum-exp by one program per key block, which holds its K and V and accumulates dK and dV
over the query blocks that see it. dQ is either added by those same programs to an fp32 buffer
with atomic adds, scaled by the softmax scale once at the end (``atomic``: 5 tile products per
block pair, as FlashAttention-2; the default on Hopper), or computed by a second kernel, one
program per query block (``split``: 7 products, deterministic; the default elsewhere). See
:func:`dq_mode`.

Masking. ``lengths[b]`` is the number of valid keys of sequence ``b``. Loops stop at the last key
block a query block can see (``min(length, causal diagonal)``), so blocks past a sequence's length
are never loaded, and a key-block program past the length does no work. Each loop has two stages:
blocks that need no mask (fully valid, fully below the diagonal), then the few boundary blocks
that do. Causal attention is aligned to the bottom right (query ``i`` sees keys
``j <= i + N_K - N_Q``), as FlashAttention-2 and :func:`clbench.models.attention.reference_attention`
do. A row without any valid key gets zeros in the output and gradients, never NaN: its
accumulators stay zero and its log-sum-exp is stored as +inf, so its recomputed probabilities
are exactly zero. With ``skip_padded_queries`` the rows at or past a sequence's length are such
rows too, and query blocks past the length do no work.

Grids are flat: ``cdiv(N, BLOCK) × B·H`` programs on axis 0 (no 65535 cap on B·H), the blocks of
one head consecutive; offsets that can pass 2³¹ (``N · stride``, ``B·H·N``) are int64. On Hopper
the streamed tiles (K and V in the forward and dQ kernels, Q and dO in the dK/dV kernel) are
loaded through tensor descriptors (TMA), whose bounds give the masking for free.

On a GPU each kernel is autotuned over block sizes, warps and pipeline stages (keyed on head
dimension, mask flags, dtype and N rounded up to a power of two); the choice is then launched
directly, without the autotuner, on every later call with the same key. Under
``TRITON_INTERPRET=1`` (CPU tensors, tests) each runs one fixed configuration,
:data:`INTERPRET_BLOCKS`, and bf16 values are kept in fp32 registers, rounded to bf16's precision
where a GPU would round (the interpreter multiplies bf16 bit patterns as integers and truncates
when it converts to bf16). See docs/kernels.md.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings

import torch
import triton
import triton.language as tl

from ...errors import UserError
from ..autocast import autocast_inputs


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
#: Whether this Triton can build tensor descriptors in a kernel (TMA loads on Hopper).
HAS_DESCRIPTORS = hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")

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
def _program(N, H, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """This program's place in a flat grid of ``cdiv(N, BLOCK)`` blocks per batch × head: the
    first row of its block, and its batch, head and batch × head (int64). REVERSE: a head's last
    blocks first (causal attention: they have the most work)."""
    n_blocks = tl.cdiv(N, BLOCK)
    pid = tl.program_id(0)
    blk = pid % n_blocks
    if REVERSE:
        blk = n_blocks - 1 - blk
    bh = (pid // n_blocks).to(tl.int64)
    return blk * BLOCK, bh // H, bh % H, bh


@triton.jit
def _valid_keys(Lengths, b, N_K, HAS_LENGTHS: tl.constexpr):
    """Number of valid keys of sequence ``b``: ``clamp(lengths[b], 0, N_K)`` (any integer dtype)."""
    if HAS_LENGTHS:
        n = tl.load(Lengths + b)
        return tl.minimum(tl.maximum(n, 0), N_K).to(tl.int32)
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


@triton.jit
def _tile(base, start, stride_n, stride_d, offs_r, offs_d):
    """Pointers to rows ``start + offs_r`` of one head's (N, D) matrix (int64 row offset)."""
    return base + start.to(tl.int64) * stride_n + (offs_r[:, None] * stride_n + offs_d[None, :] * stride_d)


@triton.jit
def _source(base, n_rows, stride_n, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
            USE_DESC: tl.constexpr):
    """What :func:`_rows` loads from: a tensor descriptor over the first ``n_rows`` rows of one
    head's (N, HEAD_DIM) matrix (USE_DESC), else its base pointer."""
    if USE_DESC:
        return tl.make_tensor_descriptor(base, shape=[tl.maximum(n_rows, 1), HEAD_DIM], strides=[stride_n, 1],
                                         block_shape=[BLOCK, BLOCK_D])
    else:
        return base


@triton.jit
def _rows(src, start, n_rows, stride_n, stride_d, offs_r, offs_d, HEAD_DIM: tl.constexpr, MASK: tl.constexpr,
          USE_DESC: tl.constexpr):
    """The (BLOCK, BLOCK_D) tile of rows ``start + offs_r``; with MASK (or a descriptor, whose
    bounds are ``n_rows`` × HEAD_DIM), rows past ``n_rows`` and columns past HEAD_DIM read 0."""
    if USE_DESC:
        return src.load([start, 0])
    else:
        ptrs = _tile(src, start, stride_n, stride_d, offs_r, offs_d)
        if MASK:
            return tl.load(ptrs, mask=((start + offs_r)[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        else:
            return tl.load(ptrs)


# --------------------------------------------------------------------------------------------
# forward


@triton.jit
def _fwd_keys(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, offs_n, offs_d,
              lo, hi, n_valid, diag, qk_scale,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
              BF16_IN_FP32: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr):
    """Fold key blocks ``[lo, hi)`` into the online softmax of one query block."""
    LOAD_MASK: tl.constexpr = MASKED or BLOCK_D != HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k = _rows(k_src, start_n, n_valid, stride_kn, stride_kd, offs_n, offs_d, HEAD_DIM, LOAD_MASK, USE_DESC)
        v = _rows(v_src, start_n, n_valid, stride_vn, stride_vd, offs_n, offs_d, HEAD_DIM, LOAD_MASK, USE_DESC)
        if BF16_IN_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N), unscaled
        if MASKED:
            cols = start_n + offs_n
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
              CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, SKIP_PADDED: tl.constexpr,
              BF16_IN_FP32: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m, b, h, bh = _program(N_Q, H, CAUSAL, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_M)
    offs_m = start_m + offs_r
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    diag = N_K - N_Q  # causal: query i sees keys j <= i + diag
    n_valid = _valid_keys(Lengths, b, N_K, HAS_LENGTHS)
    full, hi = _key_bounds(start_m, n_valid, diag, CAUSAL, BLOCK_M, BLOCK_N)
    if SKIP_PADDED:  # a query block past the sequence's length does no work
        hi = tl.where(start_m < n_valid, hi, 0)
        full = tl.minimum(full, hi)

    q = _rows(Q + b * stride_qb + h * stride_qh, start_m, N_Q, stride_qn, stride_qd, offs_r, offs_d, HEAD_DIM,
              True, False)
    if BF16_IN_FP32:  # interpreting bf16: work on fp32 copies (see _round_bf16)
        q = q.to(tl.float32)
    k_src = _source(K + b * stride_kb + h * stride_kh, n_valid, stride_kn, BLOCK_N, BLOCK_D, HEAD_DIM, USE_DESC)
    v_src = _source(V + b * stride_vb + h * stride_vh, n_valid, stride_vn, BLOCK_N, BLOCK_D, HEAD_DIM, USE_DESC)

    # m starts finite so that a row whose keys are all masked never computes (-inf) - (-inf)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, l_i, m_i = _fwd_keys(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, offs_m,
                              offs_n, offs_d, 0, full, n_valid, diag, qk_scale, False, CAUSAL, HEAD_DIM,
                              BLOCK_D, BLOCK_N, BF16_IN_FP32, PRECISION, USE_DESC)
    acc, l_i, m_i = _fwd_keys(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, offs_m,
                              offs_n, offs_d, full, hi, n_valid, diag, qk_scale, True, CAUSAL, HEAD_DIM,
                              BLOCK_D, BLOCK_N, BF16_IN_FP32, PRECISION, USE_DESC)
    has_keys = l_i > 0.0
    if SKIP_PADDED:  # rows past the length in the boundary block: zeros, as rows without keys
        has_keys = has_keys & (offs_m < n_valid)
        acc = tl.where(has_keys[:, None], acc, 0.0)
    acc = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("inf"))
    tl.store(LSE + bh * N_Q + offs_m, lse, mask=offs_m < N_Q)
    if BF16_IN_FP32:
        acc = _round_bf16(acc)
    tl.store(_tile(O + b * stride_ob + h * stride_oh, start_m, stride_on, stride_od, offs_r, offs_d),
             acc.to(O.dtype.element_ty), mask=(offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM))


# --------------------------------------------------------------------------------------------
# backward


@triton.jit
def _attn_bwd_delta(O, DO, DELTA,
                    stride_ob, stride_oh, stride_on, stride_od,
                    stride_db, stride_dh, stride_dn, stride_dd,
                    H, N_Q, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d], in fp32."""
    start_m, b, h, bh = _program(N_Q, H, False, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _rows(O + b * stride_ob + h * stride_oh, start_m, N_Q, stride_on, stride_od, offs_r, offs_d, HEAD_DIM,
              True, False).to(tl.float32)
    do = _rows(DO + b * stride_db + h * stride_dh, start_m, N_Q, stride_dn, stride_dd, offs_r, offs_d, HEAD_DIM,
               True, False).to(tl.float32)
    tl.store(DELTA + bh * N_Q + start_m + offs_r, tl.sum(o * do, 1), mask=start_m + offs_r < N_Q)


@triton.jit
def _dkdv_queries(dk, dv, k, v, q_src, do_src, dq_base, stride_qn, stride_qd, stride_don, stride_dod, dq_stride_n,
                  LSE, DELTA, offs_m, offs_n, offs_d, lo, hi, N_Q, n_valid, diag, qk_scale,
                  MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_M: tl.constexpr, DTYPE: tl.constexpr, BF16_IN_FP32: tl.constexpr,
                  PRECISION: tl.constexpr, DQ_ATOMIC: tl.constexpr, USE_DESC: tl.constexpr):
    """Accumulate the query blocks ``[lo, hi)`` into one key block's dK and dV (and, with
    DQ_ATOMIC, add their share of dQ, not yet scaled, to the fp32 accumulator)."""
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m
        row_ok = rows < N_Q
        q = _rows(q_src, start_m, N_Q, stride_qn, stride_qd, offs_m, offs_d, HEAD_DIM, True, USE_DESC)
        do = _rows(do_src, start_m, N_Q, stride_don, stride_dod, offs_m, offs_d, HEAD_DIM, True, USE_DESC)
        if BF16_IN_FP32:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
        # Pᵀ recomputed from the saved log-sum-exp; +inf (no valid key, or past N_Q) gives 0
        pt = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse[None, :])
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
        dk = tl.dot(dst, q, dk, input_precision=PRECISION)
        if DQ_ATOMIC:
            dq = tl.dot(tl.trans(dst), k, input_precision=PRECISION)  # (BLOCK_M, BLOCK_D), scaled at the end
            tl.atomic_add(_tile(dq_base, start_m, dq_stride_n, 1, offs_m, offs_d), dq,
                          mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), sem="relaxed")
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
                   CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, SKIP_PADDED: tl.constexpr,
                   BF16_IN_FP32: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr,
                   DQ_ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_n, b, h, bh = _program(N_K, H, False, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_N)
    offs_n = start_n + offs_r
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    diag = N_K - N_Q
    n_valid = _valid_keys(Lengths, b, N_K, HAS_LENGTHS)
    n_rows = N_Q
    if SKIP_PADDED:  # query rows past the length see nothing (their log-sum-exp is +inf)
        n_rows = tl.minimum(N_Q, n_valid)

    k = _rows(K + b * stride_kb + h * stride_kh, start_n, n_valid, stride_kn, stride_kd, offs_r, offs_d, HEAD_DIM,
              True, False)
    v = _rows(V + b * stride_vb + h * stride_vh, start_n, n_valid, stride_vn, stride_vd, offs_r, offs_d, HEAD_DIM,
              True, False)
    if BF16_IN_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    q_src = _source(Q + b * stride_qb + h * stride_qh, N_Q, stride_qn, BLOCK_M, BLOCK_D, HEAD_DIM, USE_DESC)
    do_src = _source(DO + b * stride_dob + h * stride_doh, N_Q, stride_don, BLOCK_M, BLOCK_D, HEAD_DIM, USE_DESC)
    dq_base = DQ_ACC + (b * N_Q * H + h) * HEAD_DIM  # the fp32 dQ buffer, laid out (B, N_Q, H, HEAD_DIM)
    LSE += bh * N_Q
    DELTA += bh * N_Q

    # Query blocks [lo, full) need a mask, [full, hi) do not; a block past the length has none.
    hi = tl.where(start_n < n_valid, n_rows, 0)
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
    dk, dv = _dkdv_queries(dk, dv, k, v, q_src, do_src, dq_base, stride_qn, stride_qd, stride_don, stride_dod,
                           H * HEAD_DIM, LSE, DELTA, offs_m, offs_n, offs_d, lo, full, N_Q, n_valid, diag, qk_scale, True,
                           CAUSAL, HEAD_DIM, BLOCK_M, Q.dtype.element_ty, BF16_IN_FP32, PRECISION, DQ_ATOMIC,
                           USE_DESC)
    dk, dv = _dkdv_queries(dk, dv, k, v, q_src, do_src, dq_base, stride_qn, stride_qd, stride_don, stride_dod,
                           H * HEAD_DIM, LSE, DELTA, offs_m, offs_n, offs_d, full, hi, N_Q, n_valid, diag, qk_scale, False,
                           CAUSAL, HEAD_DIM, BLOCK_M, Q.dtype.element_ty, BF16_IN_FP32, PRECISION, DQ_ATOMIC,
                           USE_DESC)
    g_mask = (offs_n[:, None] < N_K) & (offs_d[None, :] < HEAD_DIM)
    dk = dk * sm_scale
    if BF16_IN_FP32:
        dk = _round_bf16(dk)
        dv = _round_bf16(dv)
    tl.store(_tile(DK + b * stride_gb + h * stride_gh, start_n, stride_gn, stride_gd, offs_r, offs_d),
             dk.to(DK.dtype.element_ty), mask=g_mask)
    tl.store(_tile(DV + b * stride_gb + h * stride_gh, start_n, stride_gn, stride_gd, offs_r, offs_d),
             dv.to(DV.dtype.element_ty), mask=g_mask)


@triton.jit
def _dq_keys(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, offs_n,
             offs_d, lo, hi, n_valid, diag, qk_scale,
             MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
             BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DTYPE: tl.constexpr,
             BF16_IN_FP32: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr):
    """Accumulate the key blocks ``[lo, hi)`` into one query block's dQ."""
    LOAD_MASK: tl.constexpr = MASKED or BLOCK_D != HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k = _rows(k_src, start_n, n_valid, stride_kn, stride_kd, offs_n, offs_d, HEAD_DIM, LOAD_MASK, USE_DESC)
        v = _rows(v_src, start_n, n_valid, stride_vn, stride_vd, offs_n, offs_d, HEAD_DIM, LOAD_MASK, USE_DESC)
        if BF16_IN_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse[:, None])
        if MASKED:
            cols = start_n + offs_n
            keep = cols[None, :] < n_valid
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if BF16_IN_FP32:
            ds = _round_bf16(ds)
        else:
            ds = ds.to(DTYPE)
        dq = tl.dot(ds, k, dq, input_precision=PRECISION)
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
                 CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, SKIP_PADDED: tl.constexpr,
                 BF16_IN_FP32: tl.constexpr, PRECISION: tl.constexpr, USE_DESC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m, b, h, bh = _program(N_Q, H, CAUSAL, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_M)
    offs_m = start_m + offs_r
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    diag = N_K - N_Q
    n_valid = _valid_keys(Lengths, b, N_K, HAS_LENGTHS)
    full, hi = _key_bounds(start_m, n_valid, diag, CAUSAL, BLOCK_M, BLOCK_N)
    if SKIP_PADDED:
        hi = tl.where(start_m < n_valid, hi, 0)
        full = tl.minimum(full, hi)

    row_ok = offs_m < N_Q
    q = _rows(Q + b * stride_qb + h * stride_qh, start_m, N_Q, stride_qn, stride_qd, offs_r, offs_d, HEAD_DIM,
              True, False)
    do = _rows(DO + b * stride_dob + h * stride_doh, start_m, N_Q, stride_don, stride_dod, offs_r, offs_d,
               HEAD_DIM, True, False)
    if BF16_IN_FP32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh * N_Q + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * N_Q + offs_m, mask=row_ok, other=0.0)
    k_src = _source(K + b * stride_kb + h * stride_kh, n_valid, stride_kn, BLOCK_N, BLOCK_D, HEAD_DIM, USE_DESC)
    v_src = _source(V + b * stride_vb + h * stride_vh, n_valid, stride_vn, BLOCK_N, BLOCK_D, HEAD_DIM, USE_DESC)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _dq_keys(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, offs_n,
                  offs_d, 0, full, n_valid, diag, qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N,
                  Q.dtype.element_ty, BF16_IN_FP32, PRECISION, USE_DESC)
    dq = _dq_keys(dq, q, do, lse, delta, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, offs_n,
                  offs_d, full, hi, n_valid, diag, qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_D, BLOCK_N,
                  Q.dtype.element_ty, BF16_IN_FP32, PRECISION, USE_DESC)
    dq = dq * sm_scale
    if BF16_IN_FP32:
        dq = _round_bf16(dq)
    tl.store(_tile(DQ + b * stride_gb + h * stride_gh, start_m, stride_gn, stride_gd, offs_r, offs_d),
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))


# --------------------------------------------------------------------------------------------
# launching: autotuned on a GPU, one fixed configuration in the interpreter


# Candidates for the autotuner (BLOCK_M, BLOCK_N, num_warps, num_stages), per head-dim class
# (BLOCK_D <= 64, or 128) in 16 bits, and for fp32: what benchmarks/attention_compile.py showed to
# compile for Hopper without spilling registers (docs/kernels.md). Wide query tiles in the
# forward and the dQ kernel, wide key tiles in the dK/dV kernel (the atomic dQ variant too), in 2-
# to 4-stage pipelines; smaller tiles for short sequences (_pruner). fp32 takes three TF32
# products per product (tf32x3) and twice the registers: small tiles only, and its backward
# spills even so at head dim 128 (which is why fp32 goes to SDPA by default).
FWD_CONFIGS = {
    64: [(128, 64, 4, 3), (128, 64, 4, 4), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 2), (64, 32, 4, 2)],
    128: [(128, 64, 8, 2), (128, 64, 8, 4), (128, 128, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)],
    "fp32": [(64, 32, 4, 2), (32, 64, 8, 2)],
}
DKDV_CONFIGS = {
    64: [(64, 128, 8, 2), (64, 128, 8, 4), (32, 128, 8, 2), (32, 128, 8, 4), (64, 64, 4, 2), (16, 64, 4, 2)],
    128: [(64, 64, 8, 2), (32, 128, 8, 2), (32, 128, 8, 4), (32, 64, 8, 2), (16, 64, 4, 2)],
    "fp32": [(16, 64, 4, 2), (16, 32, 4, 2)],
}
DQ_CONFIGS = {
    64: [(128, 64, 8, 2), (128, 64, 8, 4), (128, 32, 4, 2), (128, 32, 4, 4), (64, 64, 4, 2), (64, 16, 4, 2)],
    128: [(128, 64, 8, 2), (128, 32, 8, 2), (128, 32, 8, 4), (64, 32, 4, 2), (64, 16, 4, 2)],
    "fp32": [(64, 16, 4, 2), (64, 32, 4, 2)],
}
# N_BUCKET (N rounded up to a power of two) is a plain argument that the kernels ignore: it keys
# the tuning without compiling a kernel per sequence length.
_KEY = ["N_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_LENGTHS", "SKIP_PADDED", "PRECISION", "USE_DESC"]  # + dtypes


def _configs(shapes):
    """``triton.Config`` list from ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` tuples."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _shape(config) -> tuple:
    return (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)


def _pruner(by_class: dict | None):
    """The autotuner's ``early_config_prune``: the candidates of the inputs' class (fp32, or the
    head-dim class in 16 bits) when the lists are :data:`FWD_CONFIGS` & co., without tiles much
    longer than the sequence (N rounded up to a power of two, at least 32)."""
    def prune(configs, named_args, **kwargs):
        n = max(kwargs["N_BUCKET"], 32)
        if by_class is not None:
            fp32 = named_args["Q"].dtype == torch.float32
            allowed = set(by_class["fp32" if fp32 else 64 if kwargs["BLOCK_D"] <= 64 else 128])
            configs = [c for c in configs if _shape(c) in allowed]
        kept = [c for c in configs if c.kwargs["BLOCK_M"] <= n and c.kwargs["BLOCK_N"] <= n]
        return kept or configs[-1:]
    return prune


def autotuned_kernels(fwd=None, dkdv=None, dq=None, **autotune_kw) -> dict:
    """The kernels wrapped in ``triton.autotune``, as a GPU launches them.

    ``fwd``, ``dkdv``, ``dq``: candidate lists (default: :data:`FWD_CONFIGS`, ..., pruned by dtype
    and head dim); ``autotune_kw`` goes to ``triton.autotune`` (the tests pass a ``do_bench`` that times on
    the CPU, to run this very path in the interpreter; the device script a shorter one). The
    tuning choice is kept in Triton's cache directory (``cache_results``; Triton ignores it when
    interpreting), so that the processes of a suite (one per cell with a process pool) do not each
    tune again; each wrapper's ``chosen`` maps a launch's key to the config it then runs directly.
    """
    def tuned(kernel, given, default, key=_KEY, **kw):
        if given is None:
            shapes = list(dict.fromkeys(s for by_d in default.values() for s in by_d))
        else:
            shapes = given
        t = triton.autotune(_configs(shapes), key=key,
                            prune_configs_by={"early_config_prune": _pruner(default if given is None else None)},
                            cache_results=True, **kw, **autotune_kw)(kernel)
        t.chosen = {}
        return t

    return {
        "fwd": tuned(_attn_fwd, fwd, FWD_CONFIGS),
        "dkdv": tuned(_attn_bwd_dkdv, dkdv, DKDV_CONFIGS, key=_KEY + ["DQ_ATOMIC"]),
        # tuning runs the kernel once per candidate: the dQ accumulator is zeroed before each run
        "dkdv_atomic": tuned(_attn_bwd_dkdv, dkdv, DKDV_CONFIGS, key=_KEY + ["DQ_ATOMIC"], reset_to_zero=["DQ_ACC"]),
        "dq": tuned(_attn_bwd_dq, dq, DQ_CONFIGS),
    }


if INTERPRET:  # the autotuner cannot time anything without a GPU: one fixed tiling each
    _KERNELS = {"fwd": _attn_fwd, "dkdv": _attn_bwd_dkdv, "dkdv_atomic": _attn_bwd_dkdv, "dq": _attn_bwd_dq}
else:
    _KERNELS = autotuned_kernels()


def _along(name: str) -> str:
    """The block size a kernel's grid counts: key blocks for dK/dV, query blocks otherwise."""
    return "BLOCK_N" if name.startswith("dkdv") else "BLOCK_M"


def _launch(name: str, n: int, bh: int, args: tuple, meta: dict) -> None:
    """Launch kernel ``name`` on a flat grid of ``cdiv(n, BLOCK) · bh`` programs: the first time
    for a key through the autotuner (which tunes), then the chosen config directly."""
    kernel, along = _KERNELS[name], _along(name)
    if not isinstance(kernel, triton.runtime.Autotuner):
        m, nb = INTERPRET_BLOCKS[name.split("_")[0]]
        blocks = {"BLOCK_M": m, "BLOCK_N": nb}
        kernel[(triton.cdiv(n, blocks[along]) * bh,)](*args, **meta, **blocks)
        return
    key = (tuple(a.dtype for a in args if isinstance(a, torch.Tensor)), *meta.values())
    config = kernel.chosen.get(key)
    if config is not None:
        kernel.fn[(triton.cdiv(n, config.kwargs[along]) * bh,)](*args, **meta, **config.all_kwargs())
        return
    if meta["USE_DESC"]:
        _allocator()
    try:
        kernel[lambda c: (triton.cdiv(n, c[along]) * bh,)](*args, **meta)
    except Exception as e:  # noqa: BLE001 - a Triton that cannot build the descriptor path: without
        if not meta["USE_DESC"]:
            raise
        global _DESCRIPTORS_FAILED
        _DESCRIPTORS_FAILED = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warnings.warn(f"clbench's attention kernels run without tensor descriptors: {_DESCRIPTORS_FAILED}",
                      stacklevel=2)
        return _launch(name, n, bh, args, {**meta, "USE_DESC": False})
    kernel.chosen[key] = kernel.best_config


_DESCRIPTORS_FAILED = ""  # why the descriptor path failed to build here ("" = it did not)


@functools.cache
def _allocator() -> None:
    """Kernels that build tensor descriptors need global scratch memory (once per process)."""
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _hopper(device: torch.device) -> bool:
    """Whether ``device`` is a GPU of compute capability 9 (Hopper) or more."""
    if device.type != "cuda":
        return False
    return _capability(torch.cuda.current_device() if device.index is None else device.index)[0] >= 9


def dq_mode(device: torch.device | None = None) -> str:
    """How the backward computes dQ: ``CLBENCH_FLASH_DQ=atomic|split``; by default ``atomic`` on
    Hopper or newer GPUs and ``split`` elsewhere (the interpreter included).

    ``atomic``: the dK/dV kernel also adds each block pair's share of dQ to an fp32 buffer with
    atomic adds, as FlashAttention-2 does: 5 tile products per block pair, one kernel, run-to-run
    differences in the last bits of dQ. ``split``: a second kernel, one program per query block,
    recomputes P and dP (7 products per pair) and writes dQ once: deterministic.
    """
    mode = os.environ.get("CLBENCH_FLASH_DQ") or ("atomic" if device is not None and _hopper(device) else "split")
    if mode not in ("split", "atomic"):
        raise UserError(f"CLBENCH_FLASH_DQ={mode!r} is not one of: split, atomic")
    return mode


def descriptors(*tensors: torch.Tensor) -> bool:
    """Whether the kernels load these tensors' tiles through tensor descriptors (TMA):
    ``CLBENCH_FLASH_TMA=0`` never, ``=1`` wherever Triton has them (the interpreter included:
    tests); by default on Hopper or newer GPUs. Either way only when every tensor's layout allows
    it: 16-byte aligned, unit last stride, rows apart (other strides multiples of 16 bytes)."""
    setting = os.environ.get("CLBENCH_FLASH_TMA", "")
    if setting == "0" or not HAS_DESCRIPTORS or _DESCRIPTORS_FAILED:
        return False
    if setting != "1" and not _hopper(tensors[0].device):
        return False
    return all(t.data_ptr() % 16 == 0 and t.stride(-1) == 1 and t.stride(-2) > 0
               and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]) for t in tensors)


def _meta(q: torch.Tensor, n: int, causal: bool, lengths, skip: bool) -> dict:
    """The keyword arguments the three kernels share (``n``: the longer of N_Q and N_K)."""
    d = q.shape[-1]
    fp32 = q.dtype == torch.float32
    return dict(
        N_BUCKET=triton.next_power_of_2(max(n, 16)),
        HEAD_DIM=d,
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        CAUSAL=bool(causal),
        HAS_LENGTHS=lengths is not None,
        SKIP_PADDED=bool(skip) and lengths is not None,
        BF16_IN_FP32=INTERPRET and q.dtype == torch.bfloat16,
        # fp32: tensor cores with fp32 accuracy (3 TF32 products), or TF32 where the user allowed
        # it for torch's matmuls too; the input precision of 16-bit products is unused
        PRECISION=("tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3") if fp32 else "tf32",
    )


def _empty_bnhd(b: int, h: int, n: int, d: int, like: torch.Tensor, dtype=None, zeros=False) -> torch.Tensor:
    """A ``(B, H, N, D)`` tensor laid out as ``(B, N, H, D)`` in memory, so that the model's
    transpose back to ``(B, N, H·D)`` costs no copy."""
    make = torch.zeros if zeros else torch.empty
    return make((b, n, h, d), dtype=dtype or like.dtype, device=like.device).transpose(1, 2)


def _forward(q, k, v, lengths, causal, scale, skip):
    B, H, N_Q, D = q.shape
    N_K = k.shape[2]
    o = _empty_bnhd(B, H, N_Q, D, q)
    lse = torch.empty((B, H, N_Q), dtype=torch.float32, device=q.device)
    if o.numel() == 0 or N_K == 0:
        return o.zero_(), lse.fill_(float("inf"))
    args = (q, k, v, o, lse, lse if lengths is None else lengths,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), H, N_Q, N_K, scale * LOG2E)
    meta = _meta(q, max(N_Q, N_K), causal, lengths, skip)
    _launch("fwd", N_Q, B * H, args, {**meta, "USE_DESC": descriptors(k, v)})
    return o, lse


def _backward(do, q, k, v, o, lse, lengths, causal, scale, skip):
    B, H, N_Q, D = q.shape
    N_K = k.shape[2]
    dk = _empty_bnhd(B, H, N_K, D, k)
    dv = _empty_bnhd(B, H, N_K, D, v)
    if q.numel() == 0 or dk.numel() == 0:
        return _empty_bnhd(B, H, N_Q, D, q, zeros=True), dk.zero_(), dv.zero_()
    meta = _meta(q, max(N_Q, N_K), causal, lengths, skip)
    delta = torch.empty_like(lse)
    block = 64
    _attn_bwd_delta[(triton.cdiv(N_Q, block) * B * H,)](
        o, do, delta, *o.stride(), *do.stride(), H, N_Q, HEAD_DIM=D, BLOCK_D=meta["BLOCK_D"], BLOCK_M=block)
    common = (*q.stride(), *k.stride(), *v.stride(), *do.stride())
    lens = lse if lengths is None else lengths
    atomic = dq_mode(q.device) == "atomic"
    # atomic: dQ is summed in fp32, laid out as the returned gradients, and scaled once at the end
    dq = _empty_bnhd(B, H, N_Q, D, q, dtype=torch.float32 if atomic else None, zeros=atomic)
    _launch("dkdv_atomic" if atomic else "dkdv", N_K, B * H,
            (q, k, v, do, dk, dv, lse, delta, lens, dq, *common, *dk.stride(), H, N_Q, N_K, scale * LOG2E, scale),
            {**meta, "USE_DESC": descriptors(q, do), "DQ_ATOMIC": atomic})
    if atomic:
        return dq.mul_(scale).to(q.dtype), dk, dv
    _launch("dq", N_Q, B * H,
            (q, k, v, do, dq, lse, delta, lens, *common, *dq.stride(), H, N_Q, N_K, scale * LOG2E, scale),
            {**meta, "USE_DESC": descriptors(k, v)})
    return dq, dk, dv


def _on(device: torch.device):
    """Launch on ``device``, whatever the current CUDA device is."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class FlashAttention(torch.autograd.Function):
    """``FlashAttention.apply(q, k, v, lengths, causal, scale, skip_padded_queries)``; prefer
    :func:`flash_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, lengths, causal, scale, skip):
        with _on(q.device):
            o, lse = _forward(q, k, v, lengths, causal, scale, skip)
        ctx.save_for_backward(q, k, v, o, lse, lengths)
        ctx.causal, ctx.scale, ctx.skip = causal, scale, skip
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse, lengths = ctx.saved_tensors
        with _on(q.device):
            dq, dk, dv = _backward(do, q, k, v, o, lse, lengths, ctx.causal, ctx.scale, ctx.skip)
        return dq, dk, dv, None, None, None, None


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
    if q.device.type == "cuda" and INTERPRET:
        return "TRITON_INTERPRET=1 would run them in Triton's CPU interpreter, not on the GPU (unset it)"
    if q.device.type != "cuda" and not INTERPRET:
        return "tensors on the CPU need TRITON_INTERPRET=1 (set before clbench.models.kernels is first imported)"
    if lengths is not None and (lengths.shape != (B,) or lengths.is_floating_point()):
        return f"lengths must be an integer tensor of shape ({B},), got {lengths.dtype} {tuple(lengths.shape)}"
    return None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None = None,
                    causal: bool = False, scale: float | None = None,
                    skip_padded_queries: bool = False) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over ``(B, H, N, D)`` tensors, differentiable in q, k and v.

    :param lengths: ``(B,)`` number of valid keys of each sequence, any integer dtype (None: all
        ``N_K`` are valid).
    :param causal: query ``i`` sees keys ``j <= i + N_K - N_Q`` only.
    :param scale: the softmax scale (positive), ``1/sqrt(head_dim)`` by default.
    :param skip_padded_queries: query rows ``i >= lengths[b]`` are not computed: their output and
        gradients are zero (for a model that discards them).
    :returns: ``(B, H, N_Q, D)`` in the inputs' dtype, or autocast's where it is on for fp32
        inputs (laid out as ``(B, N_Q, H, D)`` in memory).
    """
    q, k, v = autocast_inputs(q, k, v)
    why = unsupported(q, k, v, lengths)
    if why:
        raise ValueError(why)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"the softmax scale must be positive, got {scale}")
    if lengths is not None:
        lengths = lengths.to(q.device).contiguous()  # no copy when it is already there
    return FlashAttention.apply(q, k, v, lengths, bool(causal), scale, bool(skip_padded_queries))
