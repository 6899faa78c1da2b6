"""LoRA fine-tuning and evaluation of a Hugging Face causal LM: clbench against a plain
transformers ``Trainer`` + peft loop, the code the O-LoRA and TRACE repositories run.

The model is a Llama built here (``--layers`` 4, ``--width`` 256, random weights, a byte-level BPE
tokenizer trained on the data, an embedding of ``--vocab`` rows as real LMs have: 32k for
Llama 2); the data, three CL_Benchmark tasks (dbpedia, amazon, agnews: ``train.json`` read
directly), ``--steps`` batches of ``--batch`` prompts per task (``sentence`` + "\\nAnswer:" → the
label text), at most ``--max-len`` tokens. Both sides train the same adapter (SeqLoRA: rank 8,
alpha 32, dropout 0.1 on q_proj and v_proj, O-LoRA's scripts' settings), task after task, with
Adam at a constant 1e-3 and gradient clipping at 1, on the same token ids:

* clbench: its loop's steps (``train_task``) on a generative stream, ``seq-lora``, batches of
  similar length (``batching = "length"``); logits only at the answer's positions;
* Trainer: ``get_peft_model`` + ``Trainer`` (``DataCollatorForSeq2Seq``, random batches padded
  to their longest, labels -100 on the prompt), one ``train()`` per task.

Each side runs in its own process (peak memory is the process's). Then, in clbench's process, the
trained model answers each task's ``--eval-n`` test prompts twice: clbench's batched generation
(``Generation.answers``: length-sorted batches, the task's ``max_new_tokens``) and
``model.generate`` as O-LoRA's evaluation calls it (file order, left padding, a fixed
``max_new_tokens`` of 50, its ``generation_max_length``). With ``--device cuda`` clbench also
trains with ``attn_implementation="sdpa"`` in the same model, against our Triton kernels.

    python benchmarks/lm_finetune.py [--data-dir ../shared/data/CL_Benchmark] [--steps 25]
        [--threads 1] [--vocab 32000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = ("TC/dbpedia", "SC/amazon", "TC/agnews")
LORA = {"rank": 8, "alpha": 32.0, "dropout": 0.1, "target_modules": ["q", "v"]}  # O-LoRA's adapter
ROOT = Path(__file__).resolve().parents[1]


def importable() -> None:
    """Make ``import clbench`` work from this checkout when clbench is not installed (a bare GPU
    machine): a temporary folder with ``clbench`` linked to ``bench/``."""
    try:
        import clbench  # noqa: F401
    except ImportError:
        shim = Path(tempfile.mkdtemp(prefix="clbench-shim-"))
        (shim / "clbench").symlink_to(ROOT / "bench")
        sys.path.insert(0, str(shim))


def read_tasks(data_dir: Path, n_train: int, n_test: int) -> list[tuple[str, list, list]]:
    """Each task's first ``n_train`` and ``n_test`` examples as (prompt, answer) pairs; seeded
    synthetic ones where the CL_Benchmark folder is missing (a machine without the data)."""
    if not (data_dir / TASKS[0] / "train.json").is_file():
        return synthetic_tasks(n_train, n_test)
    out = []
    for task in TASKS:
        split = {}
        for part, n in (("train", n_train), ("test", n_test)):
            recs = json.loads((data_dir / task / f"{part}.json").read_text(encoding="utf-8"))[:n]
            split[part] = [(f"{r['sentence'].strip()}\nAnswer:", r["label"]) for r in recs]
        out.append((task.split("/")[1], split["train"], split["test"]))
    return out


def synthetic_tasks(n_train: int, n_test: int) -> list[tuple[str, list, list]]:
    import random

    words = "the a of market team film city river game price song phone night storm school road".split()
    out = []
    for t, labels in enumerate((("World", "Sports", "Business"), ("positive", "negative"), ("Animal", "Plant", "Film", "Album"))):
        r = random.Random(t)
        pairs = []
        for _ in range(n_train + n_test):
            text = " ".join(r.choice(words) for _ in range(r.randint(10, 110)))
            pairs.append((f"Text: {text}\nAnswer:", labels[text.count("e") % len(labels)]))
        out.append((f"synthetic{t}", pairs[:n_train], pairs[n_train:]))
    return out


def warm_up(step, device, max_len: int, batch: int) -> None:
    """On a GPU, before the clock starts: a forward and backward pass at every length bucket our
    kernels are tuned for (their autotuning and compiling), padded and not, and CUDA's first
    calls; the same for both sides."""
    import torch

    if device.type != "cuda":
        return
    n = 16
    while True:
        n = min(n, max_len)
        for padded in (False, True):
            x = torch.randint(3, 100, (batch, n), device=device)
            lengths = torch.full((batch,), n, device=device)
            lengths[0] = max(2, n // 2) if padded else n
            step(x, lengths)
        if n == max_len:
            break
        n *= 2
    torch.cuda.synchronize(device)


def build_model(folder: Path, args) -> None:
    """A random Llama and a BPE tokenizer trained on the tasks' text, saved as a user's checkpoint."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = [p + " " + a for _, train, _ in read_tasks(args.data_dir, 5000, 0) for p, a in train]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=min(args.vocab, 8000), special_tokens=["<pad>", "</s>", "<s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    cfg = tf.LlamaConfig(vocab_size=max(args.vocab, len(fast) + 16), hidden_size=args.width, intermediate_size=args.width * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.width // 64, max_position_embeddings=2 * args.max_len,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)


def register_stream(host, args) -> None:
    from clbench import hookimpl
    from clbench.tasks.generative import TextTask, generative_stream, text_tokenizer

    def cl_prompts(tokenizer: str = "", max_len: int = 128, n_train: int = 200, n_test: int = 100, order=None):
        tasks = [TextTask(name, train, test, labels=tuple(sorted({a for _, a in train + test})))
                 for name, train, test in read_tasks(args.data_dir, n_train, n_test)]
        return generative_stream("cl-prompts", tasks, text_tokenizer(tokenizer), max_len=max_len, order=order)

    class Plugin:
        @hookimpl
        def register_streams(self, register):
            register("cl-prompts", cl_prompts, description="three CL_Benchmark tasks as prompts (benchmark)")

    if not host.pm.has_plugin("lm-finetune-benchmark"):
        host.register(Plugin(), name="lm-finetune-benchmark")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_start(device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    return _rss_mb()


def memory_peak(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the sides (each in its own process) -----------------------------------------------------------


def side_clbench(args) -> dict:
    import torch
    from dataclasses import replace

    from clbench.cell import CellContext, cell_manager, make_strategies, refuse
    from clbench.host import get_host
    from clbench.loop import Tally, build_stream, train_task
    from clbench.models.backbones import resolve
    from clbench.models.hf import load_causal_lm
    from clbench.suite import parse_suite

    host = get_host()
    register_stream(host, args)
    suite = {
        "name": "lm-finetune", "seeds": [0], "model": {"init": str(args.model_dir)},
        "training": {"epochs": 1, "batch_size": args.batch, "lr": 1e-3, "optimizer": "adam", "grad_clip": 1.0,
                     "batching": args.batching, "device": args.device, "eval_batch_size": args.eval_batch, "threads": args.threads},
        "streams": [{"name": "cl-prompts", "params": {"max_len": args.max_len, "n_train": args.steps * args.batch, "n_test": args.eval_n}}],
        "strategies": [{"name": "seq-lora", "params": LORA}],
    }
    cell = parse_suite(suite, "lm_finetune").cells[0]
    device = torch.device(args.device)
    stream = build_stream(cell)
    torch.manual_seed(0)
    model = load_causal_lm(resolve(str(args.model_dir)), attn_implementation=args.attn).to(device)
    pm = cell_manager(make_strategies(cell))
    refuse(cell, stream, pm)
    tasks = [replace(t, train=t.train.to(device), test=t.test.to(device)) for t in stream.tasks]
    ctx = CellContext(cell, stream, model, device, pm.hook, tasks)
    def step(x, lengths):
        model.lm_logits(model.hidden_states(x, lengths)).float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)

    warm_up(step, device, args.max_len, args.batch)
    tally = Tally(tokens=torch.zeros((), dtype=torch.long, device=device), positions=torch.zeros((), dtype=torch.long, device=device))
    losses = []
    before = memory_start(device)
    _sync(device)
    t0 = time.perf_counter()
    for i, task in enumerate(tasks):
        train_task(ctx, i, task, tally, record=lambda epoch, loss: losses.append(loss))
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = memory_peak(device)
    out = {"tokens": int(tally.tokens), "seconds": seconds, "steps": tally.steps, "losses": losses, "peak_mb": peak,
           "increase_mb": peak - before, "padding": 1 - int(tally.tokens) / int(tally.positions), "attn": model.attn_implementation}
    if args.attn == "clbench" and args.batching == "length" and not args.skip_eval:
        out["eval"] = evaluate(ctx, args)
        from clbench.strategies.lora import lora_layers

        for layer in lora_layers(model):  # the base model: it has not learnt to stop
            layer.active = []
        out["eval_base"] = evaluate(ctx, args)
    return out


def evaluate(ctx, args) -> dict:
    """The model's answers to every task's test prompts, twice: clbench's batched generation,
    and ``generate`` in file order with left padding and a fixed max_new_tokens."""
    from clbench.kinds import Generation

    ctx.model.eval()
    ctx.stream.tokenizer.tok.padding_side = "left"
    times: dict[str, list[float]] = {"clbench": [], "generate": []}
    answers = {}
    for _ in range(2):  # alternately, twice each: the faster of each pair is kept
        for name, fn in (("clbench", lambda: [Generation().answers(ctx, task)[0] for task in ctx.tasks]),
                         ("generate", lambda: _generate_file_order(ctx, args))):
            _sync(ctx.device)
            t0 = time.perf_counter()
            answers[name] = fn()
            _sync(ctx.device)
            times[name].append(time.perf_counter() - t0)
    ours, (theirs, ended) = answers["clbench"], answers["generate"]
    n = sum(len(t.test) for t in ctx.tasks)
    same = sum(b.startswith(a) for o, t in zip(ours, theirs) for a, b in zip(o, t))  # clbench stops sooner
    return {"examples": n, "clbench_s": min(times["clbench"]), "generate_s": min(times["generate"]), "same": same / n,
            "ended": ended / n, "max_new": [t.max_new_tokens for t in ctx.tasks]}


def _generate_file_order(ctx, args) -> tuple[list[list[str]], int]:
    """``generate`` as O-LoRA's evaluation calls it; the answers, and how many ended (end token)."""
    import torch

    tok = ctx.stream.tokenizer
    hf_tok, theirs, ended = tok.tok, [], 0
    for task in ctx.tasks:
        data = task.test
        prompts = [data.x[i, : int(data.start[i])].tolist() for i in range(len(data))]
        answers = []
        for b in range(0, len(prompts), args.eval_batch):
            batch = hf_tok.pad({"input_ids": prompts[b: b + args.eval_batch]}, return_tensors="pt").to(ctx.device)
            with torch.no_grad():
                gen = ctx.model.hf.generate(**batch, max_new_tokens=args.eval_max_new, do_sample=False, num_beams=1,
                                            pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
            gen = gen[:, batch["input_ids"].shape[1]:]
            ended += int((gen == tok.eos_id).any(dim=1).sum())
            answers += hf_tok.batch_decode(gen, skip_special_tokens=True)
        theirs.append(answers)
    return theirs, ended


def side_trainer(args) -> dict:
    import torch
    import transformers as tf
    from peft import LoraConfig, TaskType, get_peft_model

    from clbench.host import get_host
    from clbench.loop import build_stream
    from clbench.suite import parse_suite

    host = get_host()
    register_stream(host, args)
    suite = {"name": "lm-finetune", "seeds": [0], "model": {"init": str(args.model_dir)},
             "streams": [{"name": "cl-prompts", "params": {"max_len": args.max_len, "n_train": args.steps * args.batch, "n_test": 1}}],
             "strategies": [{"name": "naive"}]}
    stream = build_stream(parse_suite(suite, "lm_finetune").cells[0])  # the same token ids
    device = torch.device(args.device)
    hf_tok = tf.AutoTokenizer.from_pretrained(str(args.model_dir))
    model = tf.AutoModelForCausalLM.from_pretrained(str(args.model_dir), attn_implementation="sdpa").to(device)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["q_proj", "v_proj"]))
    def step(x, lengths):
        mask = (torch.arange(x.shape[1], device=device)[None, :] < lengths[:, None]).long()
        model(input_ids=x, attention_mask=mask, labels=x).loss.backward()
        model.zero_grad(set_to_none=True)

    warm_up(step, device, args.max_len, args.batch)
    seen = {"tokens": 0, "positions": 0}
    collate = tf.DataCollatorForSeq2Seq(hf_tok, padding=True, label_pad_token_id=-100)

    def counting(features):
        batch = collate(features)
        seen["tokens"] += int(batch["attention_mask"].sum())
        seen["positions"] += batch["attention_mask"].numel()
        return batch

    losses, steps = [], 0
    before = memory_start(device)
    _sync(device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for task in stream.tasks:
            d = task.train
            rows = [{"input_ids": d.x[i, : int(d.lengths[i])].tolist(), "attention_mask": [1] * int(d.lengths[i]),
                     "labels": [-100] * int(d.start[i]) + d.x[i, int(d.start[i]): int(d.lengths[i])].tolist()} for i in range(len(d))]
            targs = tf.TrainingArguments(
                output_dir=out, per_device_train_batch_size=args.batch, num_train_epochs=1, learning_rate=1e-3,
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=0,
                save_strategy="no", report_to=[], disable_tqdm=True, logging_strategy="no", remove_unused_columns=False,
                dataloader_pin_memory=False, use_cpu=device.type == "cpu")
            result = tf.Trainer(model=model, args=targs, train_dataset=rows, data_collator=counting).train()
            losses.append(result.training_loss)
            steps += result.global_step
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = memory_peak(device)
    return {"tokens": seen["tokens"], "seconds": seconds, "steps": steps, "losses": losses, "peak_mb": peak,
            "increase_mb": peak - before, "padding": 1 - seen["tokens"] / seen["positions"], "attn": "sdpa"}


# -- the driver --------------------------------------------------------------------------------------


def run_side(args, side: str, attn: str = "clbench", batching: str = "length", skip_eval: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--attn", attn, "--batching", batching, "--model-dir", str(args.model_dir)]
    cmd += ["--skip-eval"] if skip_eval else []
    for k in ("data_dir", "steps", "batch", "max_len", "threads", "device", "eval_n", "eval_batch", "eval_max_new"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(args, runs: dict[str, list[dict]]) -> None:
    """The median run of each side (by tokens/s); the ratios' range over the repeats."""
    def tps(r):
        return r["tokens"] / r["seconds"]

    rows = {name: sorted(rs, key=tps)[len(rs) // 2] for name, rs in runs.items()}
    base = rows["Trainer + peft"]
    spread = {name: [tps(r) / tps(b) for r, b in zip(rs, runs["Trainer + peft"])] for name, rs in runs.items()}
    mem = "peak CUDA MB" if args.device == "cuda" else "peak RSS MB"
    data = "CL_Benchmark" if (args.data_dir / TASKS[0] / "train.json").is_file() else "synthetic prompts (no CL_Benchmark folder)"
    print(f"\n{data}; {args.layers} layers, width {args.width}, vocabulary {args.vocab}; 3 tasks × {args.steps} steps of "
          f"{args.batch}, ≤ {args.max_len} tokens; device {args.device}, torch threads {args.threads}\n")
    print(f"| | attention | steps | tokens | tokens/s | × Trainer (range over {args.repeats}) | {mem} | training's increase "
          "| padding | train loss per task |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        lo, hi = min(spread[name]), max(spread[name])
        print(f"| {name} | {r['attn']} | {r['steps']} | {r['tokens']} | {tps(r):,.0f} | {tps(r) / tps(base):.2f} ({lo:.2f}–{hi:.2f}) | "
              f"{r['peak_mb']:,.0f} | {r['increase_mb']:,.0f} | {r['padding']:.2f} | {', '.join(f'{x:.3f}' for x in r['losses'])} |")
    r = runs["clbench"][0]
    print(f"\nevaluation: {r['eval']['examples']} test prompts, batches of {args.eval_batch}, max_new_tokens "
          f"{r['eval']['max_new']} (clbench, per task) or {args.eval_max_new} (generate)\n")
    print("| model | answers ended by the end token | generate (file order, left padding), examples/s | "
          "clbench (length-sorted), examples/s | × generate | clbench's answer is (the start of) generate's |")
    print("|---|---|---|---|---|---|")
    for what, e in (("after training", r["eval"]), ("base (adapters off)", r["eval_base"])):
        print(f"| {what} | {e['ended']:.0%} | {e['examples'] / e['generate_s']:.1f} | {e['examples'] / e['clbench_s']:.1f} | "
              f"{e['generate_s'] / e['clbench_s']:.2f} | {e['same']:.0%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "CL_Benchmark")
    ap.add_argument("--steps", type=int, default=25, help="optimizer steps per task (25 × 8 = 200 prompts)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=32000, help="embedding rows (the tokenizer has at most 8000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each side on a CPU")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating; the median is shown")
    ap.add_argument("--eval-n", type=int, default=100, help="test prompts per task")
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--eval-max-new", type=int, default=50, help="generate's fixed max_new_tokens (O-LoRA's scripts: 50)")
    ap.add_argument("--side", choices=("clbench", "trainer"), help=argparse.SUPPRESS)
    ap.add_argument("--attn", default="clbench", help=argparse.SUPPRESS)
    ap.add_argument("--batching", default="length", help=argparse.SUPPRESS)
    ap.add_argument("--skip-eval", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    importable()
    if args.side:
        import torch
        import warnings

        warnings.filterwarnings("ignore")
        torch.set_num_threads(args.threads)
        import peft  # noqa: F401 - both sides import the same libraries: their RSS starts alike
        import transformers  # noqa: F401

        print(json.dumps((side_clbench if args.side == "clbench" else side_trainer)(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.model_dir = Path(tmp) / "model"
        build_model(args.model_dir, args)
        load = os.getloadavg()[0]
        sides = {"Trainer + peft": ("trainer", "sdpa", "length"), "clbench": ("clbench", "clbench", "length")}
        if args.device.startswith("cuda"):
            sides["clbench, SDPA inside the model"] = ("clbench", "sdpa", "length")
        else:
            sides["clbench, random batches"] = ("clbench", "clbench", "random")
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for i in range(args.repeats):  # the sides alternate: a busy spell of the machine falls on each
            for name, (side, attn, batching) in sides.items():
                runs[name].append(run_side(args, side, attn, batching, skip_eval=i > 0))
        if args.device.startswith("cuda"):
            for r in runs["clbench"]:
                r["attn"] = "clbench (Triton)"
        report(args, runs)
        print(f"\nload average (1 min) at the start and the end: {load:.1f}, {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
