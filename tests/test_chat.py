"""Chat templates on generative streams (``prompt_format``): a tiny Llama saved with a small
trained tokenizer and a ChatML-like template set on it (nothing downloaded). The prompt is the
user's turn and the answer the assistant's: the answer's tokens are those of the rendered
conversation, training learns the turn's closing token, generation starts after the assistant's
header and stops at that token, rank classification scores each label as the assistant's reply;
``auto`` is resolved when the suite is read, recorded and hashed; a template that drops the
answer and ``chat`` without a template are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from clbench.cell import CellContext
from clbench.cli import main
from clbench.errors import UserError
from clbench.kinds import Generation
from clbench.models.backbones import resolve
from clbench.models.hf import HFTextTokenizer, load_causal_lm
from clbench.suite import parse_suite
from clbench.suiterun import preflight
from clbench.tasks.algorithmic import algorithmic
from clbench.tasks.generative import TextTask, generative_stream
from conftest import make_suite

transformers = pytest.importorskip("transformers")

#: ChatML, with a system turn first (as SmolLM2's template has): its end-of-turn token is not the
#: tokenizer's end token (</s>), so the tests tell the two apart.
CHATML = ("{% for m in messages %}{% if loop.first %}<|im_start|>system\nBe brief.<|im_end|>\n{% endif %}"
          "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TRIM = CHATML.replace("{{ m['content'] }}", "{{ m['content'] | trim }}")  # strips what it renders
DROPS = CHATML.replace("{{ m['content'] }}", "{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}")
NO_END = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
          "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture(scope="session")
def chat_lm(tiny_causal_lm, tmp_path_factory):
    """``chat_lm(template)``: a copy of the tiny Llama whose tokenizer has ``<|im_start|>`` and
    ``<|im_end|>`` as special tokens and ``template`` as its chat template."""
    made: dict[str, Path] = {}

    def get(template: str = CHATML) -> Path:
        if template not in made:
            folder = tmp_path_factory.mktemp("chat")
            shutil.copytree(tiny_causal_lm("llama"), folder, dirs_exist_ok=True)
            tok = transformers.AutoTokenizer.from_pretrained(str(folder))
            tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
            tok.chat_template = template
            tok.save_pretrained(str(folder))
            made[template] = folder
        return made[template]

    return get


def rendered(tok, prompt: str, answer: str | None = None) -> list[int]:
    """transformers' own rendering of the conversation, tokenized."""
    msgs = [{"role": "user", "content": prompt}] + ([{"role": "assistant", "content": answer}] if answer is not None else [])
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=answer is None)
    return tok(text, add_special_tokens=False)["input_ids"]


def chat_suite(folder, strategies=("naive",), **params) -> dict:
    s = make_suite(list(strategies), stream="algorithmic",
                   stream_params={"tasks": ["reverse"], "n_train": 16, "n_test": 4, "length": 3, "max_len": 48, **params},
                   training={"epochs": 1, "batch_size": 8})
    s["model"] = {"init": str(folder)}
    return s


def test_the_answer_is_the_assistant_turn_the_template_renders(chat_lm, tiny_causal_lm):
    tok = HFTextTokenizer.load(resolve(str(chat_lm())), "chat")
    end = tok.tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_id == end != tok.tok.eos_token_id  # answers end with the turn's closing token
    for prompt, answer in [("rev abc=", "cba"), ("sentence: a fine film\nAnswer:", "positive")]:
        (p, a), = tok.encode_pairs([(prompt, answer)], "t")
        full = rendered(tok.tok, prompt, answer)
        assert p == rendered(tok.tok, prompt)  # the prompt: up to the assistant's header
        assert p + a == full[: len(p) + len(a)] and a[-1] == end and end not in a[:-1]  # then the turn, closed
        assert len(full) > len(p) + len(a)  # (the newline after the closing token is not trained)
        assert tok.decode(a) == answer and tok.encode_answers([answer]) == [a[:-1]]
        assert tok.encode_prompts([prompt]) == [p]
    plain = HFTextTokenizer.load(resolve(str(tiny_causal_lm("llama"))))
    assert tok.encode_text(["rev abc="]) == plain.encode_prompts(["rev abc="])  # the general text stays plain
    assert plain.prompt_format == "plain" and plain.eos_id == plain.tok.eos_token_id

    trim = HFTextTokenizer.load(resolve(str(chat_lm(TRIM))), "chat")
    (p, a), = trim.encode_pairs([("rev abc=", "  cba \n")], "t")
    assert trim.decode(a) == "cba" and p + a == rendered(trim.tok, "rev abc=", "  cba \n")[: len(p) + len(a)]


def test_a_long_prompt_loses_the_user_s_text_not_the_template_s_tokens(chat_lm, capsys):
    tok = HFTextTokenizer.load(resolve(str(chat_lm())), "chat")
    head = rendered(tok.tok, "")
    long = "The quick brown fox jumps over the lazy dog. " * 6
    room = len(rendered(tok.tok, long, "dog")) - 8  # the short test prompt fits, the long one loses a few tokens
    stream = generative_stream("s", [TextTask("t", [(long, "dog")], [("rev abc=", "cba")])], tok, max_len=room)
    ex = stream.tasks[0].train
    p, a = ex.x[0, : ex.start[0]].tolist(), ex.x[0, ex.start[0] : ex.lengths[0]].tolist()
    assert int(ex.lengths[0]) <= room and tok.decode(a) == "dog"
    text, before, after = tok.tok.decode(p), "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
    assert text.startswith(before) and text.endswith(after) and p[-len(head[-3:]):] == head[-3:]
    user = text[len(before) : -len(after)]
    assert user and long.endswith(user) and len(user) < len(long)  # the user's text lost its start
    assert f"1 of 2 prompts (50.0%) longer than max_len = {room}" in capsys.readouterr().err


def test_training_targets_and_generation_follow_the_template(chat_lm):
    folder = str(chat_lm())
    stream = algorithmic(tasks=["reverse"], n_train=8, n_test=6, length=3, tokenizer=folder, max_len=48)  # auto: chat
    tok = stream.tokenizer
    assert stream.params["prompt_format"] == "chat" and tok.prompt_format == "chat"
    header = tok.tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    end = tok.tok.convert_tokens_to_ids("<|im_end|>")
    train = stream.tasks[0].train
    for i in range(len(train)):
        s, n = int(train.start[i]), int(train.lengths[i])
        assert train.x[i, s - len(header) : s].tolist() == header and int(train.x[i, n - 1]) == end
    want = torch.cat([train.x[i, int(train.start[i]) : int(train.lengths[i])] for i in range(len(train))])
    assert Generation.targets(train).tolist() == want.tolist()  # the answer and its turn's end, nothing else
    assert end not in stream.general.x.tolist()[0] and header[0] not in stream.general.x.tolist()[0]  # plain text

    (cell,) = parse_suite(chat_suite(folder), "s.toml").cells
    model = load_causal_lm(resolve(folder)).eval()
    ctx = CellContext(cell, stream, model, torch.device("cpu"))
    task = ctx.tasks[0]
    preds, refs = Generation().answers(ctx, task)
    pairs = [(p, a) for p, a in zip(["rev " + r[::-1] + "=" for r in refs], refs)]
    assert refs == [tok.decode(tok.encode_pairs([pa], "t")[0][1]) for pa in pairs]
    for i, (prompt, _) in enumerate(pairs):  # transformers' generate from its own rendering, stopped at <|im_end|>
        ids = torch.tensor([rendered(tok.tok, prompt)])
        gen = model.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
                                max_new_tokens=task.max_new_tokens, eos_token_id=end, pad_token_id=tok.pad_id)
        row = gen[0, ids.shape[1]:].tolist()
        assert preds[i] == tok.decode(row[: row.index(end)] if end in row else row)


def test_rank_classification_scores_each_label_as_the_assistant_s_reply(chat_lm):
    folder = str(chat_lm())
    tok = HFTextTokenizer.load(resolve(folder), "chat")
    pairs = [(f"sentence: {s}\nAnswer:", lab) for s, lab in
             [("a fine film", "positive"), ("dull and long", "negative"), ("the fox", "positive"), ("a lazy dog", "negative")]]
    labels = ("positive", "negative")
    stream = generative_stream("s", [TextTask("sc", pairs, pairs, metric="accuracy", labels=labels)], tok, max_len=64)
    (cell,) = parse_suite(chat_suite(folder), "s.toml").cells
    torch.manual_seed(0)
    model = load_causal_lm(resolve(folder)).eval()
    got = Generation().evaluate(CellContext(cell, stream, model, torch.device("cpu")), 0, stream.tasks[0])
    end, right = tok.eos_id, 0
    for prompt, answer in pairs:
        scores = []
        for lab in labels:  # transformers' rendering of the reply, through its closing token
            p, full = rendered(tok.tok, prompt), rendered(tok.tok, prompt, lab)
            seq = full[: full.index(end, len(p)) + 1]
            with torch.no_grad():
                logp = model.hf(torch.tensor([seq])).logits.log_softmax(-1)[0]
            scores.append(sum(float(logp[k - 1, seq[k]]) for k in range(len(p), len(seq))))
        right += labels[int(torch.tensor(scores).argmax())] == answer
    assert got["acc"] == got["accuracy"] == right / len(pairs)


def test_prompt_format_is_resolved_recorded_and_hashed(chat_lm, tiny_causal_lm, host, run_suite_dict):
    def cell(folder, **params):
        return parse_suite(chat_suite(folder, **params), "s.toml").cells[0]

    chat, plain = cell(chat_lm()), cell(chat_lm(), prompt_format="plain")
    assert chat.stream_params["prompt_format"] == "chat" == cell(chat_lm(), prompt_format="chat").stream_params["prompt_format"]
    assert plain.stream_params["prompt_format"] == "plain" and chat.config_hash != plain.config_hash
    # without a template plain is the only format: nothing recorded, the hash it had before prompt formats
    for folder in (tiny_causal_lm("llama"), None):
        s = chat_suite(folder) if folder else make_suite(["naive"], stream="algorithmic", stream_params={"tasks": ["reverse"]},
                                                       model={"d_model": 32, "n_layers": 1, "n_heads": 2, "causal": True, "max_len": 32})
        c = parse_suite(s, "s.toml").cells[0]
        assert "prompt_format" not in c.config()["stream_params"]
        s["streams"][0]["params"]["prompt_format"] = "plain"
        assert parse_suite(s, "s.toml").cells[0].config_hash == c.config_hash

    small = chat_suite(chat_lm(), n_train=8, n_test=2)
    _, t = run_suite_dict(small)
    row = t.cells.iloc[0]
    assert row["status"] == "ok", row["error"]
    assert '"prompt_format": "chat"' in row["stream_params"]
    assert row["run_id"] == parse_suite(small, "s.toml").cells[0].config_hash
    m = t.measurements
    assert set(m[(m.train_task == -1) & (m.eval_task == 0)].metric) >= {"acc", "exact_match", "loss"}  # zero-shot


@pytest.mark.parametrize("what, message", [
    ("drops", "drops the answer (an assistant's message renders without its content)"),
    ("no end", "closes the assistant's turn with no special token"),
    ("chat, no template", "prompt_format = 'chat' needs a chat template, and tokenizer '"),
    ("chat, bytes", "prompt_format = 'chat' needs a chat template, and tokenizer 'bytes' has none (clbench's own"),
])
def test_bad_chat_input_is_one_line_exit_2_and_writes_nothing(what, message, chat_lm, tiny_causal_lm, tmp_path, host, capsys):
    folder = {"drops": chat_lm(DROPS), "no end": chat_lm(NO_END)}.get(what, tiny_causal_lm("llama"))
    model = f'init = "{folder}"' if what != "chat, bytes" else "d_model = 32\nn_layers = 1\nn_heads = 2\ncausal = true\nmax_len = 32"
    fmt = ', prompt_format = "chat"' if what.startswith("chat") else ""
    path = tmp_path / "s.toml"
    path.write_text(f'name = "t"\nseeds = [0]\n[model]\n{model}\n[training]\nepochs = 1\n[[streams]]\nname = "algorithmic"\n'
                    f'params = {{ tasks = ["reverse"], n_train = 8, n_test = 2, length = 3, max_len = 32{fmt} }}\n'
                    '[[strategies]]\nname = "naive"\n')
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clbench: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    if what == "drops":  # the same from the tokenizer and from a stream built by hand
        with pytest.raises(UserError, match="drops the answer"):
            HFTextTokenizer.load(resolve(str(folder)), "chat")
        with pytest.raises(UserError, match="drops the answer"):
            preflight(parse_suite(chat_suite(folder), "s.toml"))


def test_generative_replay_reads_prompts_without_the_template_and_runs_on_chat_streams(chat_lm, run_suite_dict):
    from clbench.strategies.synthetic import decode_example

    folder = str(chat_lm())
    stream = algorithmic(tasks=["reverse"], n_train=6, n_test=2, length=3, tokenizer=folder, max_len=48)
    tok, ex = stream.tokenizer, stream.tasks[0].train
    assert tok.prompt_format == "chat"
    for i in range(len(ex)):  # what lamol and ssr show and ssr's demonstrations: the user's text, which encodes back
        prompt = decode_example(tok, ex, i)["prompt"]
        assert "Be brief." not in prompt and "assistant" not in prompt and prompt.startswith("rev")
        assert tok.encode_prompts([prompt])[0] == ex.x[i, : int(ex.start[i])].tolist()
    suite = chat_suite(folder, strategies=("lamol", {"name": "ssr", "params": {"shots": 1, "memory_size": 3, "clusters": 2}}),
                       tasks=["reverse", "sort"], n_train=12)
    _, t = run_suite_dict(suite)
    assert (t.cells.status == "ok").all(), t.cells.traceback.tolist()
    assert all("Be brief." not in e["prompt"] for s in t.cells.samples for r in json.loads(s) for e in r["examples"])


def test_a_mixed_stream_puts_its_generative_parts_in_the_chat_format_and_its_domains_as_text(chat_lm, host):
    from clbench.tasks.mixed import mixed

    folder = str(chat_lm())
    parts = [{"name": "corpus-builtin", "params": {"domains": ["synthetic-1"], "docs_per_domain": 6, "doc_chars": 300,
                                                   "max_len": 48}},
             {"name": "algorithmic", "params": {"tasks": ["reverse"], "n_train": 4, "n_test": 2, "length": 3, "max_len": 48}}]
    stream = mixed(parts, tokenizer=folder)
    assert stream.kinds == ("corpus", "generation") and stream.tokenizer.prompt_format == "chat"
    end = stream.tokenizer.tok.convert_tokens_to_ids("<|im_end|>")
    domain, task = stream.tasks
    assert end not in domain.train.x.tolist()[0]  # a text domain is plain text
    assert all(int(task.train.x[i, int(task.train.lengths[i]) - 1]) == end for i in range(len(task.train)))  # answers end their turn
    parts[1]["params"]["prompt_format"] = "plain"
    assert mixed(parts, tokenizer=folder).tokenizer.prompt_format == "plain"
