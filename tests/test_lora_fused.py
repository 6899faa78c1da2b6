"""LoRA targets by their meaning on Hugging Face causal LMs of every common family
(clbench.models.hf ``lora_targets``, ``qkv_layout``): ``q``, ``k``, ``v``, ``qkv``, ``proj``,
``fc`` on separate and on fused projections, checked on tiny random models built from transformers
configs (nothing is downloaded) against what the model's own attention receives, by hand counts
of the adapted parameters, and by whole cells of every LoRA mode."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

import clbench
from clbench.cli import main
from clbench.errors import UserError
from clbench.loop import run_cell
from clbench.models.hf import HFCausalLM, qkv_layout
from clbench.strategies.lora import LoRALinear, inject, lora_layers
from clbench.suite import parse_suite
from conftest import make_suite, tiny_lm_config

tf = pytest.importorskip("transformers")

FUSED = ("gpt2", "phi3", "gpt_neox", "falcon", "falcon-mq", "falcon-new", "bloom", "gpt_bigcode",
         "gpt_bigcode-mq", "codegen", "persimmon", "mpt")
SPY = "clbench-test-spy"
TOKENS = {"vocab_size": 100, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
SEEN: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []


def _spy(module, q, k, v, mask, **kw):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    SEEN.append((q, k, v))
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, k, v, mask, **kw)


def tiny(arch: str, seed: int = 0) -> HFCausalLM:
    """A tiny random model of ``arch`` whose attention (where the family calls transformers'
    attention functions) records the query, key and value states it receives."""
    tf.AttentionInterface.register(SPY, _spy)
    impl = "eager" if arch in ("bloom", "mpt", "gpt_neo") else SPY  # families with their own attention code
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.AutoModelForCausalLM.from_config(tiny_lm_config(arch, **TOKENS), attn_implementation=impl)
    return HFCausalLM(model.eval(), pad_id=0)


def layer0_states(model: HFCausalLM, arch: str, ids: torch.Tensor, monkeypatch) -> list[torch.Tensor | None]:
    """The first layer's query, key and value states ``(B, heads, N, head_dim)`` as its attention
    receives them: through transformers' attention functions, Bloom's ``_reshape``, or (MPT, whose
    queries are seen nowhere) the keys and values of the cache, with None for the queries."""
    SEEN.clear()
    if arch == "bloom":
        from transformers.models.bloom.modeling_bloom import BloomAttention

        real = BloomAttention._reshape
        monkeypatch.setattr(BloomAttention, "_reshape", lambda self, fused: SEEN.append(real(self, fused)) or SEEN[-1])
    with torch.no_grad():
        out = model.hf(input_ids=ids, use_cache=arch == "mpt")
    monkeypatch.undo()
    if arch == "mpt":
        cache = out.past_key_values
        layer = cache.layers[0] if hasattr(cache, "layers") else None
        k, v = (layer.keys, layer.values) if layer is not None else (cache.key_cache[0], cache.value_cache[0])
        return [None, k, v]
    return [t.clone() for t in SEEN[0]]


@pytest.mark.parametrize("arch", FUSED)
def test_q_k_v_of_a_fused_layer_change_exactly_the_states_the_model_reads_as_them(arch, monkeypatch):
    """Adapters on ``q``, ``k`` and ``v`` of the fused layer: each of the first layer's query, key
    and value states changes by exactly its own adapter's ``s · B A x``, read as the model reads an
    unfused projection's outputs (heads in order, then ``head_dim``), at the first position (where
    rotary embeddings are the identity); at every position every head's state changes."""
    model = tiny(arch)
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    before = layer0_states(model, arch, ids, monkeypatch)
    layers = inject(model, ["q", "k", "v"], rank=4, alpha=8.0)
    assert len(layers) == 2 and all(set(layer.parts) == {"q", "k", "v"} for layer in layers)
    for layer in layers:
        layer.add("a")
        layer.active = ["a"]
        for p in layer.lora_B.values():
            torch.nn.init.normal_(p, std=0.5)
    inputs = []
    hook = layers[0].base.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    after = layer0_states(model, arch, ids, monkeypatch)
    hook.remove()
    x0 = inputs[0][:, 0]  # the first layer's input at the first position: (B, width)
    seen = 0
    for part, old, new in zip("qkv", before, after):
        if old is None:
            continue
        A, B = layers[0].lora_A[f"a_{part}"], layers[0].lora_B[f"a_{part}"]
        want = 2.0 * (x0 @ A.T @ B.T)  # (B, rows of the part): s = alpha / rank = 2
        got = (new - old)[:, :, 0, :].flatten(1)  # (B, heads · head_dim)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"{arch} {part}: {m}")
        assert ((new - old).abs().amax(dim=-1) > 1e-4).all(), f"{arch} {part}: a head whose state did not change"
        seen += 1
    assert seen == (2 if arch == "mpt" else 3)
    if arch == "mpt":  # its queries are what is left: an adapter on q alone leaves keys and values alone
        model = tiny(arch)
        for layer in inject(model, ["q"], rank=4, alpha=8.0):
            layer.add("a")
            layer.active = ["a"]
            torch.nn.init.normal_(layer.lora_B["a_q"], std=0.5)
        q_only = layer0_states(model, arch, ids, monkeypatch)
        assert torch.equal(q_only[1], before[1]) and torch.equal(q_only[2], before[2])


# Hand counts: the (in + out) of each adapted layer of a block, for each target, with width 64,
# 4 heads of 16 (2 key/value heads where the family has grouped-query attention, 1 for
# multi-query), MLP width I: 128 where tiny_lm_config sets intermediate_size, else the family's
# default 4 · 64 = 256. A fused qkv layer adapted as a whole is one layer; q, k, v on it are its
# parts, each its own A (64 inputs) and B (its rows).
Q, KV, KV1 = 64 + 64, 64 + 32, 64 + 16  # q; k or v with 2 key/value heads; with one
COUNTS = {
    #               q    k    v    qkv                  attn.proj mlp.proj          fc
    "llama":       (Q, KV, KV, Q + 2 * KV, Q, 128 + 64, 2 * (64 + 128)),
    "mistral":     (Q, KV, KV, Q + 2 * KV, Q, 128 + 64, 2 * (64 + 128)),
    "gemma":       (Q, KV, KV, Q + 2 * KV, Q, 128 + 64, 2 * (64 + 128)),
    "starcoder2":  (Q, KV, KV, Q + 2 * KV, Q, 128 + 64, 64 + 128),
    "opt":         (Q, Q, Q, 3 * Q, Q, 128 + 64, 64 + 128),
    "gptj":        (Q, Q, Q, 3 * Q, Q, 256 + 64, 64 + 256),
    "gpt_neo":     (Q, Q, Q, 3 * Q, Q, 256 + 64, 64 + 256),
    "phi":         (Q, Q, Q, 3 * Q, Q, 128 + 64, 64 + 128),
    "gpt2":        (Q, Q, Q, 64 + 192, Q, 256 + 64, 64 + 256),
    "phi3":        (Q, KV, KV, 64 + 128, Q, 128 + 64, 64 + 256),  # qkv_proj 64+32+32 rows; gate_up_proj 2 · 128
    "gpt_neox":    (Q, Q, Q, 64 + 192, Q, 128 + 64, 64 + 128),
    "falcon":      (Q, Q, Q, 64 + 192, Q, 256 + 64, 64 + 256),
    "falcon-mq":   (Q, KV1, KV1, 64 + 96, Q, 256 + 64, 64 + 256),
    "falcon-new":  (Q, KV, KV, 64 + 128, Q, 256 + 64, 64 + 256),
    "bloom":       (Q, Q, Q, 64 + 192, Q, 256 + 64, 64 + 256),
    "gpt_bigcode": (Q, Q, Q, 64 + 192, Q, 256 + 64, 64 + 256),
    "gpt_bigcode-mq": (Q, KV1, KV1, 64 + 96, Q, 256 + 64, 64 + 256),
    "codegen":     (Q, Q, Q, 64 + 192, Q, 256 + 64, 64 + 256),
    "persimmon":   (Q, Q, Q, 64 + 192, Q, 128 + 64, 64 + 128),
    "mpt":         (Q, Q, Q, 64 + 192, Q, 256 + 64, 64 + 256),
}
# the layers each name adapts, by their last name (Hugging Face's names of each family)
LEAVES = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "gate_proj up_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "gate_proj up_proj"),
    "gemma": ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "gate_proj up_proj"),
    "starcoder2": ("q_proj", "k_proj", "v_proj", "o_proj", "c_proj", "c_fc"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc2", "fc1"),
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj", "fc_out", "fc_in"),
    "gpt_neo": ("q_proj", "k_proj", "v_proj", "out_proj", "c_proj", "c_fc"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc2", "fc1"),
    "gpt2": ("c_attn",) * 3 + ("c_proj", "c_proj", "c_fc"),
    "phi3": ("qkv_proj",) * 3 + ("o_proj", "down_proj", "gate_up_proj"),
    "gpt_neox": ("query_key_value",) * 3 + ("dense", "dense_4h_to_h", "dense_h_to_4h"),
    "falcon": ("query_key_value",) * 3 + ("dense", "dense_4h_to_h", "dense_h_to_4h"),
    "falcon-mq": ("query_key_value",) * 3 + ("dense", "dense_4h_to_h", "dense_h_to_4h"),
    "falcon-new": ("query_key_value",) * 3 + ("dense", "dense_4h_to_h", "dense_h_to_4h"),
    "bloom": ("query_key_value",) * 3 + ("dense", "dense_4h_to_h", "dense_h_to_4h"),
    "gpt_bigcode": ("c_attn",) * 3 + ("c_proj", "c_proj", "c_fc"),
    "gpt_bigcode-mq": ("c_attn",) * 3 + ("c_proj", "c_proj", "c_fc"),
    "codegen": ("qkv_proj",) * 3 + ("out_proj", "fc_out", "fc_in"),
    "persimmon": ("query_key_value",) * 3 + ("dense", "dense_4h_to_h", "dense_h_to_4h"),
    "mpt": ("Wqkv",) * 3 + ("out_proj", "down_proj", "up_proj"),
}
def adapter_size(found, rank: int) -> int:
    """The parameters of one adapter of ``rank`` on the layers and parts ``lora_targets`` found."""
    total = 0
    for _, module, parts in found:
        layer = LoRALinear(module, parts, rank, alpha=1.0)
        layer.add("a")
        total += sum(p.numel() for p in layer.parameters_of("a"))
    return total


@pytest.mark.parametrize("arch", list(COUNTS))
def test_each_name_adapts_the_layers_it_means_with_the_hand_counted_parameters(arch):
    model = tiny(arch)
    rank = 2
    q, k, v, qkv, attn, mlp, fc = COUNTS[arch]
    leaves = {t: set(names.split()) for t, names in zip(("q", "k", "v", "attn.proj", "mlp.proj", "fc"), LEAVES[arch])}
    leaves["qkv"] = leaves["q"] | leaves["k"] | leaves["v"]
    leaves["proj"] = leaves["attn.proj"] | leaves["mlp.proj"]
    for targets, per_block in [(["q"], q), (["k"], k), (["v"], v), (["qkv"], qkv), (["attn.proj"], attn),
                               (["mlp.proj"], mlp), (["fc"], fc), (["proj"], attn + mlp), (["q", "v"], q + v)]:
        found = model.lora_targets(targets)
        assert {n.rsplit(".", 1)[-1] for n, _, _ in found} == set().union(*(leaves[t] for t in targets)), (arch, targets)
        assert adapter_size(found, rank) == 2 * rank * per_block, (arch, targets)


def test_adapter_parameters_are_counted_per_part(host):
    """The parameters one adapter adds equal rank · (in + rows) summed over its parts, rows being
    each part's (possibly scattered) output rows: GPT-NeoX's q and v, interleaved per head."""
    model = tiny("gpt_neox")
    layers = inject(model, ["q", "v"], rank=3, alpha=6.0)
    for layer in layers:
        layer.add("a")
        assert layer.parts["q"] == ((0, 16), (48, 64), (96, 112), (144, 160))
        assert [p.shape for p in layer.parameters_of("a")] == [(3, 64), (3, 64), (64, 3), (64, 3)]
    assert sum(p.numel() for layer in layers for p in layer.parameters_of("a")) == 2 * 2 * 3 * (64 + 64)


def test_a_fused_layer_and_a_part_of_it_are_refused_and_an_unknown_layout_is_one_line():
    model = tiny("phi3")
    with pytest.raises(UserError, match="name model.layers.0.self_attn.qkv_proj and a part of it"):
        model.lora_targets(["qkv_proj", "q"])
    model.hf.config.model_type = "somenewlm"  # a family whose fused layout clbench does not know
    assert len(model.lora_targets(["qkv"])) == 2  # whole, it needs no layout
    with pytest.raises(UserError, match="layout of the fused query/key/value layer .*qkv_proj of this somenewlm model is not known") as exc:
        model.lora_targets(["q", "v"])
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match=r"target_modules \['c_attn'\] match no layer of this somenewlm model "
                                        r"\(its linear layers: down_proj, gate_up_proj, lm_head, o_proj, qkv_proj\)"):
        model.lora_targets(["c_attn"])


def test_qkv_layout_reads_the_config_not_the_shape():
    """A config whose sizes do not add up to the layer's outputs gives no layout (refused), rather
    than thirds guessed from the shape."""
    cfg = tiny_lm_config("phi3", **TOKENS)
    assert qkv_layout(cfg, 128) == {"q": ((0, 64),), "k": ((64, 96),), "v": ((96, 128),)}
    assert qkv_layout(cfg, 192) is None
    neox = tiny_lm_config("gpt_neox", **TOKENS)
    assert qkv_layout(neox, 192)["k"] == ((16, 32), (64, 80), (112, 128), (160, 176))


# -- whole cells -----------------------------------------------------------------------------------

RUN = ("phi3", "gpt_neox", "falcon-new", "opt")  # the layout tests above cover the other layouts


class Snapshot:
    """An observer: the model's parameters before the first task, and the model."""

    __test__ = False

    def __init__(self):
        self.before, self.model = None, None

    @clbench.hookimpl
    def before_task(self, cell, task):
        if self.before is None:
            self.model = cell.model
            self.before = [(n, p, p.detach().clone()) for n, p in cell.model.named_parameters()]


@pytest.mark.parametrize("arch", RUN)
def test_every_lora_mode_runs_on_the_family(arch, tiny_causal_lm, host):
    """One tiny llm-quick-style cell (the algorithmic stream, two tasks) per LoRA mode, O-LoRA on
    its default q and v (parts of the fused layer where the family fuses them): every cell
    finishes, its adapters move and every base weight stays bit for bit what it was, and each
    adapter has the hand-counted size (O-LoRA's: the q and v rows alone)."""
    suite = make_suite(["lora", "seq-lora", "inc-lora", "o-lora"], stream="algorithmic",
                       stream_params={"tasks": ["reverse", "copy"], "n_train": 16, "n_test": 4, "length": 3, "max_len": 24},
                       training={"epochs": 1, "batch_size": 16, "lr": 1e-2})
    suite["model"] = {"init": str(tiny_causal_lm(arch))}
    q, k, v, qkv, attn, mlp, fc = COUNTS[arch]
    for cell in parse_suite(suite, "s.toml").cells:
        watch = Snapshot()
        res = run_cell(cell, observers=[watch])
        assert res.status == "ok", (cell.strategy.label, res.row.get("error"))
        for name, p, before in watch.before:  # the LM head and the embeddings too
            assert torch.equal(p.detach(), before), (cell.strategy.label, name)
        base = {id(p) for _, p, _ in watch.before}
        assert all(".lora_" in n for n, p in watch.model.named_parameters() if id(p) not in base)
        layers = lora_layers(watch.model)
        assert all(any(b.abs().sum() > 0 for b in layer.lora_B.values()) for layer in layers)
        if cell.strategy.label == "o-lora":
            assert {frozenset(layer.parts) for layer in layers} == ({frozenset("qv")} if LEAVES[arch][0] == LEAVES[arch][2]
                                                                     else {frozenset([""])})
        per_adapter = 8 * 2 * ((q + v) if cell.strategy.label == "o-lora" else (qkv + attn + mlp + fc))
        assert res.row["trainable_params"] == per_adapter, cell.strategy.label


# -- clbench check ---------------------------------------------------------------------------------


def suite_toml(folder, strategies: str) -> str:
    return f"""name = "s"
seeds = [0, 1]
[model]
init = {json.dumps(str(folder))}
[[streams]]
name = "algorithmic"
params = {{ tasks = ["reverse", "copy"], n_train = 16, n_test = 4, length = 3, max_len = 24 }}
{strategies}"""


def test_check_names_the_layers_and_parts_each_lora_strategy_adapts(tiny_causal_lm, tmp_path, capsys, monkeypatch):
    folder = tiny_causal_lm("phi3")
    path = tmp_path / "s.toml"
    path.write_text(suite_toml(folder, '[[strategies]]\nname = "o-lora"\n[[strategies]]\nname = "seq-lora"\n'
                                       '[[strategies]]\nname = "naive"\n'))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    # o-lora: q (8 · (64 + 64)) and v (8 · (64 + 32)) rows of each block's fused qkv_proj
    assert f"strategy 'o-lora' on {folder}: 3,584 parameters per adapter (rank 8) in 2 layers:\n" \
           "  model.layers.{0-1}.self_attn.qkv_proj [q, v]: 2 × 1,792\n" in out
    # seq-lora's qkv, proj, fc: whole layers, 8 · (in + out) each
    assert f"strategy 'seq-lora' on {folder}: 13,312 parameters per adapter (rank 8) in 8 layers:\n" in out
    for line in ("self_attn.qkv_proj: 2 × 1,536", "self_attn.o_proj: 2 × 1,024", "mlp.gate_up_proj: 2 × 2,560",
                 "mlp.down_proj: 2 × 1,536"):
        assert f"\n  model.layers.{{0-1}}.{line}\n" in out
    assert out.count("strategy '") == 2  # once per strategy, not per seed; naive says nothing


def test_a_target_that_matches_no_layer_is_refused_before_anything_runs(tiny_causal_lm, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(suite_toml(tiny_causal_lm("gpt_neox"), '[[strategies]]\nname = "o-lora"\n'
                                                           'params = { target_modules = ["q", "q_proj"] }\n'))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the fixture's progress bars, if any
    assert re.search(r"strategy 'o-lora': target_modules \['q_proj'\] match no layer of this gpt_neox model "
                     r"\(its linear layers: dense, dense_4h_to_h, dense_h_to_4h, \w+, query_key_value\)$", err)
    assert main(["run", str(path), "--out", str(tmp_path / "r")]) == 2 and not (tmp_path / "r").exists()
