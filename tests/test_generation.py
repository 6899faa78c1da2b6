"""Generative tasks on clbench's own decoder: the answer-only loss, greedy decoding with a KV
cache, rank classification, general-text perplexity, the algorithmic stream end to end, and the
strategies on a language model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_suite

from clbench.errors import UserError
from clbench.kinds import Generation, answer_mask
from clbench.models import ModelConfig, Transformer
from clbench.tasks import Examples
from clbench.tasks.generative import ClbenchTextTokenizer, TextTask, generative_stream, text_tokenizer

DECODER = {"d_model": 32, "n_layers": 1, "n_heads": 2, "causal": True, "max_len": 32}
TWO = {"tasks": ["shift", "copy"], "n_train": 200, "n_test": 40}


def _batch() -> Examples:
    # prompts of 3 and 2 tokens, answers of 2 and 3 tokens (end token 0 included)
    x = torch.tensor([[5, 6, 7, 8, 0, 0], [5, 6, 9, 9, 0, 0]])
    return Examples(x, torch.zeros(2, dtype=torch.long), torch.tensor([5, 5]), torch.zeros(2, dtype=torch.long),
                    torch.tensor([3, 2]))


def test_the_loss_is_taken_on_the_answer_tokens_only():
    batch = _batch()
    mask = answer_mask(batch, 5)
    assert mask.tolist() == [[False, False, True, True, False], [False, True, True, True, False]]
    assert Generation.targets(batch).tolist() == [8, 0, 9, 9, 0]
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**DECODER), input_kind="tokens", input_dim=10, n_classes=0, lm_head=True)
    full = model.lm_logits(model.hidden_states(batch.x[:, :5], batch.lengths))  # (2, 5, V)
    want = F.cross_entropy(torch.cat([full[0, 2:4], full[1, 1:4]]), torch.tensor([8, 0, 9, 9, 0]))

    class Cell:
        pass

    got_logits = Generation().logits(Cell(), batch, model)
    assert got_logits.shape == (5, 10)  # the vocabulary projection of answer positions only
    torch.testing.assert_close(Generation().loss(Cell(), batch, got_logits), want)


def test_greedy_decoding_with_the_cache_equals_decoding_without_it():
    torch.manual_seed(1)
    model = Transformer(ModelConfig(**DECODER), input_kind="tokens", input_dim=12, n_classes=0, lm_head=True).eval()
    prompts = [[3, 4, 5, 6, 7], [3, 9], [8, 8, 8]]
    x = torch.zeros(3, 5, dtype=torch.long)
    for i, p in enumerate(prompts):
        x[i, : len(p)] = torch.tensor(p)
    out = model.generate(x, torch.tensor([5, 2, 3]), max_new_tokens=6, eos_id=0)
    for i, p in enumerate(prompts):  # one sequence at a time, the whole sequence every step
        seq = list(p)
        for _ in range(6):
            with torch.no_grad():
                h = model.hidden_states(torch.tensor([seq]))
                nxt = int(model.lm_logits(h[0, -1]).argmax())
            seq.append(nxt)
            if nxt == 0:
                break
        want = seq[len(p):] + [0] * (6 - (len(seq) - len(p)))
        assert out[i].tolist() == want


def test_prompts_are_shortened_from_the_left_never_the_answer(capsys):
    tok = text_tokenizer("bytes")
    task = TextTask("t", train=[("abcdefghij", "xy")] * 2, test=[("abc", "xy")])
    stream = generative_stream("s", [task], tok, max_len=8)
    ex = stream.tasks[0].train
    assert ex.lengths.tolist() == [8, 8] and ex.start.tolist() == [5, 5]
    assert tok.decode(ex.x[0, :5].tolist()) == "fghij" and tok.decode(ex.x[0, 5:7].tolist()) == "xy"
    assert int(ex.x[0, 7]) == tok.eos_id
    assert "2 prompt(s) longer than max_len = 8" in capsys.readouterr().err
    with pytest.raises(UserError, match="answer takes 5 tokens"):
        generative_stream("s", [TextTask("t", train=[("a", "wxyz")], test=[("a", "b")])], tok, max_len=5)
    with pytest.raises(UserError, match="empty answer"):
        generative_stream("s", [TextTask("t", train=[("a", " ")], test=[("a", "b")])], tok, max_len=8)
    with pytest.raises(UserError, match="unknown metric 'bleu'"):
        generative_stream("s", [TextTask("t", train=[("a", "b")], test=[("a", "b")], metric="bleu")], tok, max_len=8)


def test_rank_classification_picks_the_likeliest_label(host):
    """``accuracy`` ranks the label texts by their likelihood after the prompt: checked against
    the same likelihoods computed by hand."""
    from clbench.cell import CellContext
    from clbench.suite import parse_suite

    tok = text_tokenizer("bytes")
    pairs = [(f"is {w}?", lab) for w, lab in [("ab", "yes"), ("cd", "no"), ("ef", "yes"), ("gh", "no")]]
    stream = generative_stream("s", [TextTask("yn", pairs, pairs, metric="accuracy", labels=("yes", "no"))], tok, max_len=16)
    (cell,) = parse_suite(make_suite(["naive"], model=DECODER), "t.toml").cells
    torch.manual_seed(3)
    model = Transformer(cell.model, input_kind="tokens", input_dim=257, n_classes=0, lm_head=True).eval()
    ctx = CellContext(cell, stream, model, torch.device("cpu"))
    got = Generation().evaluate(ctx, 0, ctx.tasks[0])
    right = right_norm = 0
    for (prompt, answer) in pairs:
        p = tok.encode_prompts([prompt])[0]
        scores = []
        for lab in ("yes", "no"):
            seq = p + tok.encode_answers([lab])[0] + [0]
            with torch.no_grad():
                logp = model.lm_logits(model.hidden_states(torch.tensor([seq]))).log_softmax(-1)[0]
            scores.append(sum(float(logp[k - 1, seq[k]]) for k in range(len(p), len(seq))))
        right += ("yes", "no")[int(np.argmax(scores))] == answer
        right_norm += ("yes", "no")[int(np.argmax([scores[0] / 3, scores[1] / 2]))] == answer  # by characters
    assert got["acc"] == got["accuracy"] == right / 4
    assert got["acc_norm"] == right_norm / 4


def test_bits_per_byte_count_the_bytes_of_the_scored_tokens():
    """The denominator of bits per byte: in each document (cut to max_len tokens), the UTF-8
    bytes of the tokens after the first, which no position predicts."""
    from clbench.tasks.generative import scored_bytes

    docs = ["\u00e9t\u00e9 chaud", "plain words here", "na\u00efve caf\u00e9 au lait, tr\u00e8s bien"]
    task = TextTask("t", [("a", "b")], [("a", "b")])
    tok = text_tokenizer("bytes")
    s = generative_stream("s", [task], tok, max_len=12, general=docs)
    kept = [d.encode("utf-8")[:12] for d in docs]  # one token a byte, cut to 12
    assert scored_bytes(tok, s.general) == sum(len(k) - 1 for k in kept)  # "é" starts with 2 bytes: 1 is scored
    bpe = text_tokenizer("bpe", docs * 20, vocab_size=300)
    s = generative_stream("s", [task], bpe, max_len=64, general=docs)
    ids = bpe.encode_prompts(docs)
    assert scored_bytes(bpe, s.general) == sum(len(d.encode("utf-8")) - len(bpe.decode(i[:1]).encode("utf-8"))
                                               for d, i in zip(docs, ids))


class _Uniform(torch.nn.Module):
    """A language model whose next-token distribution is uniform everywhere."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(()))

    def hidden_states(self, x, lengths=None):
        return torch.zeros(*x.shape, 1)

    def lm_logits(self, h):
        return torch.zeros(h.shape[0], self.vocab) + 0 * self.w


def test_acc_norm_removes_the_length_bias_of_summed_log_probabilities(host):
    """With uniform token probabilities the summed log-probability always picks the shortest
    label; lm-evaluation-harness's ``acc_norm`` (divided by the label's length in characters)
    does not: labels of 9, 9 and 8 bytes, every answer the first."""
    from clbench.cell import CellContext
    from clbench.suite import parse_suite

    tok = text_tokenizer("bytes")
    labels = ("aaaaaaaaa", "bbbbbbbbb", "cccccccc")
    pairs = [(f"q{i}", labels[0]) for i in range(6)]
    stream = generative_stream("s", [TextTask("t", pairs, pairs, metric="accuracy", labels=labels)], tok, max_len=24)
    (cell,) = parse_suite(make_suite(["naive"], model=DECODER), "t.toml").cells
    ctx = CellContext(cell, stream, _Uniform(257), torch.device("cpu"))
    got = Generation().evaluate(ctx, 0, ctx.tasks[0])
    # summed: -(n + 1) log 257 for n bytes and the end token, largest for the 8-byte label: always wrong
    assert got["accuracy"] == 0.0
    # per character: -(10/9) log 257 beats -(9/8) log 257; the two 9-byte labels tie and the first wins
    assert got["acc_norm"] == 1.0


def test_an_algorithmic_cell_learns_forgets_and_measures_its_general_text(run_suite_dict):
    # about 110 steps per task: enough for this model to learn each rule (seeds 0-2: 1.0)
    _, tables = run_suite_dict(make_suite(["naive"], stream="algorithmic", stream_params={**TWO, "n_train": 300},
                                          model={**DECODER, "d_model": 64, "n_layers": 2, "n_heads": 4},
                                          training={"epochs": 6, "batch_size": 16, "lr": 3e-3}))
    (cell,) = tables.cells.to_dict("records")
    assert cell["status"] == "ok", cell["traceback"]
    m = tables.measurements
    R = m[m.metric == "acc"].pivot_table(index="train_task", columns="eval_task", values="value")
    assert R.loc[0, 0] > 0.7  # 'shift' is learned ...
    assert R.loc[1, 0] < R.loc[0, 0] - 0.3  # ... and forgotten once 'copy' is trained
    assert R.loc[1, 1] > 0.7
    assert set(m[m.eval_task == -1].metric) == {"general_ppl", "general_bpb"} and len(m[m.eval_task == -1]) == 6
    assert set(m[m.eval_task >= 0].metric) == {"acc", "exact_match", "loss", "train_loss"}
    s = tables.summary.iloc[0]
    g = m[m.metric == "general_ppl"].sort_values("train_task")["value"].to_numpy()
    assert s["general_ppl_change"] == pytest.approx((g[-1] - g[0]) / g[0])
    # ASCII text, one byte a token: bits per byte is log2 of the perplexity per token
    bpb = m[m.metric == "general_bpb"].sort_values("train_task")["value"].to_numpy()
    assert bpb == pytest.approx(np.log2(g), rel=1e-9)
    assert s["general_bpb_change"] == pytest.approx(bpb[-1] - bpb[0])
    assert cell["padding_fraction"] == 0.0 and cell["tokens_seen"] > 0  # shift and copy: one length


@pytest.mark.parametrize("strategy", ["replay", "ewc", "lwf", "agem", "si", "gdumb", "cumulative", "joint", ["replay", "ewc"]])
def test_strategies_run_on_a_language_model(run_suite_dict, strategy):
    _, tables = run_suite_dict(make_suite([{"name": strategy}], stream="algorithmic",
                                          stream_params={**TWO, "n_train": 60, "n_test": 12}, model=DECODER,
                                          training={"epochs": 1, "batch_size": 16}))
    (cell,) = tables.cells.to_dict("records")
    assert cell["status"] == "ok", cell["traceback"]


def test_der_and_a_bidirectional_model_are_refused_before_anything_runs(tmp_path, capsys):
    from clbench.cli import main

    base = ('name = "s"\n[model]\nd_model = 32\nn_layers = 1\nn_heads = 2\nmax_len = 32\n{causal}'
            '[[streams]]\nname = "algorithmic"\n[[strategies]]\nname = "{strategy}"\n')
    for causal, strategy, why in (("causal = true\n", "der", "serves classification streams only"),
                                  ("", "naive", "need a causal model")):
        path = tmp_path / f"{strategy}.toml"
        path.write_text(base.format(causal=causal, strategy=strategy))
        assert main(["run", str(path), "--out", str(tmp_path / strategy), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err
        assert not (tmp_path / strategy).exists()


def test_lwf_distils_the_vocabulary_at_answer_tokens(host):
    from clbench.cell import CellContext
    from clbench.loop import build_model, build_stream
    from clbench.suite import parse_suite

    (cell,) = parse_suite(make_suite(["lwf"], stream="algorithmic", stream_params={**TWO, "n_train": 20, "n_test": 8},
                                     model=DECODER), "t.toml").cells
    stream = build_stream(cell)
    ctx = CellContext(cell, stream, build_model(cell, stream), torch.device("cpu"))
    lwf = host.get("strategies", "lwf").obj()
    ctx.task_index = 1
    lwf.before_task(ctx, ctx.tasks[1])
    batch = ctx.tasks[1].train[:4]
    logits = ctx.logits(batch)
    term = lwf.loss_terms(ctx, batch, logits, None)  # the model is its own teacher: the entropy
    p = F.softmax(logits / 2.0, dim=1)
    torch.testing.assert_close(term, -(p * F.log_softmax(logits / 2.0, dim=1)).sum(1).mean())


def test_a_causal_checkpoint_generates_with_its_pretrained_head(tmp_path, run_suite_dict, host):
    from safetensors.torch import load_file

    from clbench.loop import build_model, build_stream
    from clbench.pretrain import PretrainConfig, pretrain
    from clbench.suite import parse_suite

    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"next {w}= {w}" for w in ["abcd", "bcde", "cdef", "defa"] * 20))
    ckpt = pretrain(tmp_path / "ckpt", text, model=ModelConfig(**DECODER), config=PretrainConfig(steps=5, batch_size=4, seq_len=32))
    suite = make_suite(["naive"], stream="algorithmic", stream_params={**TWO, "n_train": 20, "n_test": 8},
                       model={"init": str(tmp_path / "ckpt")}, training={"epochs": 1})
    (config,) = parse_suite(suite, "t.toml").cells
    model = build_model(config, build_stream(config))
    saved = load_file(str(ckpt / "model.safetensors"))
    assert saved["lm_head.bias"].abs().sum() > 0
    for name in ("lm_head.bias", "lm_head.dense.weight", "embed.weight"):  # the pre-trained head, and the rest
        assert torch.equal(model.state_dict()[name], saved[name])
    _, tables = run_suite_dict(suite)
    (cell,) = tables.cells.to_dict("records")
    assert cell["status"] == "ok", cell["traceback"]
    assert json.loads(cell["model"])["causal"] is True
    assert isinstance(text_tokenizer(str(tmp_path / "ckpt")), ClbenchTextTokenizer)


def test_rank_classification_fits_the_longest_label_into_the_model(host):
    """A prompt that fits the model with its own (short) answer but not with a longer label is
    shortened from the left for every label alike, never run past the model's max_len."""
    from clbench.cell import CellContext
    from clbench.suite import parse_suite

    tok = text_tokenizer("bytes")
    pairs = [("x" * 25, "no"), ("y" * 20, "yes")]
    stream = generative_stream("s", [TextTask("yn", pairs, pairs, metric="accuracy", labels=("no", "a much longer label"))],
                               tok, max_len=28)
    (cell,) = parse_suite(make_suite(["naive"], model={**DECODER, "max_len": 28}), "t.toml").cells
    model = Transformer(cell.model, input_kind="tokens", input_dim=257, n_classes=0, lm_head=True).eval()
    ctx = CellContext(cell, stream, model, torch.device("cpu"))
    assert 0.0 <= Generation().evaluate(ctx, 0, ctx.tasks[0])["accuracy"] <= 1.0


def test_a_checkpoint_pretrained_on_shorter_sequences_is_warned_about(tmp_path, host, capsys):
    """Positions past the pre-training's --seq-len have untrained position embeddings: one line."""
    from clbench.pretrain import PretrainConfig, pretrain
    from clbench.suite import parse_suite
    from clbench.suiterun import preflight

    text = tmp_path / "text.txt"
    text.write_text("\n".join(["rev abcd=dcba"] * 20))
    pretrain(tmp_path / "ckpt", text, model=ModelConfig(**DECODER), config=PretrainConfig(steps=2, batch_size=2, seq_len=8))
    suite = make_suite(["naive"], stream="algorithmic", stream_params={**TWO, "n_train": 10, "n_test": 4},
                       model={"init": str(tmp_path / "ckpt")})
    preflight(parse_suite(suite, "t.toml"))
    err = capsys.readouterr().err
    assert err.count("pre-trained on sequences of at most 8 tokens") == 1, err
