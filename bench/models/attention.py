"""The one attention entry point of the clbench Transformer.

``attention(q, k, v, lengths=..., causal=..., scale=...)`` picks an implementation:

* ``triton``: our FlashAttention-2 kernels (:mod:`clbench.models.kernels`), the default for CUDA tensors;
* ``sdpa``: torch's ``scaled_dot_product_attention``, the default for CPU tensors (and on CUDA
  when Triton is missing or the inputs are outside what the kernels take: head_dim > 128, fp64);
* ``reference``: a plain softmax(QKᵀ)V in the input dtype, for tests and debugging.

``CLBENCH_ATTENTION=triton|sdpa|reference`` forces one. Forcing ``triton`` on CPU tensors needs
``TRITON_INTERPRET=1`` in the environment before the kernels are first imported (Triton then
runs them in its interpreter: slow, for tests). Triton is imported only when the ``triton`` path
is taken. Padding is given as ``lengths`` (the number of valid keys of each sequence); a query
row with no valid key yields zeros, never NaN. See docs/kernels.md.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn.functional as F

IMPLEMENTATIONS = ("triton", "sdpa", "reference")

_kernels = None  # clbench.models.kernels once imported; False if Triton could not be imported
_kernels_error = "triton is not installed"  # why not, then


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


def reference_attention(q, k, v, lengths=None, causal=False, scale=None) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    mask = _key_mask(lengths, q.shape[-2], k.shape[-2], causal, q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
    return p @ v


def sdpa_attention(q, k, v, lengths=None, causal=False, scale=None) -> torch.Tensor:
    if lengths is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    mask = _key_mask(lengths, q.shape[-2], k.shape[-2], causal, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # Rows without any valid key come back as NaN from the math backend: make them zeros.
    empty = ~mask.any(dim=-1, keepdim=True)  # (B, 1, n_q, 1)
    if bool(empty.any()):
        out = out.masked_fill(empty, 0.0)
    return out


def kernels():
    """``clbench.models.kernels``, imported on first use; None (with one warning) if Triton cannot be
    imported here."""
    global _kernels, _kernels_error
    if _kernels is None:
        try:
            from . import kernels as mod
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
            from ..errors import UserError

            raise UserError(
                f"CLBENCH_ATTENTION={forced!r} is not one of: {', '.join(IMPLEMENTATIONS)}"
            )
        if forced == "triton":
            why = _triton_unsupported(q, k, v, lengths)
            if why:
                from ..errors import UserError

                raise UserError(f"CLBENCH_ATTENTION=triton cannot run here: {why}")
        return forced
    if q.is_cuda and _triton_unsupported(q, k, v, lengths) is None:
        return "triton"
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
    impl = choose(q, k, v, lengths)
    if impl == "triton":
        return kernels().flash_attention(q, k, v, lengths=lengths, causal=causal, scale=scale)
    if impl == "reference":
        return reference_attention(q, k, v, lengths, causal, scale)
    return sdpa_attention(q, k, v, lengths, causal, scale)
