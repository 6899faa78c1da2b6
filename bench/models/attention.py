"""The one attention entry point of the clbench Transformer.

``attention(q, k, v, lengths=..., causal=..., scale=...)`` picks an implementation:

* ``triton``: our FlashAttention-2 kernels (:mod:`clbench.models.kernels`), the default for fp16
  and bf16 CUDA tensors;
* ``sdpa``: torch's ``scaled_dot_product_attention``, the default for CPU tensors, for fp32 CUDA
  tensors, and on CUDA when Triton is missing or the inputs are outside what the kernels take
  (head_dim > 128, fp64): then with one warning per reason;
* ``reference``: a plain softmax(QKᵀ)V in the input dtype, for tests and debugging.

``CLBENCH_ATTENTION=triton|sdpa|reference`` forces one. Forcing ``triton`` on CPU tensors needs
``TRITON_INTERPRET=1`` in the environment before the kernels are first imported (Triton then
runs them in its interpreter: slow, for tests). Triton is imported only when the ``triton`` path
is taken. Under autocast, fp32 inputs are cast to autocast's dtype first (as torch does for
SDPA). Padding is given as ``lengths`` (the number of valid keys of each sequence); a query row
with no valid key yields zeros, never NaN. ``CLBENCH_SKIP_PADDED_QUERIES=1`` zeroes the query
rows at or past each sequence's length instead of computing them (our kernels skip their work).
:func:`recording` collects the implementations that ran. See docs/kernels.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import warnings

import torch
import torch.nn.functional as F

from ..errors import UserError
from .autocast import autocast_inputs

IMPLEMENTATIONS = ("triton", "sdpa", "reference")

_kernels = None  # clbench.models.kernels once imported; False if Triton could not be imported
_kernels_error = "triton is not installed"  # why not, then
_used: contextvars.ContextVar[set | None] = contextvars.ContextVar("attention_used", default=None)
_warned: set[str] = set()  # the fallback reasons already warned about


@contextlib.contextmanager
def recording():
    """``with recording() as used:`` collects in ``used`` (a set) the implementations that
    :func:`attention` ran inside the block."""
    used: set[str] = set()
    token = _used.set(used)
    try:
        yield used
    finally:
        _used.reset(token)


def _key_mask(lengths: torch.Tensor | None, n_q: int, n_k: int, causal: bool, device) -> torch.Tensor | None:
    """Boolean ``(B or 1, 1, n_q, n_k)`` mask of allowed (query, key) pairs, or None if all are."""
    mask = None
    if lengths is not None:
        keys = torch.arange(n_k, device=device)
        mask = (keys[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, n_k)
    if causal:
        c = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(n_k - n_q)[None, None]
        mask = c if mask is None else mask & c
    return mask


def _padded_rows(lengths: torch.Tensor, n_q: int) -> torch.Tensor:
    """``(B, 1, n_q, 1)``: the query rows at or past each sequence's length."""
    return (torch.arange(n_q, device=lengths.device)[None, :] >= lengths[:, None])[:, None, :, None]


def reference_attention(q, k, v, lengths=None, causal=False, scale=None, skip_padded_queries=False) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    mask = _key_mask(lengths, q.shape[-2], k.shape[-2], causal, q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
    out = p @ v
    if skip_padded_queries and lengths is not None:
        out = out.masked_fill(_padded_rows(lengths, q.shape[-2]), 0.0)
    return out


def sdpa_attention(q, k, v, lengths=None, causal=False, scale=None, skip_padded_queries=False) -> torch.Tensor:
    if lengths is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    mask = _key_mask(lengths, q.shape[-2], k.shape[-2], causal, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # Rows without any valid key come back as NaN from the math backend: make them zeros (always:
    # asking whether there are any would make a GPU wait for the answer)
    zero = ~mask.any(dim=-1, keepdim=True)  # (B, 1, n_q, 1)
    if skip_padded_queries:
        zero = zero | _padded_rows(lengths, q.shape[-2])
    return out.masked_fill(zero, 0.0)


def kernels():
    """``clbench.models.kernels``, imported on first use; None (with one warning) if Triton cannot be
    imported here."""
    global _kernels, _kernels_error
    if _kernels is None:
        try:
            from . import kernels as mod  # here, not at the top: Triton is optional, and slow to import
        except Exception as e:  # noqa: BLE001 - no Triton, or a broken one: fall back to SDPA
            _kernels_error = f"{type(e).__name__}: {e}"
            warnings.warn(f"clbench's Triton attention kernels are unavailable ({_kernels_error}); "
                          "using SDPA", stacklevel=3)
            mod = False
        _kernels = mod
    return _kernels or None


def choose(q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None,
           lengths: torch.Tensor | None = None) -> str:
    """The implementation :func:`attention` uses for these inputs."""
    forced = os.environ.get("CLBENCH_ATTENTION")
    if forced:
        if forced not in IMPLEMENTATIONS:
            raise UserError(
                f"CLBENCH_ATTENTION={forced!r} is not one of: {', '.join(IMPLEMENTATIONS)}"
            )
        if forced == "triton":
            why = _triton_unsupported(q, k, v, lengths)
            if why:
                raise UserError(f"CLBENCH_ATTENTION=triton cannot run here: {why}")
        return forced
    if not q.is_cuda:
        return "sdpa"
    why = _triton_unsupported(q, k, v, lengths)
    if why is None and q.dtype == torch.float32:
        why = "fp32 goes to SDPA by default (training.precision = \"bf16\" runs our kernels)"
    if why is None:
        return "triton"
    if why not in _warned:  # once per reason
        _warned.add(why)
        warnings.warn(f"attention on CUDA falls back to SDPA: {why}", stacklevel=3)
    return "sdpa"


def _triton_unsupported(q, k, v, lengths) -> str | None:
    mod = kernels()
    if mod is None:
        return f"the kernels do not import ({_kernels_error})"
    return mod.unsupported(q, q if k is None else k, q if v is None else v, lengths)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    lengths: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention over ``(B, H, N, D)`` tensors; ``lengths`` ``(B,)`` counts each row's valid keys."""
    q, k, v = autocast_inputs(q, k, v)
    impl = choose(q, k, v, lengths)
    used = _used.get()
    if used is not None:
        used.add(impl)
    skip = lengths is not None and os.environ.get("CLBENCH_SKIP_PADDED_QUERIES", "") == "1"
    if impl == "triton":
        return kernels().flash_attention(q, k, v, lengths=lengths, causal=causal, scale=scale,
                                         skip_padded_queries=skip)
    fn = reference_attention if impl == "reference" else sdpa_attention
    return fn(q, k, v, lengths, causal, scale, skip)
