"""Shared fixtures: a fresh plugin host, and a helper that runs a small suite end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    """A freshly loaded plugin host, installed as the process-wide one for the test."""
    from clbench import host as host_mod

    h = host_mod.Host().load(os.environ.get("CLBENCH_PLUGINS"))
    old = host_mod._host
    host_mod._host = h
    yield h
    host_mod._host = old


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
        suite = parse_suite(data, "test-suite.toml", host)
        out = out or tmp_path / "results"
        r = run_suite(suite, out, progress=False, host=host, **kw)
        return r, load(out)

    return run


# -- tiny Hugging Face causal LMs (nothing downloaded) ------------------------------------------

TINY_LM_TEXT = [
    "rev cabd=dbac", "sort cabd=abcd", "next cabd=dbce", "count a cabad=2", "add 23+45=68", "copy cabd=cabd",
    "The quick brown fox jumps over the lazy dog.", "Continual learning keeps old tasks while learning new ones.",
    "sentence: a fine film\nAnswer: positive", "sentence: dull and long\nAnswer: negative",
]


def build_tiny_causal_lm(folder: Path, arch: str = "llama", *, pad: bool = True, seed: int = 0) -> Path:
    """Save a tiny Hugging Face causal LM (``arch``: ``llama``, ``qwen2`` or ``gpt2``; 2 layers,
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
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, attn_pdrop=0.0, resid_pdrop=0.0,
                            embd_pdrop=0.0, **ids, **small)
    else:
        cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config}[arch]
        cfg = cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=arch == "qwen2", **ids, **small)
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
