"""The strategies whose model writes its own rehearsal data, ``lamol`` and ``ssr``, and the
seeded sampling mode of ``generate`` they write it with: the mechanisms (what is generated from
what, how much, by which model, what is kept, the loss's terms), the counts and samples in the
results, bit-for-bit reproducibility on a CPU, Hugging Face models, and the refusals."""

from __future__ import annotations

import json
import math
from itertools import permutations

import numpy as np
import pytest
import torch

from conftest import make_suite

from clbench.errors import UserError
from clbench.kinds import Generation
from clbench.models.sampling import Sampling
from clbench.strategies.lamol import LAMOL, lm_sequences, parse
from clbench.strategies.ssr import SSR, OUTPUT_CUE, inputs_of, kmeans_select, layout
from clbench.strategies.synthetic import SPARE_BYTES, spare_token_ids
from clbench.tasks import Examples
from clbench.tasks.generative import text_tokenizer

DECODER = {"d_model": 32, "n_layers": 1, "n_heads": 2, "causal": True, "max_len": 32}
THREE = {"tasks": ["shift", "copy", "reverse"], "n_train": 40, "n_test": 8}
ONE_EPOCH = {"epochs": 1, "batch_size": 16}


def _cell(host, strategy: str = "naive", model: dict | None = None, stream_params: dict | None = None):
    """A CellContext on the algorithmic stream with a tiny decoder (no hooks registered)."""
    from clbench.cell import CellContext
    from clbench.loop import build_model, build_stream
    from clbench.suite import parse_suite

    (cfg,) = parse_suite(make_suite([strategy], stream="algorithmic", stream_params=stream_params or THREE,
                                    model={**DECODER, **(model or {})}, training=ONE_EPOCH), "t.toml").cells
    stream = build_stream(cfg)
    return CellContext(cfg, stream, build_model(cfg, stream), torch.device("cpu"))


# -- the spare token ids LAMOL's markers are --------------------------------------------------


def test_spare_token_ids_are_tokens_no_text_encodes_to(tmp_path, tiny_causal_lm, monkeypatch):
    from clbench.models.backbones import resolve
    from clbench.models.hf import HFTextTokenizer

    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path))
    every_char = "".join(chr(c) for c in range(32, 0x3000)) + "\n\t ÿÀõ"
    tokenizers = {"bytes": text_tokenizer("bytes"),
                  "bpe": text_tokenizer("bpe", ["rev cabd=dbac", "sort ab=ab", every_char] * 3, vocab_size=600),
                  "hf": HFTextTokenizer.load(resolve(str(tiny_causal_lm("llama"))))}
    for name, tok in tokenizers.items():
        spare = spare_token_ids(tok)
        assert len(spare) == len(SPARE_BYTES) == len(set(spare)), name
        ids = {i for seq in tok.encode_prompts([every_char, "rev cabd=dbac"]) + tok.encode_answers([every_char]) for i in seq}
        assert not ids & set(spare), name
    assert spare_token_ids(text_tokenizer("bytes"))[:2] == [0xFF + 1, 0xFE + 1]

    class WordLevel:  # no tokens for bytes at all
        tok = None
    assert spare_token_ids(WordLevel()) == []


# -- lamol ---------------------------------------------------------------------------------------


def test_lamol_language_model_sequences_put_the_generation_token_before_the_whole_example():
    # prompts [5, 6, 7] and [9], answers [8] and [4, 4], end token 0
    x = torch.tensor([[5, 6, 7, 8, 0], [9, 4, 4, 0, 0]])
    batch = Examples(x, torch.zeros(2, dtype=torch.long), torch.tensor([5, 4]), torch.tensor([0, 1]), torch.tensor([3, 1]))
    gen = torch.tensor([100, 101])
    lm = lm_sequences(batch, gen, 99, max_len=32)
    assert lm.x.tolist() == [[100, 5, 6, 7, 99, 8, 0], [101, 9, 99, 4, 4, 0, 0]]
    assert lm.lengths.tolist() == [7, 6] and lm.start.tolist() == [1, 1]
    assert Generation.targets(lm).tolist() == [5, 6, 7, 99, 8, 0, 9, 99, 4, 4, 0]  # everything after GEN
    short = lm_sequences(batch, gen, 99, max_len=6)  # the first prompt loses one token from its left
    assert short.x[0].tolist() == [100, 6, 7, 99, 8, 0] and short.lengths.tolist() == [6, 6]
    assert parse([5, 6, 99, 8], 99, {99, 100}) == ([5, 6], [8])
    for bad in ([5, 6, 8], [99, 8], [5, 99], [5, 99, 8, 99, 4], [5, 100, 99, 8]):
        assert parse(bad, 99, {99, 100}) is None


def test_lamol_loss_term_is_lambda_times_the_language_model_loss(host):
    cell = _cell(host, "lamol")
    batch = cell.tasks[1].train[:6]
    s = LAMOL(lambda_=0.3, answer_token_weight=2.0)
    s.check_cell(cell.config, cell.stream)
    term = s.loss_terms(cell, batch, None, None)
    spare = spare_token_ids(cell.stream.tokenizer)
    ans, gen = spare[0], spare[1]
    total = weights = 0.0
    for i in range(len(batch)):  # by hand: one sequence at a time, the whole sequence
        st, n = int(batch.start[i]), int(batch.lengths[i])
        seq = [gen] + batch.x[i, :st].tolist() + [ans] + batch.x[i, st:n].tolist()
        with torch.no_grad():
            logp = cell.model.lm_logits(cell.model.hidden_states(torch.tensor([seq]))).log_softmax(-1)[0]
        for k in range(1, len(seq)):
            w = 2.0 if seq[k] == ans else 1.0
            total -= w * float(logp[k - 1, seq[k]])
            weights += w
    assert float(term.detach()) == pytest.approx(0.3 * total / weights, rel=1e-5)
    assert LAMOL(lambda_=0.0).loss_terms(cell, batch, None, None) is None


class Recorder:
    """Wraps a model's ``generate``: records each call's prompts and sampling, and answers each
    prompt with ``reply(prompt ids)`` when given one (else the model's own answer)."""

    def __init__(self, model, reply=None):
        self.model, self.reply, self.calls = model, reply, []
        self.inner = model.generate
        model.generate = self

    def __call__(self, x, lengths, max_new_tokens, eos_id, sampling=None, generator=None):
        prompts = [x[i, : int(lengths[i])].tolist() for i in range(len(x))]
        self.calls.append({"prompts": prompts, "sampling": sampling, "generator": generator})
        if self.reply is None:
            return self.inner(x, lengths, max_new_tokens, eos_id, sampling=sampling, generator=generator)
        out = torch.full((len(x), max_new_tokens), eos_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            r = self.reply(p)[:max_new_tokens]
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out


@pytest.mark.parametrize("gen_token", ["shared", "per-task"])
def test_lamol_writes_gamma_times_the_task_of_pseudo_examples_from_the_generation_tokens(host, gen_token):
    cell = _cell(host, "lamol")
    tok = cell.stream.tokenizer
    s = LAMOL(gamma=0.2, gen_token=gen_token)
    spare = spare_token_ids(tok)
    ans = spare[0]
    gens = spare[1:4] if gen_token == "per-task" else [spare[1]] * 3
    # the model "writes" a well-formed example for even draws and junk for odd ones
    count = {"n": 0}

    def reply(prompt):
        count["n"] += 1
        g = prompt[0]
        return tok.encode_prompts([f"q{g}-"])[0] + [ans] + tok.encode_answers(["ok"])[0] + [0] if count["n"] % 2 \
            else tok.encode_prompts(["junk"])[0] + [0]

    rec = Recorder(cell.model, reply)
    cell.task_index, cell.task = 2, cell.tasks[2]
    s.before_task(cell, cell.tasks[2])
    n = math.ceil(0.2 * len(cell.tasks[2].train))  # 8 of 40
    per = (n - n % 2) // 2
    prompts = [p for c in rec.calls for p in c["prompts"]]
    assert sorted(prompts) == sorted([[gens[0]]] * per + [[gens[1]]] * per)  # sampled from the earlier tasks' GEN
    assert all(c["sampling"] == Sampling(top_k=20) and c["generator"] is cell.generator for c in rec.calls)
    data = s.train_data(cell, cell.tasks[2])
    pseudo = data[len(cell.tasks[2].train):]
    assert torch.equal(data.x[: len(cell.tasks[2].train), : cell.tasks[2].train.x.shape[1]], cell.tasks[2].train.x)
    assert len(pseudo) == len(prompts) // 2  # the junk (no answer token) is dropped
    for i in range(len(pseudo)):
        st, L = int(pseudo.start[i]), int(pseudo.lengths[i])
        prompt, answer = tok.decode(pseudo.x[i, :st].tolist()), tok.decode(pseudo.x[i, st : L - 1].tolist())
        assert answer == "ok" and int(pseudo.x[i, L - 1]) == tok.eos_id
        assert prompt == f"q{gens[int(pseudo.t[i])]}-"  # labelled with the task whose token it came from
    samples = cell.info["samples"]
    assert [(r["train_task"], r["task"], r["generated"]) for r in samples] == [(2, 0, per), (2, 1, per)]
    assert sum(r["kept"] for r in samples) == len(pseudo) and samples[0]["examples"][0]["answer"] == "ok"


# -- ssr -----------------------------------------------------------------------------------------


def test_ssr_writes_demonstrations_in_the_streams_own_format():
    algo = [{"prompt": "rev abcd=", "answer": "dcba"}, {"prompt": "rev bcda=", "answer": "adcb"}]
    assert layout(algo) == ("", ["rev abcd=", "rev bcda="], "=", "\n\n")
    assert inputs_of("rev eeff=ffee\n\nrev x=\n\nrev ab", False, "=", "\n\n") == ["rev eeff=", "rev x="]
    assert inputs_of("=ab\n\nrev q=q", True, "=", "\n\n") == ["rev q="]  # nothing before the ending: dropped
    instr = [{"prompt": "Task:TC\nPick one.\nTitle: a.\nAnswer:", "answer": "World"},
             {"prompt": "Task:TC\nPick one.\nTitle: b\n\nc.\nAnswer:", "answer": "Sports"}]
    definition, rest, ending, sep = layout(instr)
    assert definition == "Task:TC\nPick one.\n" and rest == ["Title: a.\nAnswer:", "Title: b\n\nc.\nAnswer:"]
    assert ending == "\nAnswer:" and sep == "\n\n\n"  # a demonstration holds a blank line
    free = [{"prompt": "hello", "answer": "x"}, {"prompt": "bye!", "answer": "y"}]
    assert layout(free)[2] == "" and inputs_of(f"hi{OUTPUT_CUE}z\n\n", True, "", "\n\n") == ["hi"]


def test_ssr_keeps_about_k_inputs_nearest_the_kmeans_centres():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    sizes = [30, 20, 10]
    emb = np.concatenate([c + rng.normal(size=(n, 3)) for c, n in zip(centres, sizes)])
    keep = kmeans_select(emb, 6, 3, seed=0)
    assert len(keep) == 6
    owner = np.repeat([0, 1, 2], sizes)
    assert np.bincount(owner[keep], minlength=3).tolist() == [3, 2, 1]  # in proportion to the clusters
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for c in range(3):  # the kept ones are the nearest their (normalised) cluster's centre
        members = np.flatnonzero(owner == c)
        centre = unit[members].mean(0)
        d = np.linalg.norm(unit[members] - centre, axis=1)
        assert set(keep[owner[keep] == c]) == set(members[np.argsort(d)[: len(keep[owner[keep] == c])]])
    assert kmeans_select(emb[:5], 6, 3, seed=0).tolist() == [0, 1, 2, 3, 4]


def test_ssr_inputs_come_from_the_base_model_in_context_and_outputs_from_the_current_model(host):
    cell = _cell(host, "ssr", model={"max_len": 64})
    tok = cell.stream.tokenizer
    s = SSR(demos=3, shots=2, samples=2, memory_size=5, clusters=2)
    cell.task_index, cell.task = 0, cell.tasks[0]
    s.before_task(cell, cell.tasks[0])
    assert s.base is not cell.model and all(not p.requires_grad for p in s.base.parameters())
    with torch.no_grad():  # the model moves on from the base while it learns the task
        for p in cell.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # the base model writes two new instances per continuation, "next <4 letters>=...", each time new ones
    letters = "ghijkl"  # not the stream's alphabet: no real example can be written by chance
    made = iter(f"next {a}{b}{c}{d}=" for a in letters for b in letters for c in letters for d in letters)
    base = Recorder(s.base, lambda p: tok.encode_answers([f"{next(made)}zz\n\n{next(made)}zz\n\n"])[0])
    current = Recorder(cell.model)
    real = {tok.decode(cell.tasks[0].train.x[i, : int(cell.tasks[0].train.start[i])].tolist()) for i in range(40)}
    s.after_task(cell, cell.tasks[0])

    contexts = [tok.decode(p) for c in base.calls for p in c["prompts"]]
    assert len(contexts) == len(list(permutations(range(3), 2))) * 2  # every ordered pair of demos, twice
    assert all(c["sampling"] == Sampling(top_p=0.6, temperature=0.9) for c in base.calls)
    seen = {r for r in real if any(r in c for c in contexts)}
    assert len(seen) == 3 and all(sum(r in c for r in real) == 2 for c in contexts)  # the demos, 2 per prompt
    (synthetic,) = s.memory
    written = {f"next {a}{b}{c}{d}=" for a in letters for b in letters for c in letters for d in letters}
    prompts = [tok.decode(synthetic.x[i, : int(synthetic.start[i])].tolist()) for i in range(len(synthetic))]
    assert set(prompts) <= written and not set(prompts) & real  # inputs: the base model's, no real example
    (rec,) = cell.info["samples"]
    assert rec["generated"] == 24 and 4 <= rec["selected"] <= 6  # about 5 of 24, by k-means (rounding per cluster)
    assert rec["selected"] == len(current.calls[0]["prompts"]) == len(s.memory[0]) + sum(not a for a in [])
    assert all(c["sampling"] is None for c in current.calls)  # greedy, as evaluation
    for i, p in enumerate(synthetic.x):  # outputs: what the current model answers to each input
        st, L = int(synthetic.start[i]), int(synthetic.lengths[i])
        want = cell.model.generate.inner(p[None, :st], torch.tensor([st]), cell.tasks[0].max_new_tokens, 0)[0].tolist()
        want = want[: want.index(0)] if 0 in want else want
        assert synthetic.x[i, st : L - 1].tolist() == want
    assert s.train_data(cell, cell.tasks[1]).t.tolist().count(0) == len(synthetic)
    assert cell.info["buffer_size"] == len(synthetic)


# -- whole cells ---------------------------------------------------------------------------------


def test_lamol_and_ssr_cells_count_what_they_rehearse_and_are_reproducible_bit_for_bit(run_suite_dict, tmp_path, capsys):
    suite = make_suite([{"name": "lamol", "params": {"gamma": 0.5, "gen_token": "per-task"}},
                        {"name": "ssr", "params": {"shots": 1, "memory_size": 4, "clusters": 2}}],
                       stream="algorithmic", stream_params=THREE, model={**DECODER, "max_len": 48}, training=ONE_EPOCH)
    runs = [run_suite_dict(suite, out=tmp_path / f"run{k}")[1] for k in range(2)]
    for t in runs:
        assert (t.cells.status == "ok").all(), t.cells.traceback.tolist()
    a, b = (t.measurements.sort_values(["strategy", "train_task", "eval_task", "metric"]).reset_index(drop=True) for t in runs)
    assert a["value"].tolist() == b["value"].tolist()  # bit for bit
    assert runs[0].cells.samples.tolist() == runs[1].cells.samples.tolist()
    for c in runs[0].cells.to_dict("records"):
        samples = json.loads(c["samples"])
        # LAMOL's pseudo-examples train with one task; SSR's with every task after theirs
        rehearsed = sum(r["kept"] * (1 if c["strategy"] == "lamol" else 3 - r["train_task"]) for r in samples)
        assert rehearsed > 0 and c["examples_seen"] == 3 * 40 + rehearsed  # one epoch: each real and written example once
        assert len(samples) == (3 if c["strategy"] == "lamol" else 2)
        assert all(len(r["examples"]) == min(5, r["kept"]) for r in samples)
    from clbench.cli import main

    capsys.readouterr()
    assert main(["show", "--samples", str(tmp_path / "run0")]) == 0
    out = capsys.readouterr().out
    assert "lamol seed 0 on algorithmic: examples it wrote" in out and "ssr seed 0" in out


def test_lamol_and_ssr_run_on_a_hugging_face_model(run_suite_dict, tiny_causal_lm):
    folder = str(tiny_causal_lm("llama"))
    suite = make_suite(["lamol", {"name": "ssr", "params": {"shots": 1, "memory_size": 3, "clusters": 2}}],
                       stream="algorithmic", stream_params={"tasks": ["shift", "copy"], "n_train": 16, "n_test": 4},
                       model={"init": folder}, training={"epochs": 1, "batch_size": 8})
    for key in ("d_model", "n_layers", "n_heads"):
        suite["model"].pop(key)
    _, t = run_suite_dict(suite)
    assert (t.cells.status == "ok").all(), t.cells.traceback.tolist()
    lamol = json.loads(t.cells.set_index("strategy").loc["lamol", "samples"])
    assert [(r["train_task"], r["task"], r["generated"]) for r in lamol] == [(1, 0, math.ceil(0.2 * 16))]


@pytest.mark.parametrize("entry, stream, message", [
    ("lamol", "split-digits", "strategy 'lamol': serves generation streams only, and stream 'split-digits' has classification tasks"),
    ("ssr", "split-digits", "strategy 'ssr': serves generation streams only, and stream 'split-digits' has classification tasks"),
    ({"name": ["lora", "lamol"]}, "algorithmic", "cannot be combined with per-task LoRA"),
    ({"name": ["ssr", "cumulative"]}, "algorithmic", "strategies ssr and cumulative cannot be combined: both decide 'train_data'"),
    ({"name": "lamol", "params": {"gamma": -1.0}}, "algorithmic", "parameter 'gamma' must be a number >= 0"),
    ({"name": "ssr", "params": {"shots": 5}}, "algorithmic", "parameter 'shots' must be in 1..demos (4)"),
])
def test_refused_before_anything_runs_in_one_line(run_suite_dict, tmp_path, entry, stream, message):
    params = {"patch_size": 4} if stream == "split-digits" else THREE
    model = {} if stream == "split-digits" else DECODER
    with pytest.raises(UserError) as exc:
        run_suite_dict(make_suite([entry], stream=stream, stream_params=params, model=model), out=tmp_path / "out")
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_lamol_refuses_a_tokenizer_without_spare_ids_and_too_many_task_tokens(host):
    cell = _cell(host, "lamol")

    class Plain:  # a tokenizer with no byte tokens
        tok, eos_id = None, 0

    stream = type(cell.stream)(**{**cell.stream.__dict__, "tokenizer": Plain()})
    with pytest.raises(UserError, match="needs token ids that no text encodes to"):
        LAMOL().check_cell(cell.config, stream)
    many = type(cell.stream)(**{**cell.stream.__dict__, "tasks": cell.stream.tasks * 5})
    LAMOL().check_cell(cell.config, many)  # one shared token: any number of tasks
    with pytest.raises(UserError, match="needs 16 spare token ids for 15 tasks, the tokenizer has 13"):
        LAMOL(gen_token="per-task").check_cell(cell.config, many)
