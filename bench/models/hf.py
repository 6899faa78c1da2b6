"""Hugging Face causal language models as clbench's model for generative tasks.

``model.init = "hf:<name>"`` (downloaded from the Hub) or a folder holding a causal LM saved by
the Hugging Face libraries (``config.json`` whose ``model_type`` transformers maps to a causal
LM, safetensors weights, possibly sharded, and the tokenizer's files) resolves to a
:class:`~clbench.models.backbones.Backbone` of family ``"hf-causal"`` (:func:`hf_architecture`
reads its architecture).
:func:`load_causal_lm` loads it with transformers' own modeling code (no architecture is
re-implemented here) and wraps it in :class:`HFCausalLM`, which offers what the generation kind
asks of a model: ``hidden_states``, ``lm_logits``, ``new_cache`` and ``extend``
(:mod:`clbench.models.decoding`), ``generate``, ``n_parameters``. Attention runs
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
from .decoding import decode
from .hf_attention import NAME, register
from .sampling import Sampling

EXTRA = "pip install 'clbench[llm]'"
#: clbench's names of a Transformer's projections (LoRA's ``target_modules``) and the layers of
#: Hugging Face models they stand for, by the end of their qualified names; ``q``, ``k``, ``v``
#: (and ``qkv``) also name the fused query/key/value layers of :data:`FUSED_QKV`. Any other target
#: is a module name of the model itself. The table of docs/llm.md says which family has which.
HF_TARGETS = {
    "q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",),
    "attn.proj": ("o_proj", "attn.c_proj", "self_attn.out_proj", "attn.out_proj", "attention.out_proj",
                  "attention.dense", "self_attention.dense", "self_attn.dense"),
    "mlp.proj": ("down_proj", "mlp.c_proj", "fc2", "fc_out", "dense_4h_to_h"),
    "fc": ("gate_proj", "up_proj", "gate_up_proj", "mlp.c_fc", "fc1", "fc_in", "dense_h_to_4h"),
}
CONFIG = "config.json"  # a Hugging Face checkpoint's configuration
#: The leaf names of fused query/key/value layers (GPT-2's is a transformers ``Conv1D``); how their
#: outputs are laid out is :func:`qkv_layout`'s.
FUSED_QKV = ("c_attn", "qkv_proj", "query_key_value", "Wqkv")


def qkv_layout(config, out: int) -> dict[str, tuple[tuple[int, int], ...]] | None:
    """The output rows of ``q``, ``k`` and ``v`` in the fused query/key/value layer of a model
    with this (text) ``config``, whose layer has ``out`` outputs; None where the family's layout
    is not known here (or the sizes read from the config do not add up to ``out``).

    Each layout is ``groups`` repeats of the three blocks in some order, as the family's modeling
    code splits the layer's output (transformers' ``modeling_<family>.py``):

    * one group, q | k | v: GPT-2 and MPT (thirds), Phi-3 (``n_heads · head_dim`` query rows, then
      ``n_kv_heads · head_dim`` each for keys and values), GPT-BigCode and Falcon with
      ``multi_query`` (one key and one value head);
    * one group per head, q | k | v of ``head_dim`` rows each: GPT-NeoX, Bloom, Persimmon,
      GPT-BigCode without ``multi_query``, Falcon without either flag;
    * one group per key/value head, its ``n_heads / n_kv_heads`` query heads then its key and its
      value head: Falcon's ``new_decoder_architecture``;
    * four groups (its ``mp_num``), each q | v | k: CodeGen.
    """
    kind = config.model_type
    heads, width = config.num_attention_heads, config.hidden_size
    hd = getattr(config, "head_dim", None) or width // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    order = "qkv"
    if kind in ("gpt2", "mpt"):
        groups, sizes = 1, (width, width, width)
    elif kind == "phi3":
        groups, sizes = 1, (heads * hd, kv * hd, kv * hd)
    elif kind in ("gpt_neox", "bloom", "persimmon"):
        groups, sizes = heads, (hd, hd, hd)
    elif kind == "gpt_bigcode":
        groups, sizes = (1, (width, hd, hd)) if config.multi_query else (heads, (hd, hd, hd))
    elif kind == "falcon":
        if config.new_decoder_architecture:
            kv = config.num_kv_heads
            groups, sizes = kv, (heads // kv * hd, hd, hd)
        elif config.multi_query:
            groups, sizes = 1, (heads * hd, hd, hd)
        else:
            groups, sizes = heads, (hd, hd, hd)
    elif kind == "codegen":
        groups, sizes, order = 4, (width // 4,) * 3, "qvk"
    else:
        return None
    if groups * sum(sizes) != out:
        return None
    period = sum(sizes)
    offsets = (0, sizes[0], sizes[0] + sizes[1])
    rows = {name: tuple((g * period + at, g * period + at + size) for g in range(groups))
            for name, size, at in zip(order, sizes, offsets)}
    return {name: rows[name] for name in "qkv"}


def transformers():
    """The ``transformers`` module; a one-line :class:`UserError` naming the extra when missing."""
    try:
        import transformers as tf  # optional: clbench[llm]
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


def hf_architecture(folder: Path, at: str, cfg: dict) -> tuple[dict, int]:
    """The architecture fields (of :class:`~clbench.models.transformer.ModelConfig`) and the
    vocabulary size of a Hugging Face causal LM in ``folder`` (``cfg``: its parsed
    ``config.json``); a one-line :class:`UserError` when it is not one, has no safetensors
    weights, or its tokenizer lacks a pad or an end token."""
    tf = transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # optional: clbench[llm]

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
    return arch, text.vocab_size


# -- the tokenizer -----------------------------------------------------------------------------


class HFTextTokenizer:
    """A Hugging Face tokenizer for generative streams (:class:`clbench.tasks.generative.TextTokenizer`).

    ``prompt_format = "plain"``: prompts with the model's leading special tokens (its BOS, when it
    has one), answers without any, then the tokenizer's end token.

    ``prompt_format = "chat"``: the prompt is the user's turn and the answer the assistant's, as
    the tokenizer's chat template renders them. A prompt's tokens are those of the conversation
    ``[user: prompt]`` rendered with the generation prompt (the assistant's header); its answer's
    are those that follow them in the rendered ``[user: prompt, assistant: answer]``, up to and
    including the token that closes the assistant's turn (``eos_id``: training learns to end
    there, generation stops there, rank classification scores it after each label). Both
    renderings are tokenized whole, without the tokenizer's own special tokens (the template
    writes them), so the answer's tokens are exactly those of the rendered conversation. The
    general text (:meth:`encode_text`) stays plain text.

    ``decode`` drops every special token."""

    #: the assistant's reply with which a template is probed (dropped? how does the turn close?)
    PROBE = "clbench-probe-answer"

    def __init__(self, tok, source: str, prompt_format: str = "plain"):
        self.tok = tok
        self.source = source  # the model.init it belongs to
        self.vocab_size = len(tok)
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id
        self.prompt_format = prompt_format
        if prompt_format == "chat":
            if not has_chat_template(tok):
                raise UserError(f"prompt_format = 'chat': the tokenizer of {source!r} has no chat template "
                                "(use prompt_format = 'plain', or give a tokenizer with one)")
            self.eos_id = self._turn_end()

    @classmethod
    def load(cls, backbone, prompt_format: str = "plain") -> HFTextTokenizer:
        return cls(tokenizer_of(backbone.folder), backbone.spec, prompt_format)

    # -- plain text

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tok(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def encode_text(self, texts: Sequence[str]) -> list[list[int]]:
        """Plain text with the model's leading special tokens (its BOS), never an end token."""
        ids = self.tok(list(texts), add_special_tokens=True)["input_ids"] if texts else []
        # a tokenizer that also appends its end token (add_eos_token) would end the prompt there
        return [s[:-1] if s and s[-1] == self.tok.eos_token_id else s for s in ids]

    # -- chat

    def _render(self, where: str, prompt: str, answer: str | None = None) -> str:
        messages = [{"role": "user", "content": prompt}]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        try:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)
        except Exception as exc:  # noqa: BLE001 - a template's own error (jinja's, or raise_exception)
            msg = (str(exc).splitlines() or [""])[0][:160]
            raise UserError(f"{where}: the chat template of {self.source!r} cannot render a user's and an "
                            f"assistant's message ({type(exc).__name__}: {msg})") from None

    def _turn_end(self) -> int:
        """The token that closes the assistant's turn in the template (the first special or added
        token after the probe answer): the one every answer ends with. A template that renders
        no assistant's content, or closes its turn with no such token, is a one-line error."""
        text = self._render("prompt_format = 'chat'", "Hello.", self.PROBE)
        if self.PROBE not in text:
            raise UserError(f"prompt_format = 'chat': the chat template of {self.source!r} drops the answer (an "
                            "assistant's message renders without its content); fix the template or use prompt_format = 'plain'")
        specials = set(self.tok.all_special_ids) | set(self.tok.added_tokens_decoder)  # special or added
        tail = self._ids([text[text.index(self.PROBE) + len(self.PROBE):]])[0]
        end = next((i for i in tail if i in specials), None)
        if end is None:
            raise UserError(f"prompt_format = 'chat': the chat template of {self.source!r} closes the assistant's "
                            "turn with no special token (nothing for an answer to end with); use prompt_format = 'plain'")
        return end

    def _chat_pairs(self, pairs: Sequence[tuple[str, str]], wheres: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Each pair's prompt tokens (the rendered ``[user: prompt]`` with the generation prompt)
        and answer tokens (those that follow them in the rendered ``[user: prompt, assistant:
        answer]``, through the turn's closing token ``eos_id``); ``wheres`` say where each is."""
        heads = [self._render(w, p) for w, (p, _) in zip(wheres, pairs)]
        fulls = [self._render(w, p, a) for w, (p, a) in zip(wheres, pairs)]
        end = self.tok.convert_ids_to_tokens(self.eos_id)
        out = []
        for w, (_, answer), head, full, h, f in zip(wheres, pairs, heads, fulls, self._ids(heads), self._ids(fulls)):
            if not full.startswith(head):
                raise UserError(f"{w}: the chat template of {self.source!r} does not render a conversation as its "
                                "generation prompt followed by the assistant's turn; use prompt_format = 'plain'")
            turn = full[len(head):]
            content = turn[: turn.index(end)] if end in turn else turn  # the assistant's turn, before it closes
            if answer.strip() not in content:
                raise UserError(f"{w}: the chat template of {self.source!r} drops the answer (an assistant's "
                                "message renders without its content); fix the template or use prompt_format = 'plain'")
            # the answer's tokens are those of the whole conversation after the prompt's; where the
            # boundary merges tokens (rare), those that, generated after the prompt, render the same text
            rest = f[len(h):] if f[: len(h)] == h else self._ids([turn])[0]
            if self.eos_id not in rest:
                raise UserError(f"{w}: the chat template of {self.source!r} does not close the assistant's turn "
                                f"with {end!r}; use prompt_format = 'plain'")
            out.append((h, rest[: rest.index(self.eos_id) + 1]))
        return out

    # -- what a generative stream asks

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """What the model reads before it answers: the plain prompt, or the rendered user's turn
        and the assistant's header."""
        if self.prompt_format == "chat":
            return self._ids([self._render("prompt_format = 'chat'", t) for t in texts])
        return self.encode_text(texts)

    def encode_answers(self, texts: Sequence[str]) -> list[list[int]]:
        """Answer texts' tokens without the end token: plain, or as the template renders them as
        the assistant's reply (to a fixed user message: a template's assistant turn does not
        depend on the user's)."""
        if self.prompt_format == "chat":
            return [a[:-1] for _, a in self._chat_pairs([("Hello.", t) for t in texts], ["prompt_format = 'chat'"] * len(texts))]
        return self._ids(texts)

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], where: str) -> list[tuple[list[int], list[int]]]:
        """Each ``(prompt, answer)``'s prompt tokens and answer tokens, the end token included."""
        if self.prompt_format == "chat":
            return self._chat_pairs(pairs, [f"{where} example {i}" for i in range(len(pairs))])
        prompts = self.encode_prompts([p for p, _ in pairs])
        return [(p, a + [self.eos_id]) for p, a in zip(prompts, self._ids([a for _, a in pairs]))]

    def shorten(self, prompt: str, answer: str, room: int, where: str) -> tuple[list[int], list[int]]:
        """The pair with its prompt shortened from the left to at most ``room`` tokens: plain,
        its first tokens dropped; chat, the user's text loses its first tokens and the
        conversation is rendered again (the template's own tokens are kept)."""
        if self.prompt_format != "chat":
            (p, a), = self.encode_pairs([(prompt, answer)], where)
            return p[len(p) - room:], a
        (p, a), = self._chat_pairs([(prompt, answer)], [where])
        words = self._ids([prompt])[0]
        drop = len(p) - room
        while len(p) > room:
            if drop >= len(words):
                raise UserError(f"{where}: its answer and the chat template's own tokens take {len(a) + len(p) - len(words)} "
                                f"tokens; max_len leaves too little room for its prompt (raise max_len)")
            (p, a), = self._chat_pairs([(self.tok.decode(words[drop:]), answer)], [where])
            drop += max(1, len(p) - room)
        return p, a

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def decode_prompt(self, ids: Sequence[int]) -> str:
        """A prompt's text from its tokens (:meth:`encode_prompts`'): plain, :meth:`decode`; chat,
        the user's text without the template around it (the system turn, the turn markers and the
        assistant's header), where the tokens render the template's text around it, else as
        :meth:`decode` reads them."""
        if self.prompt_format != "chat":
            return self.decode(ids)
        probe = self._render("prompt_format = 'chat'", self.PROBE)
        before, after = probe[: probe.index(self.PROBE)], probe[probe.index(self.PROBE) + len(self.PROBE):]
        text = self.tok.decode([int(i) for i in ids], skip_special_tokens=False)
        if text.startswith(before) and text.endswith(after) and len(text) >= len(before) + len(after):
            return text[len(before): len(text) - len(after)]
        return self.decode(ids)

    def describe(self) -> dict:
        return {"kind": "hf", "source": self.source, "vocab_size": self.vocab_size, "prompt_format": self.prompt_format,
                "eos_id": self.eos_id, "pad_id": self.pad_id, "bos_id": self.tok.bos_token_id}


def has_chat_template(tok) -> bool:
    """Whether a transformers tokenizer has a chat template."""
    return bool(getattr(tok, "chat_template", None))


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
    def generate(self, x: torch.Tensor, lengths: torch.Tensor, max_new_tokens: int, eos_id: int,
                 sampling: Sampling | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Greedy continuations ``(B, max_new_tokens)`` of right-padded prompts, from a KV cache
        (:func:`clbench.models.decoding.decode`); ``eos_id`` after a sequence's end. With
        ``sampling``, each token is drawn by :meth:`Sampling.pick` with ``generator``, as clbench's
        decoder draws it."""
        B = x.shape[0]
        cache = self.new_cache(B, x.device)
        h = self.extend(cache, x, lengths)
        last = h[torch.arange(B, device=x.device), lengths - 1]
        limits = (self.max_len - lengths).clamp(max=max_new_tokens)
        return decode(self, cache, self.lm_logits(last), limits, max_new_tokens, eos_id, sampling, generator)

    def n_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def lora_targets(self, targets) -> list[tuple[str, nn.Module, dict]]:
        """The layers LoRA's ``targets`` name, as ``(name, layer, parts)`` (see
        :func:`clbench.strategies.lora.inject`): clbench's names by their meaning (:data:`HF_TARGETS`;
        on a fused query/key/value layer, ``qkv`` is all of it and ``q``, ``k``, ``v`` its rows by
        :func:`qkv_layout`), any other name a module name of this model (its last parts). A
        target that matches no layer is a one-line :class:`UserError` listing the linear layers."""
        from transformers.pytorch_utils import Conv1D  # optional: clbench[llm]

        config = self.hf.config.get_text_config() if hasattr(self.hf.config, "get_text_config") else self.hf.config
        meanings = {"qkv": ("q", "k", "v"), "proj": ("attn.proj", "mlp.proj")}
        layers = [(n, m) for n, m in self.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
        found: dict[str, tuple[nn.Module, dict]] = {}
        hits = {t: 0 for t in targets}
        for name, module in layers:
            fused = name.rsplit(".", 1)[-1] in FUSED_QKV
            for given in targets:
                whole = {"": (0, _out_features(module))}
                parts = None
                if fused and given in ("qkv", "q", "k", "v"):
                    parts = whole if given == "qkv" else {given: self._fused_rows(name, module, config)[given]}
                elif any(name == s or name.endswith("." + s)
                         for t in meanings.get(given, (given,)) for s in HF_TARGETS.get(t, (t,))):
                    parts = whole
                if parts:
                    have = found.setdefault(name, (module, {}))[1]
                    if have and ("" in have or "" in parts) and have != parts:
                        raise UserError(f"target_modules name {name.removeprefix('hf.')} and a part of it: give one")
                    have.update(parts)
                    hits[given] += 1
        missing = [t for t, n in hits.items() if not n]
        if missing:
            names = sorted({n.rsplit(".", 1)[-1] for n, _ in layers})
            raise UserError(f"target_modules {missing} match no layer of this {self.hf.config.model_type} model "
                            f"(its linear layers: {', '.join(names)})")
        return [(name, module, parts) for name, (module, parts) in found.items()]

    def _fused_rows(self, name: str, module: nn.Module, config) -> dict:
        rows = qkv_layout(config, _out_features(module))
        if rows is None:
            raise UserError(f"the layout of the fused query/key/value layer {name.removeprefix('hf.')} of this "
                            f"{config.model_type} model is not known: adapt it whole ('qkv') or by its module name")
        return {k: r[0] if len(r) == 1 else r for k, r in rows.items()}


def _out_features(layer: nn.Module) -> int:
    return getattr(layer, "out_features", None) or layer.weight.shape[1]  # Conv1D: weight (in, out)


@lru_cache(maxsize=4)
def causal_lm_skeleton(folder: str) -> HFCausalLM:
    """The Hugging Face causal LM of ``folder`` without its weights (on the meta device), built
    once per process: its layers' names and shapes, in seconds whatever its size (what LoRA's
    preflight and ``clbench check`` read)."""
    tf = transformers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = tf.AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            model = tf.AutoModelForCausalLM.from_config(config)
    return HFCausalLM(model, pad_id=0)


def load_causal_lm(backbone, attn_implementation: str = "clbench", dtype: torch.dtype = torch.float32) -> HFCausalLM:
    """The backbone's model (float32 by default), with clbench's attention where this
    transformers can take it (``"sdpa"`` otherwise, with a warning)."""
    tf = transformers()
    if attn_implementation == NAME and not register():
        warnings.warn(f"transformers {tf.__version__} has no AttentionInterface: the model runs with 'sdpa'", stacklevel=2)
        attn_implementation = "sdpa"
    major, minor = (int(v) for v in tf.__version__.split(".")[:2])
    kw = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}
    bars = tf.utils.logging.is_progress_bar_enabled()
    tf.utils.logging.disable_progress_bar()  # a bar per cell ("Loading weights") would interleave with clbench's own
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = tf.AutoModelForCausalLM.from_pretrained(str(backbone.folder), attn_implementation=attn_implementation, **kw)
    finally:
        if bars:
            tf.utils.logging.enable_progress_bar()
    return HFCausalLM(model, tokenizer_of(backbone.folder).pad_token_id)
