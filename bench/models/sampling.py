"""Sampling the next token instead of taking the likeliest: what ``generate`` does when it is
given a :class:`Sampling` (the generative-replay strategies write their rehearsal data this way;
evaluation stays greedy).

:meth:`Sampling.pick` keeps the ``top_k`` likeliest tokens (Fan et al. 2018), then the smallest
set of them whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020), of the
logits divided by ``temperature``, and draws one token per row from what is left by inverse
transform sampling: a uniform number per row from ``generator`` (a CPU ``torch.Generator``),
moved to the logits' device. The draws are therefore the same numbers on any device, and a
seeded generator makes the choice reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """How ``generate`` picks each next token.

    :param top_k: keep the k likeliest tokens (0: every token).
    :param top_p: then keep the fewest likeliest tokens whose probability reaches ``top_p`` (1.0: all).
    :param temperature: divide the logits by it first (below 1: sharper; above: flatter).
    """

    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        if self.top_k < 0 or not 0 < self.top_p <= 1 or not self.temperature > 0:
            raise ValueError(f"bad sampling settings {self}")

    def pick(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One token id per row of ``logits`` ``(B, V)``: ``(B,)`` int64, on their device."""
        B, V = logits.shape
        k = V if self.top_k == 0 else min(self.top_k, V)
        vals, idx = (logits.float() / self.temperature).topk(k, dim=-1)  # (B, k), likeliest first
        probs = vals.softmax(-1).double()
        if self.top_p < 1.0:  # drop a token once those before it already reach top_p
            before = probs.cumsum(-1) - probs
            probs = probs.masked_fill(before >= self.top_p, 0.0)
        cdf = probs.cumsum(-1)
        u = torch.rand(B, 1, generator=generator, dtype=torch.float64).to(logits.device) * cdf[:, -1:]
        choice = (cdf <= u).sum(-1).clamp(max=k - 1)  # the first token whose cumulative mass passes u
        return idx.gather(1, choice[:, None])[:, 0]
