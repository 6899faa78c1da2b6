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
``max_new_tokens`` of 50, its ``generation_max_length``), and clbench's whole evaluation of each
task (``Generation.evaluate``: the teacher-forced loss and the task's score) is timed and its
scores shown. With ``--device cuda`` clbench also trains with ``attn_implementation="sdpa"`` in
the same model, against our Triton kernels.

``--model`` takes a real model instead of the random Llama (``smollm2``: SmolLM2-135M-Instruct,
or any ``model.init``: a Hugging Face folder, a ``.gguf`` file); ``--precision fp32,bf16`` runs each side in each precision (``training.precision``
for clbench, ``TrainingArguments(bf16=True)`` or ``fp16=True`` for the Trainer);
``--sides clbench`` runs clbench only.

Compute: in each side's process, after its first run's clock has stopped, every training step is
run again (the same batches, forward and backward of the same loss, no optimizer step) under
``torch.utils.flop_counter.FlopCounterMode``: that side's own count of the work it did (matrix
products and attention, 2 FLOPs per multiply-add). The driver measures the device's peak in the
same run: the best of a few square matrix products (2048² on a CPU) in each precision, on
``--threads`` torch threads, before and after the sides. The table shows each side's GFLOP/s and
its fraction of the peak of the precision it ran in, and the same for the "useful" work: the
smallest count of any side (the same training with the least work), over that side's time.
``--no-flops`` skips the counting and the peak.

    python benchmarks/lm_finetune.py [--data-dir ../shared/data/CL_Benchmark] [--steps 25]
        [--threads 1] [--vocab 32000] [--device cpu|cuda] [--model smollm2] [--precision fp32,bf16] [--no-flops]
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


# -- compute: FLOPs counted, and the device's peak ---------------------------------------------------

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def flop_counter():
    """torch's ``FlopCounterMode``, taught the CPU's fused attention kernel (what
    ``scaled_dot_product_attention`` runs on a CPU, absent from torch's table) with torch's own
    formulas for its GPU kernels: the full score matrix, causal or not, and in the backward pass
    its recomputation. Matrix products count 2 FLOPs per multiply-add; elementwise work is not
    counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    def forward(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def backward(grad, q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad, q, k, v)

    aten = torch.ops.aten
    mapping = {getattr(aten, name): fn for name, fn in (("_scaled_dot_product_flash_attention_for_cpu", forward),
                                                        ("_scaled_dot_product_flash_attention_for_cpu_backward", backward))
               if hasattr(aten, name)}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def by_op(counter) -> tuple[int, dict[str, int]]:
    """The counter's total and its FLOPs per aten operation (in the side's JSON, not printed)."""
    return counter.get_total_flops(), {str(op).split(".", 1)[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}


def peak_gflops(precisions: list[str], threads: int, device: str, repeats: int = 5) -> dict[str, float]:
    """The device's peak in each precision, GFLOP/s: the fastest of ``repeats`` products of two
    square matrices (2048² on a CPU, 8192² on a GPU) on ``threads`` torch threads (the sides')."""
    import torch

    dev = torch.device(device)
    n, inner = (8192, 10) if dev.type == "cuda" else (2048, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {}
    try:
        for p in precisions:
            g = torch.Generator(device="cpu").manual_seed(0)
            a, b = (torch.randn(n, n, generator=g).to(device=dev, dtype=getattr(torch, DTYPES[p])) for _ in range(2))
            c = torch.empty_like(a)
            torch.mm(a, b, out=c)  # warm: the first call's allocations and dispatch
            best = float("inf")
            for _ in range(repeats):
                _sync(dev)
                t0 = time.perf_counter()
                for _ in range(inner):
                    torch.mm(a, b, out=c)
                _sync(dev)
                best = min(best, (time.perf_counter() - t0) / inner)
            out[p] = 2 * n**3 / best / 1e9
            del a, b, c
    finally:
        torch.set_num_threads(before)
    return out


# -- the sides (each in its own process) -----------------------------------------------------------


def side_clbench(args) -> dict:
    import torch
    from dataclasses import replace

    from clbench import hookimpl
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
                     "batching": args.batching, "device": args.device, "eval_batch_size": args.eval_batch, "threads": args.threads,
                     "precision": args.precision},
        "streams": [{"name": "cl-prompts", "params": {"max_len": args.max_len, "n_train": args.steps * args.batch, "n_test": args.eval_n}}],
        "strategies": [{"name": "seq-lora", "params": LORA}],
    }
    cell = parse_suite(suite, "lm_finetune").cells[0]
    device = torch.device(args.device)
    stream = build_stream(cell)
    torch.manual_seed(0)
    model = load_causal_lm(resolve(str(args.model_dir)), attn_implementation=args.attn).to(device)
    trained = []  # (task, batch) of every step as it was trained, for the FLOP count after the clock stops

    class Recorder:
        @hookimpl
        def after_backward(self, cell, batch):
            trained.append((cell.task_index, batch))

    pm = cell_manager(make_strategies(cell), observers=[Recorder()] if args.count_flops else [])
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
           "increase_mb": peak - before, "padding": 1 - int(tally.tokens) / int(tally.positions), "attn": model.attn_implementation,
           "precision": ctx.precision}
    if args.count_flops:
        out["flops"], out["flops_by_op"] = count_clbench(ctx, trained)
    if args.attn == "clbench" and args.batching == "length" and not args.skip_eval:
        out["scores"] = scores(ctx)
        out["eval"] = evaluate(ctx, args)
        if args.model is None:
            from clbench.strategies.lora import lora_layers

            for layer in lora_layers(model):  # the base model: it has not learnt to stop
                layer.active = []
            out["eval_base"] = evaluate(ctx, args)
    return out


def count_clbench(ctx, trained: list) -> tuple[int, dict[str, int]]:
    """The FLOPs of clbench's training: every recorded step's outputs, loss (with the strategies'
    terms) and backward pass, as ``train_step`` computes them, without the optimizer step. FLOPs
    depend on the batches' shapes and on which parameters train, not on their values; SeqLoRA
    trains the same adapter in every task."""
    from clbench.loop import autocast

    ctx.model.train()
    counter = flop_counter()
    with counter:
        for i, batch in trained:
            ctx.task_index, ctx.task = i, ctx.tasks[i]
            kind = ctx.kind
            with autocast(ctx.precision, ctx.device):
                logits = kind.logits(ctx, batch, ctx.model)
                loss = kind.loss(ctx, batch, logits)
                extra = [t for t in ctx.hook.loss_terms(cell=ctx, batch=batch, logits=logits, loss=loss) if t is not None]
                total = loss + sum(extra) if extra else loss
            total.backward()
            ctx.model.zero_grad(set_to_none=True)
    _sync(ctx.device)
    return by_op(counter)


def scores(ctx) -> dict:
    """clbench's evaluation of every task as a cell runs it (``Generation.evaluate`` under the
    cell's precision): its time, and each task's score and loss."""
    from clbench.loop import evaluating

    ctx.model.eval()
    _sync(ctx.device)
    t0 = time.perf_counter()
    per_task = []
    for j, task in enumerate(ctx.tasks):
        with evaluating(ctx):
            per_task.append(ctx.kind.evaluate(ctx, j, task))
    _sync(ctx.device)
    return {"seconds": time.perf_counter() - t0, "examples": sum(len(t.test) for t in ctx.tasks),
            "acc": [r["acc"] for r in per_task], "loss": [r["loss"] for r in per_task]}


def evaluate(ctx, args) -> dict:
    """The model's answers to every task's test prompts, twice: clbench's batched generation,
    and ``generate`` in file order with left padding and a fixed max_new_tokens."""
    from clbench.kinds import Generation
    from clbench.loop import evaluating

    ctx.model.eval()
    ctx.stream.tokenizer.tok.padding_side = "left"
    times: dict[str, list[float]] = {"clbench": [], "generate": []}
    answers = {}
    for _ in range(2):  # alternately, twice each: the faster of each pair is kept
        for name, fn in (("clbench", lambda: [Generation().answers(ctx, task)[0] for task in ctx.tasks]),
                         ("generate", lambda: _generate_file_order(ctx, args))):
            _sync(ctx.device)
            t0 = time.perf_counter()
            with evaluating(ctx):
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
    model = tf.AutoModelForCausalLM.from_pretrained(str(args.model_dir), attn_implementation="sdpa", dtype=torch.float32).to(device)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["q_proj", "v_proj"]))
    def step(x, lengths):
        mask = (torch.arange(x.shape[1], device=device)[None, :] < lengths[:, None]).long()
        model(input_ids=x, attention_mask=mask, labels=x).loss.backward()
        model.zero_grad(set_to_none=True)

    warm_up(step, device, args.max_len, args.batch)
    seen = {"tokens": 0, "positions": 0}
    collate = tf.DataCollatorForSeq2Seq(hf_tok, padding=True, label_pad_token_id=-100)
    trained = []  # every batch as collated, for the FLOP count after the clock stops

    def counting(features):
        batch = collate(features)
        seen["tokens"] += int(batch["attention_mask"].sum())
        seen["positions"] += batch["attention_mask"].numel()
        if args.count_flops:
            trained.append(dict(batch))
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
                dataloader_pin_memory=False, use_cpu=device.type == "cpu", bf16=args.precision == "bf16",
                fp16=args.precision == "fp16")
            result = tf.Trainer(model=model, args=targs, train_dataset=rows, data_collator=counting).train()
            losses.append(result.training_loss)
            steps += result.global_step
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = memory_peak(device)
    out = {"tokens": seen["tokens"], "seconds": seconds, "steps": steps, "losses": losses, "peak_mb": peak,
           "increase_mb": peak - before, "padding": 1 - seen["tokens"] / seen["positions"], "attn": "sdpa",
           "precision": args.precision}
    if args.count_flops:
        out["flops"], out["flops_by_op"] = count_trainer(model, trained, args.precision, device)
    return out


def count_trainer(model, trained: list[dict], precision: str, device) -> tuple[int, dict[str, int]]:
    """The FLOPs of the Trainer's training: every collated batch's forward pass with its labels
    (the model's loss over every position) and backward pass, under the autocast the Trainer
    uses for ``bf16``/``fp16``, without the optimizer step."""
    import torch

    dtype = getattr(torch, DTYPES[precision])
    model.train()
    counter = flop_counter()
    with counter:
        for batch in trained:
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
                loss = model(**batch).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
    _sync(device)
    return by_op(counter)


# -- the driver --------------------------------------------------------------------------------------


def run_side(args, side: str, attn: str = "clbench", batching: str = "length", skip_eval: bool = False,
             precision: str = "fp32", count_flops: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--attn", attn, "--batching", batching, "--model-dir", str(args.model_dir),
           "--precision", precision]
    cmd += ["--skip-eval"] if skip_eval else []
    cmd += ["--count-flops"] if count_flops else []
    cmd += ["--model", str(args.model)] if args.model else []
    for k in ("data_dir", "steps", "batch", "max_len", "threads", "device", "eval_n", "eval_batch", "eval_max_new"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{side} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(args, runs: dict[str, list[dict]], peaks: list[dict[str, float]]) -> None:
    """The median run of each side (by tokens/s); the ratios' range over the repeats, against the
    first row (the Trainer's, when it ran)."""
    def tps(r):
        return r["tokens"] / r["seconds"]

    rows = {name: sorted(rs, key=tps)[len(rs) // 2] for name, rs in runs.items()}
    first = next(iter(runs))
    base = rows[first]
    spread = {name: [tps(r) / tps(b) for r, b in zip(rs, runs[first])] for name, rs in runs.items()}
    mem = "peak CUDA MB" if args.device == "cuda" else "peak RSS MB"
    data = "CL_Benchmark" if (args.data_dir / TASKS[0] / "train.json").is_file() else "synthetic prompts (no CL_Benchmark folder)"
    model = f"model {args.model}" if args.model else f"{args.layers} layers, width {args.width}, vocabulary {args.vocab}"
    print(f"\n{data}; {model}; 3 tasks × {args.steps} steps of {args.batch}, ≤ {args.max_len} tokens; device {args.device}, "
          f"torch threads {args.threads}\n")
    print(f"| | precision | attention | steps | tokens | tokens/s | × {first} (range over {args.repeats}) | {mem} | "
          "training's increase | padding | train loss per task |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        lo, hi = min(spread[name]), max(spread[name])
        print(f"| {name} | {r['precision']} | {r['attn']} | {r['steps']} | {r['tokens']} | {tps(r):,.0f} | {tps(r) / tps(base):.2f} "
              f"({lo:.2f}–{hi:.2f}) | {r['peak_mb']:,.0f} | {r['increase_mb']:,.0f} | {r['padding']:.2f} | "
              f"{', '.join(f'{x:.3f}' for x in r['losses'])} |")
    report_compute(args, runs, rows, peaks)
    evaluated = {name: rs[0] for name, rs in runs.items() if "eval" in rs[0]}
    if not evaluated:
        return
    some = next(iter(evaluated.values()))
    print(f"\nevaluation after training: {some['eval']['examples']} test prompts, batches of {args.eval_batch}, "
          f"max_new_tokens {some['eval']['max_new']} (clbench, per task) or {args.eval_max_new} (generate)\n")
    print("| run | model | answers ended by the end token | generate (file order, left padding), examples/s | "
          "clbench (length-sorted), examples/s | × generate | clbench's answer is (the start of) generate's | "
          "clbench's whole evaluation (loss + score), examples/s | score per task | loss per task |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in evaluated.items():
        sc = r["scores"]
        whole = f"{sc['examples'] / sc['seconds']:.1f} | {', '.join(f'{a:.2f}' for a in sc['acc'])} | " \
                f"{', '.join(f'{x:.3f}' for x in sc['loss'])}"
        for what, e in (("after training", r["eval"]), ("base (adapters off)", r.get("eval_base"))):
            if e is None:
                continue
            print(f"| {name} | {what} | {e['ended']:.0%} | {e['examples'] / e['generate_s']:.1f} | "
                  f"{e['examples'] / e['clbench_s']:.1f} | {e['generate_s'] / e['clbench_s']:.2f} | {e['same']:.0%} | "
                  f"{whole if what == 'after training' else ' |  | '} |")


def report_compute(args, runs: dict[str, list[dict]], rows: dict[str, dict], peaks: list[dict[str, float]]) -> None:
    """Each row's counted GFLOP (from its first run: every repeat trains the same batches) over
    its time, against the peak of the precision it ran in; the same for the useful work."""
    counted = {name: rs[0]["flops"] for name, rs in runs.items() if rs[0].get("flops")}
    if not counted:
        return
    peak = {p: max(pk[p] for pk in peaks) for p in peaks[0]} if peaks else {}
    useful = min(counted.values())
    print(f"\ncompute: the work each side did (its own count) and the useful work (the least count, "
          f"{useful / 1e9:,.1f} GFLOP), per second of its training and as a fraction of the same precision's peak\n")
    print("| | precision | tokens/s | GFLOP counted | × useful | GFLOP/s | of peak | useful GFLOP/s | useful, of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        if name not in counted:
            continue
        f, pk = counted[name], peak.get(r["precision"])
        rate, urate = f / r["seconds"] / 1e9, useful / r["seconds"] / 1e9
        print(f"| {name} | {r['precision']} | {r['tokens'] / r['seconds']:,.0f} | {f / 1e9:,.1f} | {f / useful:.2f} | "
              f"{rate:,.1f} | {f'{rate / pk:.1%}' if pk else '–'} | {urate:,.1f} | {f'{urate / pk:.1%}' if pk else '–'} |")
    how = ("every training step run again after the clock stopped (the same batches, forward and backward of the same "
           "loss, no optimizer step) under torch.utils.flop_counter.FlopCounterMode: matrix products and attention, "
           "2 FLOPs per multiply-add, elementwise work, the optimizer and clipping not counted; GFLOP/s: that count over "
           "the row's training seconds")
    if args.device.startswith("cuda"):
        how += "; clbench's Triton attention kernels are not seen by the counter (its rows leave attention out)"
    print(f"\n(GFLOP counted: {how})")
    if peaks:
        size = "8192²" if args.device.startswith("cuda") else "2048²"
        each = "; ".join(f"{when} " + ", ".join(f"{p} {v:,.0f}" for p, v in pk.items()) for when, pk in zip(("before", "after"), peaks))
        print(f"(peak: the fastest of 5 products of two {size} matrices on {args.threads} torch thread(s), in this run "
              f"before and after the sides, GFLOP/s: {each}; the higher of the two is each precision's peak)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "CL_Benchmark")
    ap.add_argument("--model", help="a model.init: smollm2, a Hugging Face causal LM's folder or a .gguf file "
                                    "(default: a random Llama built here)")
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16, fp16 (each side runs in each)")
    ap.add_argument("--sides", default="trainer,clbench,random",
                    help="comma-separated: trainer (Trainer + peft), clbench, random (clbench with random batches)")
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
    ap.add_argument("--no-flops", action="store_true",
                    help="skip the FLOP count (each side's first run computes every step's forward and backward again) and the peak")
    ap.add_argument("--side", choices=("clbench", "trainer"), help=argparse.SUPPRESS)
    ap.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
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
    precisions = args.precision.split(",")
    wanted = args.sides.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:  # the folder clbench loads it from (a GGUF de-quantized once into its cache)
            from clbench.models.backbones import resolve

            args.model_dir = Path(resolve(args.model).folder).resolve()
        else:
            args.model_dir = Path(tmp) / "model"
            build_model(args.model_dir, args)
        load = os.getloadavg()[0]
        kinds = {"trainer": ("Trainer + peft", "trainer", "sdpa", "length"), "clbench": ("clbench", "clbench", "clbench", "length")}
        if args.device.startswith("cuda"):
            kinds["sdpa"] = ("clbench, SDPA inside the model", "clbench", "sdpa", "length")
            wanted.append("sdpa")
        else:
            kinds["random"] = ("clbench, random batches", "clbench", "clbench", "random")
        sides = {}
        for p in precisions:
            for k in wanted:
                if k in kinds:
                    label, *how = kinds[k]
                    sides[label if len(precisions) == 1 else f"{label}, {p}"] = (*how, p)
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        peak_precisions = ["fp32"] + [p for p in precisions if p != "fp32"]
        peaks = [] if args.no_flops else [peak_gflops(peak_precisions, args.threads, args.device)]
        for i in range(args.repeats):  # the sides alternate: a busy spell of the machine falls on each
            for name, (side, attn, batching, precision) in sides.items():
                runs[name].append(run_side(args, side, attn, batching, skip_eval=i > 0, precision=precision,
                                           count_flops=i == 0 and not args.no_flops))
        if peaks:
            peaks.append(peak_gflops(peak_precisions, args.threads, args.device))
        if args.device.startswith("cuda"):
            for name, rs in runs.items():
                if name.startswith("clbench") and "SDPA" not in name:
                    for r in rs:
                        r["attn"] = "clbench (Triton)"
        report(args, runs, peaks)
        print(f"\nload average (1 min) at the start and the end: {load:.1f}, {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
