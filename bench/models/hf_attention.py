"""clbench's attention as a transformers attention implementation, ``attn_implementation="clbench"``.

:func:`register` adds it to transformers' ``AttentionInterface`` (and, where transformers has an
``AttentionMaskInterface``, gives it SDPA's mask function, so the model builds the same masks as
for ``"sdpa"``). Inside a Hugging Face model, :func:`clbench_attention` then sends a layer's
attention through :func:`clbench.models.attention.attention` (our Triton kernels on a GPU, SDPA on
a CPU) when the mask is what ``lengths`` express: causal (or full) attention over right-padded
sequences, queries and keys of the same length. It reads the lengths off the mask the model
built (its last row, for a causal mask) and checks the whole mask against them, once per mask
(every layer of a forward pass shares one). Everything else goes to transformers' own SDPA
function with the mask, unchanged: left padding (``generate``'s), decoding steps with a cache,
sliding windows shorter than the sequence, soft-capping, attention sinks, position biases, and
attention dropout while training. (GPT-2 in some 4.x releases gives implementations other than
its own a key-padding mask without the causal part; a causal self-attention layer gets the
causal part added here.)
"""

from __future__ import annotations

import weakref

import torch

from .attention import attention

NAME = "clbench"
#: kwargs of transformers' attention functions that change the computation beyond a causal mask
_SPECIAL = ("softcap", "position_bias", "s_aux", "sinks")

_seen: dict[tuple[int, bool], tuple[weakref.ref, bool, torch.Tensor | None]] = {}


def _lengths(mask: torch.Tensor | None, causal: bool) -> tuple[bool, torch.Tensor | None]:
    """``(True, lengths)`` when ``mask`` ``(B or 1, 1, N, N)`` (boolean, or additive with 0 where
    allowed) is the causal (or full) mask of right-padded sequences of ``lengths`` keys (None:
    nothing padded); ``(False, None)`` when it is not. Remembered per mask object."""
    if mask is None:
        return True, None
    key = (id(mask), causal)
    hit = _seen.get(key)
    if hit is not None and hit[0]() is mask:
        return hit[1], hit[2]
    ok, lengths = False, None
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == mask.shape[3]:
        allowed = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0  # (B, N, N)
        n = allowed.shape[-1]
        lengths = allowed[:, -1].sum(-1)  # the last query sees every valid key
        keys = torch.arange(n, device=mask.device)
        want = keys[None, None, :] < lengths[:, None, None]
        if causal:
            want = want & (keys[:, None] >= keys[None, :])[None]
        ok = bool(torch.equal(allowed, want.expand_as(allowed)))
        lengths = lengths if ok and bool((lengths < n).any()) else None
    for k in [k for k, v in _seen.items() if v[0]() is None]:
        del _seen[k]
    _seen[key] = (weakref.ref(mask), ok, lengths)
    return ok, lengths


def _sdpa():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # optional: clbench[llm]

    return ALL_ATTENTION_FUNCTIONS["sdpa"]


def clbench_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """A transformers attention function: ``query`` ``(B, H, Nq, D)``, ``key``/``value``
    ``(B, H_kv, Nk, D)`` → ``((B, Nq, H, D), None)``."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    n = query.shape[2]
    if (attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[2] == 1 < n == key.shape[2]
            and getattr(module, "is_causal", False) and not getattr(module, "is_cross_attention", False)):
        # GPT-2 in some 4.x releases gives implementations other than its own a key-padding mask
        # only (its eager attention adds the causal part itself), and is_causal=False with it
        keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        tril = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
        attention_mask, causal, is_causal = keep & tril, True, None
    window = kwargs.get("sliding_window")
    plain = (query.shape[2] == key.shape[2] and not dropout
             and all(kwargs.get(k) is None for k in _SPECIAL)
             and (window is None or window >= key.shape[2]))
    ok, lengths = _lengths(attention_mask, bool(causal)) if plain else (False, None)
    if not ok:
        if is_causal is not None:
            kwargs["is_causal"] = is_causal
        return _sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if lengths is not None and lengths.shape[0] != query.shape[0]:
        lengths = lengths.expand(query.shape[0])
    rep = query.shape[1] // key.shape[1]
    if rep > 1:  # grouped-query attention: each key/value head serves `rep` query heads
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    out = attention(query, key, value, lengths=lengths, causal=bool(causal), scale=scaling)
    return out.transpose(1, 2).contiguous(), None


_registered: bool | None = None


def register() -> bool:
    """Register ``"clbench"`` with transformers (once); False where this transformers has no
    ``AttentionInterface`` (before 4.51), and models then run with ``"sdpa"``."""
    global _registered
    if _registered is None:
        try:
            from transformers.modeling_utils import AttentionInterface  # optional: clbench[llm]
        except ImportError:
            _registered = False
            return False
        AttentionInterface.register(NAME, clbench_attention)
        try:  # transformers >= 4.53 builds masks per implementation; an unknown one gets none
            from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface  # optional
        except ImportError:  # before: the model builds its own (additive) masks, which we read too
            pass
        else:
            AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
        _registered = True
    return _registered
