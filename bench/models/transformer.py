"""The clbench Transformer, in one file (after nanoGPT's model.py).

An encoder of Transformer blocks over token ids or patch vectors, with a classification head over
the stream's label space, or (``lm_head = True``, with ``causal = True``) a decoder with a
language-model head that generates with a KV cache (:meth:`Transformer.generate`). Blocks are pre-norm (nanoGPT, the default) or post-norm with a LayerNorm
after the embeddings (BERT: ``norm = "post"``, ``embed_norm = True``), which is how a BERT-family
checkpoint such as MiniLM runs in it (see :mod:`clbench.models.backbones`). Attention goes through
:func:`clbench.models.attention.attention`; padding is expressed as sequence lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from .sampling import Sampling


@dataclass
class ModelConfig:
    d_model: int = 64  # width of the residual stream
    n_layers: int = 2  # number of Transformer blocks
    n_heads: int = 4  # attention heads; d_model must be divisible by it
    mlp_ratio: int = 4  # hidden width of the MLP, as a multiple of d_model
    dropout: float = 0.0  # dropout on attention output and MLP (0 keeps runs deterministic)
    causal: bool = False  # bidirectional encoder (False) or causal decoder (True)
    pooling: str = "mean"  # "mean" over valid positions, or "first" (a CLS-style first position)
    max_len: int = 512  # positional embeddings available; longer inputs are an error
    bias: bool = True  # biases in Linear and LayerNorm layers
    norm: Literal["pre", "post"] = "pre"  # LayerNorm before each sublayer (GPT) or after the residual sum (BERT)
    norm_eps: float = 1e-5  # LayerNorm epsilon (BERT uses 1e-12)
    embed_norm: bool = False  # a LayerNorm on the embeddings (BERT)
    init: str = "random"  # initial weights: "random", "minilm", a clbench checkpoint folder, or "hf:<name>"

    #: The fields that define the network's shape; a pretrained ``init`` sets them all.
    ARCHITECTURE = ("d_model", "n_layers", "n_heads", "mlp_ratio", "causal", "max_len", "bias", "norm", "norm_eps", "embed_norm")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def architecture(self) -> dict:
        return {k: getattr(self, k) for k in self.ARCHITECTURE}


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = cfg.n_heads
        self.causal = cfg.causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, N, C) -> (B, H, N, D)
        q, k, v = (t.view(B, N, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if cache is None:
            y = attention(q, k, v, lengths=lengths, causal=self.causal)
        else:
            y = cache.attend(self, q, k, v, lengths)
        y = y.transpose(1, 2).contiguous().view(B, N, C)
        return self.dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.post = cfg.norm == "post"
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        if self.post:  # BERT
            x = self.ln_1(x + self.attn(x, lengths, cache))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), lengths, cache)
        return x + self.mlp(self.ln_2(x))


class LMHead(nn.Module):
    """BERT's LM head: dense, GELU, LayerNorm, then logits over the (tied) token embeddings."""

    def __init__(self, cfg: ModelConfig, vocab: int):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, h: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        return F.linear(self.ln(F.gelu(self.dense(h))), embed, self.bias)


class KVCache:
    """Keys and values of every layer for batched greedy decoding, right-padded like everything
    else: ``(B, H, n_max, D)`` buffers per layer. The prompt pass (``pos`` None) stores its
    keys and values at positions ``0..N-1``; each later pass stores one token per sequence at its
    own position ``pos[b]`` (sequences of different lengths decode side by side) and attends to
    the first ``pos[b] + 1`` keys. ``n_keys`` (a host-side bound on ``max(pos) + 1``) trims
    the keys attended to without a device sync."""

    def __init__(self, model: "Transformer", batch: int, n_max: int, device, dtype):
        cfg = model.cfg
        shape = (batch, cfg.n_heads, n_max, cfg.d_model // cfg.n_heads)
        self.k = {id(b.attn): torch.zeros(shape, device=device, dtype=dtype) for b in model.blocks}
        self.v = {id(b.attn): torch.zeros(shape, device=device, dtype=dtype) for b in model.blocks}
        self.pos: torch.Tensor | None = None
        self.n_keys = 0

    def attend(self, layer: SelfAttention, q, k, v, lengths) -> torch.Tensor:
        kc, vc = self.k[id(layer)], self.v[id(layer)]
        if self.pos is None:  # the prompts
            n = k.shape[2]
            kc[:, :, :n], vc[:, :, :n] = k, v
            return attention(q, k, v, lengths=lengths, causal=layer.causal)
        rows = torch.arange(k.shape[0], device=k.device)
        kc[rows, :, self.pos], vc[rows, :, self.pos] = k[:, :, 0], v[:, :, 0]
        return attention(q, kc[:, :, : self.n_keys], vc[:, :, : self.n_keys], lengths=self.pos + 1, causal=False)


class Transformer(nn.Module):
    """A Transformer classifier.

    :param input_kind: ``"tokens"`` (``x`` is ``(B, N)`` int64 ids < ``input_dim``) or
        ``"patches"`` (``x`` is ``(B, N, input_dim)`` float vectors).
    :param n_classes: the size of the stream's label space (the head's outputs).
    """

    def __init__(self, cfg: ModelConfig, *, input_kind: str, input_dim: int, n_classes: int, lm_head: bool = False):
        super().__init__()
        self.cfg = cfg
        self.input_kind = input_kind
        if input_kind == "tokens":
            self.embed = nn.Embedding(input_dim, cfg.d_model)
        elif input_kind == "patches":
            self.embed = nn.Linear(input_dim, cfg.d_model, bias=cfg.bias)
        else:
            raise ValueError(f"unknown input kind {input_kind!r}")
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.ln_e = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias) if cfg.embed_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # pre-norm ends with a LayerNorm; in post-norm the last block's output is already normed
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias) if cfg.norm == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.d_model, n_classes, bias=True) if n_classes else None
        self.lm_head = LMHead(cfg, input_dim) if lm_head else None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _encode(self, x: torch.Tensor, lengths: torch.Tensor | None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last layer's states, and ``lengths`` (None when nothing is padded). With a
        ``cache`` past its prompt pass, ``x`` is one token per sequence at ``cache.pos``."""
        N = x.shape[1]
        if N > self.cfg.max_len:
            raise ValueError(f"sequence of {N} positions exceeds max_len={self.cfg.max_len}")
        pos = torch.arange(N, device=x.device) if cache is None or cache.pos is None else cache.pos[:, None]
        h = self.drop(self.ln_e(self.embed(x) + self.pos(pos)))  # (B, N, C)
        if lengths is not None and not lengths.is_cuda and bool((lengths >= N).all()):
            lengths = None  # nothing is padded: the fast path (asked on the CPU only: a GPU would wait for the answer)
        for block in self.blocks:
            h = block(h, lengths, cache)
        return self.ln_f(h), lengths

    def hidden_states(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's ``(B, N, d_model)`` states, one per position (padded ones included,
        but no valid position attends to them)."""
        return self._encode(x, lengths)[0]

    def features(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled ``(B, d_model)`` features of a batch."""
        h, lengths = self._encode(x, lengths)
        if self.cfg.pooling == "first":
            return h[:, 0]
        if lengths is None:
            return h.mean(dim=1)
        valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(h.dtype)  # (B, N)
        return (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp_min(1.0)

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        class_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, n_classes)``; ``class_mask`` ``(B, n_classes)`` bool sets the logits of
        classes outside each example's task to -inf (task-incremental scenarios)."""
        logits = self.head(self.features(x, lengths))
        if class_mask is not None:
            logits = logits.masked_fill(~class_mask, float("-inf"))
        return logits

    # -- a decoder's language-model head ----------------------------------------------------------
    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(..., input_dim)`` of states ``h`` ``(..., d_model)``."""
        return self.lm_head(h, self.embed.weight)

    @torch.no_grad()
    def generate(self, x: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int, eos_id: int,
                 sampling: Sampling | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Greedy continuations ``(B, max_new_tokens)`` of the right-padded prompts ``x``
        ``(B, N)`` of ``lengths`` tokens, with a KV cache; a sequence that produced ``eos_id``
        gets ``eos_id`` from then on, and decoding stops when every sequence has. With
        ``sampling``, each token is drawn by :meth:`Sampling.pick` with ``generator`` instead."""
        B, N = x.shape
        new = min(max_new_tokens, self.cfg.max_len - N)
        out = torch.full((B, max(max_new_tokens, 0)), eos_id, dtype=torch.long, device=x.device)
        if new <= 0:
            return out
        p = next(self.parameters())
        cache = KVCache(self, B, N + new, x.device, p.dtype)
        h, _ = self._encode(x, lengths, cache)
        last = h[torch.arange(B, device=x.device), lengths - 1]  # (B, C): each prompt's last state
        done = torch.zeros(B, dtype=torch.bool, device=x.device)
        cache.pos, cache.n_keys = lengths.clone(), N + 1
        for step in range(new):
            logits = self.lm_logits(last)
            tok = logits.argmax(-1) if sampling is None else sampling.pick(logits, generator)
            tok = torch.where(done, torch.full_like(tok, eos_id), tok)
            out[:, step] = tok
            done |= tok == eos_id
            if step == new - 1 or bool(done.all()):
                break
            h, _ = self._encode(tok[:, None], None, cache)
            last = h[:, 0]
            cache.pos += 1
            cache.n_keys += 1
        return out

    def n_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
