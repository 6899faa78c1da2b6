"""Hugging Face causal language models as clbench's model for generative tasks.

``model.init = "hf:<name>"`` (downloaded from the Hub) or a folder holding a causal LM saved by
the Hugging Face libraries (``config.json`` whose ``model_type`` transformers maps to a causal
LM, safetensors weights, possibly sharded, and the tokenizer's files) resolves to a
:class:`~clbench.models.backbones.Backbone` of kind ``"hf-causal"`` (:func:`hf_backbone`).
:func:`load_causal_lm` loads it with transformers' own modeling code (no architecture is
re-implemented here) and wraps it in :class:`HFCausalLM`, which offers what the generation kind
asks of a model: ``hidden_states``, ``lm_logits``, ``generate``, ``n_parameters``. Attention runs
through clbench's (``attn_implementation="clbench"``, :mod:`clbench.models.hf_attention`).
:class:`HFTextTokenizer` is the model's tokenizer for generative streams. See docs/llm.md.
"""

from __future__ import annotations

import copy
import inspect
import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import UserError

EXTRA = "pip install 'clbench[llm]'"
#: clbench's names of a Transformer's projections (LoRA's ``target_modules``) and the layers of
#: Hugging Face models they stand for; any other target is a module name of the model itself.
HF_TARGETS = {
    "q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",),
    "attn.proj": ("o_proj", "attn.c_proj"), "mlp.proj": ("down_proj", "mlp.c_proj"),
    "fc": ("gate_proj", "up_proj", "mlp.c_fc"),
}
FUSED_QKV = "c_attn"  # GPT-2's query, key and value: one transformers Conv1D, a third of its outputs each


def transformers():
    """The ``transformers`` module; a one-line :class:`UserError` naming the extra when missing."""
    try:
        import transformers as tf
    except ImportError:
        raise UserError(f"Hugging Face causal LMs need the transformers package: {EXTRA}") from None
    return tf


# -- the backbone ------------------------------------------------------------------------------


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a Hugging Face checkpoint: the shards its index names, or every
    ``*.safetensors`` file of the folder."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / s for s in shards]
    return sorted(folder.glob("*.safetensors"))


@lru_cache(maxsize=8)
def _tokenizer(folder: str, stamp: float):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers().AutoTokenizer.from_pretrained(folder)


def tokenizer_of(folder: Path):
    """The checkpoint's tokenizer (transformers' ``AutoTokenizer``), loaded once per process."""
    stamp = max((p.stat().st_mtime for p in folder.glob("*token*")), default=0.0)
    return _tokenizer(str(folder), stamp)


def hf_backbone(folder: Path, spec: str, at: str, cfg: dict):
    """The :class:`Backbone` of a Hugging Face causal LM in ``folder`` (``cfg``: its parsed
    ``config.json``); a one-line :class:`UserError` when it is not one, has no safetensors
    weights, or its tokenizer lacks a pad or an end token."""
    from .backbones import CONFIG, Backbone

    tf = transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kind = cfg.get("model_type")
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"{at}: {folder / CONFIG} is not a causal language model (model_type {kind!r}); "
                        "give a decoder such as Llama, Qwen2 or GPT-2, a BERT-family encoder or a clbench checkpoint")
    if not weight_files(folder):
        raise UserError(f"{at}: {folder} holds no safetensors weights (*.safetensors)")
    try:
        tok = tokenizer_of(folder)
    except Exception as exc:  # noqa: BLE001 - no or broken tokenizer files
        raise UserError(f"{at}: cannot load the tokenizer saved in {folder} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    for what, key, value in (("pad", "pad_token", tok.pad_token_id), ("end", "eos_token", tok.eos_token_id)):
        if value is None:
            raise UserError(f"{at}: its tokenizer has no {what} token (set {key} in the folder's "
                            "tokenizer_config.json, e.g. to an existing special token, and give that folder)")
    conf = tf.AutoConfig.from_pretrained(str(folder))
    text = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
    max_len = getattr(text, "max_position_embeddings", None) or getattr(tok, "model_max_length", 0)
    if not max_len or max_len > 1 << 24:
        raise UserError(f"{at}: {folder / CONFIG} gives no max_position_embeddings (the longest sequence it takes)")
    if len(tok) > text.vocab_size:
        raise UserError(f"{at}: its tokenizer has {len(tok)} ids, the model's embedding only {text.vocab_size}")
    arch = {"d_model": text.hidden_size, "n_layers": text.num_hidden_layers, "n_heads": text.num_attention_heads,
            "causal": True, "max_len": int(max_len)}
    return Backbone(spec, "hf-causal", folder, arch, "tokens", text.vocab_size, {"kind": "hf", "path": str(folder)})


# -- the tokenizer -----------------------------------------------------------------------------


class HFTextTokenizer:
    """A Hugging Face tokenizer for generative streams (:class:`clbench.tasks.generative.TextTokenizer`):
    prompts with the model's leading special tokens (its BOS, when it has one), answers without
    any, ``decode`` without specials."""

    def __init__(self, tok, source: str):
        self.tok = tok
        self.source = source  # the model.init it belongs to
        self.vocab_size = len(tok)
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id

    @classmethod
    def load(cls, backbone) -> HFTextTokenizer:
        return cls(tokenizer_of(backbone.folder), backbone.spec)

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.tok(list(texts), add_special_tokens=True)["input_ids"]
        # a tokenizer that also appends its end token (add_eos_token) would end the prompt there
        return [s[:-1] if s and s[-1] == self.eos_id else s for s in ids]

    def encode_answers(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tok(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def describe(self) -> dict:
        return {"kind": "hf", "source": self.source, "vocab_size": self.vocab_size,
                "eos_id": self.eos_id, "pad_id": self.pad_id, "bos_id": self.tok.bos_token_id}


# -- the model ---------------------------------------------------------------------------------


class HFCache:
    """A KV cache of a Hugging Face model for :mod:`clbench.models.decoding`: transformers'
    ``DynamicCache`` (keys appended in the order they were fed) and the position of every key in
    its sequence (``positions`` ``(B, n_keys)``, -1 for padding and forgotten keys), from which
    :meth:`HFCausalLM.extend` builds the attention mask."""

    def __init__(self, batch: int, device):
        self.cache = transformers().DynamicCache()
        self.positions = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.length = torch.zeros(batch, dtype=torch.long, device=device)

    def take(self, index: torch.Tensor) -> HFCache:
        """A new cache of the sequences ``index`` names (repeated or reordered)."""
        new = HFCache(0, self.length.device)
        new.cache = _take(self.cache, index)
        new.positions, new.length = self.positions[index], self.length[index]
        return new

    def truncate(self, lengths: torch.Tensor) -> None:
        """Forget the keys at positions ``>= lengths[b]``."""
        self.positions = torch.where(self.positions < lengths[:, None], self.positions, -1)
        self.length = torch.minimum(self.length, lengths)


def _take(cache, index: torch.Tensor):
    """A copy of transformers' ``DynamicCache`` holding the rows ``index`` of each layer's keys and
    values (transformers 4.56+ keeps them in ``layers``, earlier releases in ``key_cache`` and
    ``value_cache``)."""
    new = copy.copy(cache)
    if hasattr(cache, "layers"):
        new.layers = []
        for layer in cache.layers:
            twin = copy.copy(layer)
            if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4:
                twin.keys, twin.values = layer.keys[index], layer.values[index]
            new.layers.append(twin)
    else:
        new.key_cache = [k[index] if k.dim() == 4 else k for k in cache.key_cache]
        new.value_cache = [v[index] if v.dim() == 4 else v for v in cache.value_cache]
    return new


class HFCausalLM(nn.Module):
    """A transformers causal LM (``self.hf``) with the interface of the generation kind. Its
    parameters are the Hugging Face model's, so strategies and the optimizer see them (named
    ``hf.<transformers' name>``)."""

    def __init__(self, model: nn.Module, pad_id: int):
        super().__init__()
        self.hf = model
        self.pad_id = pad_id
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_len = getattr(text, "max_position_embeddings", None) or 1 << 30
        self.softcap = getattr(text, "final_logit_softcapping", None)  # Gemma 2
        self.logit_scale = getattr(text, "logit_scale", None)  # Cohere
        params = inspect.signature(model.base_model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5.25 renamed it

    @property
    def attn_implementation(self) -> str:
        return self.hf.config._attn_implementation

    def hidden_states(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's ``(B, N, C)`` states (after the final norm) of right-padded ``x``."""
        N = x.shape[1]
        mask = None
        if lengths is not None and not bool((lengths >= N).all()):
            mask = (torch.arange(N, device=x.device)[None, :] < lengths[:, None]).long()
        return self.hf.base_model(input_ids=x, attention_mask=mask, use_cache=False)[0]

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(..., V)`` through the model's output embeddings."""
        logits = self.hf.get_output_embeddings()(h)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def new_cache(self, batch: int, device) -> HFCache:
        """An empty :class:`HFCache` of ``batch`` sequences (:mod:`clbench.models.decoding`)."""
        return HFCache(batch, device)

    def extend(self, cache: HFCache, x: torch.Tensor, n: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's states ``(B, m, C)`` (after the final norm) of ``x`` ``(B, m)`` fed
        after what ``cache`` holds, each sequence at its own next position (``position_ids``);
        the first ``n[b]`` tokens of row ``b`` are real (all when None). transformers' cache
        appends the new keys after the old ones; an attention mask leaves out the keys that are
        padding or were forgotten (:meth:`HFCache.truncate`)."""
        B, m = x.shape
        steps = torch.arange(m, device=x.device)
        positions = cache.length[:, None] + steps  # (B, m)
        new = positions if n is None else torch.where(steps[None, :] < n[:, None], positions, -1)
        keys = torch.cat([cache.positions, new], dim=1)  # the position of every key, -1: none
        if cache.positions.shape[1] == 0 and n is not None and bool((n >= m).all()):
            n = None  # nothing is padded
        mask = None if n is None and cache.positions.shape[1] == 0 else (keys >= 0).long()
        ids = positions.clamp(max=self.max_len - 1)  # padding and finished sequences may run past the end: not read
        h = self.hf.base_model(input_ids=x, attention_mask=mask, position_ids=ids, use_cache=True,
                               **{self._cache_arg: cache.cache})[0]
        cache.positions = keys
        cache.length = cache.length + (m if n is None else n)
        return h

    @torch.no_grad()
    def generate(self, x: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int, eos_id: int) -> torch.Tensor:
        """Greedy continuations ``(B, max_new_tokens)`` of right-padded prompts, from a KV cache
        (:func:`clbench.models.decoding.greedy`); ``eos_id`` after a sequence's end."""
        from .decoding import greedy

        B = x.shape[0]
        cache = self.new_cache(B, x.device)
        h = self.extend(cache, x, lengths)
        last = h[torch.arange(B, device=x.device), lengths - 1]
        limits = (self.max_len - lengths).clamp(max=max_new_tokens)
        return greedy(self, cache, self.lm_logits(last), limits, max_new_tokens, eos_id)

    def n_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def lora_targets(self, targets) -> list[tuple[str, nn.Module, dict[str, tuple[int, int]]]]:
        """The layers LoRA's ``targets`` name, as ``(name, layer, parts)`` (see
        :func:`clbench.strategies.lora.inject`): clbench's generic names through
        :data:`HF_TARGETS` (``q``, ``k``, ``v`` are thirds of GPT-2's fused ``c_attn``; ``qkv``
        is all of it), any other name a module name of this model (its last parts)."""
        from transformers.pytorch_utils import Conv1D

        wanted = []
        for t in targets:
            if t in ("qkv", "proj"):
                wanted += [(s, t) for s in (("q", "k", "v") if t == "qkv" else ("attn.proj", "mlp.proj"))]
            else:
                wanted.append((t, t))
        layers = [(n, m) for n, m in self.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
        found: dict[str, tuple[nn.Module, dict]] = {}
        hits = {t: 0 for t in targets}
        for name, module in layers:
            leaf = name.rsplit(".", 1)[-1]
            for t, given in wanted:
                parts = None
                if t in ("q", "k", "v") and leaf == FUSED_QKV and isinstance(module, Conv1D):
                    c = module.weight.shape[1] // 3
                    i = "qkv".index(t)
                    parts = {"" if given == "qkv" else t: (0, 3 * c) if given == "qkv" else (i * c, (i + 1) * c)}
                elif any(name == s or name.endswith("." + s) for s in HF_TARGETS.get(t, (t,))):
                    parts = {"": (0, module.weight.shape[1] if isinstance(module, Conv1D) else module.out_features)}
                if parts:
                    have = found.setdefault(name, (module, {}))[1]
                    if have and ("" in have or "" in parts) and have != parts:
                        raise UserError(f"target_modules name {name} and a part of it: give one")
                    have.update(parts)
                    hits[given] += 1
        missing = [t for t, n in hits.items() if not n]
        if missing:
            names = sorted({n.rsplit(".", 1)[-1] for n, _ in layers})
            raise UserError(f"target_modules {missing} match no layer of this {self.hf.config.model_type} model "
                            f"(its linear layers: {', '.join(names)})")
        return [(name, module, parts) for name, (module, parts) in found.items()]


def load_causal_lm(backbone, attn_implementation: str = "clbench", dtype: torch.dtype = torch.float32) -> HFCausalLM:
    """The backbone's model (float32 by default), with clbench's attention where this
    transformers can take it (``"sdpa"`` otherwise, with a warning)."""
    from .hf_attention import NAME, register

    tf = transformers()
    if attn_implementation == NAME and not register():
        warnings.warn(f"transformers {tf.__version__} has no AttentionInterface: the model runs with 'sdpa'", stacklevel=2)
        attn_implementation = "sdpa"
    major, minor = (int(v) for v in tf.__version__.split(".")[:2])
    kw = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.AutoModelForCausalLM.from_pretrained(str(backbone.folder), attn_implementation=attn_implementation, **kw)
    return HFCausalLM(model, tokenizer_of(backbone.folder).pad_token_id)
