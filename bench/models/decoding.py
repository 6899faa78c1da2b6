"""What clbench's decoder and Hugging Face causal LMs share for evaluation: a KV cache that is
extended token by token at each sequence's own position, and batched greedy decoding from it.

A model that decodes (:class:`clbench.models.Transformer` with an LM head,
:class:`clbench.models.hf.HFCausalLM`) offers:

* ``new_cache(batch, device)``: an empty cache of ``batch`` sequences;
* ``extend(cache, x, n=None)``: feeds ``x`` ``(B, m)``, right-padded, at each sequence's next
  positions (``cache.length[b] + i``; the first ``n[b]`` tokens are real, all ``m`` when ``n``
  is None) and returns the last layer's states ``(B, m, C)``; the cache then holds their keys
  and values, and ``cache.length`` has grown by ``n``. A query attends to the sequence's cached
  keys and to the new keys at or before its own position.
* ``lm_logits(h)``: next-token logits.

A cache offers ``length`` ``(B,)`` (the next position of each sequence), ``take(index)`` (a new
cache of the rows ``index`` names, repeated or reordered: a prompt's cache for each of its
candidates, a shared prefix for every prompt of a batch) and ``truncate(lengths)`` (forget the
keys at positions ``>= lengths[b]``: the prompt's cache after its answer was scored).

:func:`decode` decodes from a cache (greedy, or sampled); :func:`shared_prefix` finds the prompt tokens every test
prompt of a task starts with, whose keys and values an evaluation computes once.
"""

from __future__ import annotations

import torch

from .sampling import Sampling

#: A shared prefix shorter than this is not worth a pass of its own.
MIN_SHARED_PREFIX = 8


@torch.no_grad()
def decode(model, cache, first: torch.Tensor, limits: torch.Tensor, max_new_tokens: int, eos_id: int,
           sampling: Sampling | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy continuations ``(B, max_new_tokens)`` of the prompts in ``cache``, whose next
    token logits are ``first`` ``(B, V)``: sequence ``b`` produces at most ``limits[b]`` tokens
    (what the model's positions leave it), and ``eos_id`` after its end token or its limit;
    decoding stops when every sequence has ended. With ``sampling``, each token is drawn by
    :meth:`Sampling.pick` with ``generator`` (for every row, ended or not) instead."""
    B = first.shape[0]
    out = torch.full((B, max(max_new_tokens, 0)), eos_id, dtype=torch.long, device=first.device)
    if max_new_tokens <= 0 or not bool((limits > 0).any()):
        return out

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1) if sampling is None else sampling.pick(logits, generator)

    done = limits <= 0
    tok = pick(first)
    for step in range(max_new_tokens):
        tok = torch.where(done, torch.full_like(tok, eos_id), tok)
        out[:, step] = tok
        done |= (tok == eos_id) | (limits <= step + 1)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        h = model.extend(cache, tok[:, None])
        tok = pick(model.lm_logits(h[:, 0]))
    return out


def shared_prefix(x: torch.Tensor, start: torch.Tensor) -> int:
    """The number of leading tokens that every prompt (``x[b, :start[b]]``) has in common, at most
    ``min(start) - 1`` (each prompt keeps its last token, whose state predicts the answer); 0 when
    that is shorter than :data:`MIN_SHARED_PREFIX`."""
    if x.shape[0] < 2:
        return 0
    m = int(start.min()) - 1
    if m < MIN_SHARED_PREFIX:
        return 0
    differs = (x[:, :m] != x[:1, :m]).any(dim=0)  # (m,)
    p = int(differs.nonzero()[0]) if bool(differs.any()) else m
    return p if p >= MIN_SHARED_PREFIX else 0
