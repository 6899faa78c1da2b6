"""The cell loop: set a cell up, then evaluate every task, and for each task train it and evaluate
every task again.

The loop is three named steps that :func:`run_cell` calls after its setup, and that tests and
benchmarks call on their own contexts:

* :func:`evaluate_tasks`: ``before_eval`` and the kind's evaluation, for every task;
* :func:`train_task`: ``before_task``, ``train_data``, ``trainable_parameters``, a new optimizer,
  the epochs of :func:`train_step` (or a strategy's own ``fit_task``), ``after_task``;
* :func:`train_step`: ``train_batch``, the kind's outputs and loss, ``loss_terms``, backward,
  ``after_backward``, clipping, the optimizer step, ``after_step``.

``training.precision`` = ``bf16`` or ``fp16`` runs the outputs, losses and evaluations under
autocast (:func:`autocast`); with ``fp16`` the loss is scaled by a ``GradScaler`` (one per task,
``cell.scaler``) and the gradients are unscaled before ``after_backward`` and clipping.

What a batch's outputs and loss are, and how a task is scored, belongs to the stream's kind
(:mod:`clbench.kinds`), never to the loop. :func:`run_cell` never raises for a failing plugin or a
diverging loss: those become ``status = "failed"`` / ``"diverged"`` in the cell's row.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import resource
import time
import traceback
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Iterable

import torch

from . import __version__
from .cell import CellContext, CellResult, Diverged, cell_manager, make_strategies, refuse
from .errors import UserError
from .host import get_host
from .kinds import kind_of
from .models.attention import recording
from .params import device_from
from .config import CellConfig

from clbench.results.schema import new_cell_row
from clbench.tasks import Batch, Stream, Task
from clbench.tasks.batching import batch_indices, computed_positions


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    """The optimizer ``training.optimizer`` names, over ``params``."""
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """What a cell's forward passes run in: autocast to ``precision`` (bf16, fp16), or nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def build_stream(config: CellConfig) -> Stream:
    """The cell's stream, built by its registered factory with the cell's parameters and order."""
    entry = get_host().get("streams", config.stream)
    stream = entry.obj(**config.stream_params, order=config.order_value)
    if not isinstance(stream, Stream):
        raise TypeError(f"stream factory {config.stream!r} returned {type(stream).__name__}, not a Stream")
    if not stream.tasks:
        raise UserError(f"stream {config.stream!r} has no tasks")
    if config.tasks is not None:  # the suite's `tasks`: some of the ordered stream's tasks
        if max(config.tasks) >= stream.n_tasks:
            raise UserError(f"tasks {list(config.tasks)}: the stream has {stream.n_tasks} tasks (positions 0..{stream.n_tasks - 1})")
        stream = stream.reorder(config.tasks)
    return stream


# --------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the loop counts while a cell trains (the cell's row reports it)."""

    steps: int = 0
    examples: int = 0
    tokens: torch.Tensor | int = 0  # positions trained on (a tensor on the device: no sync per step)
    positions: torch.Tensor | int = 0  # positions computed (padding included)
    trainable: int = 0  # the most parameters trained at once


def evaluate_tasks(cell: CellContext) -> list[dict[str, float]]:
    """Evaluate the model on every task's test split, in stream order: ``before_eval``, then the
    kind's scores of the task. The model is put in eval mode."""
    cell.model.eval()
    out = []
    for j, task in enumerate(cell.tasks):
        cell.hook.before_eval(cell=cell, task_index=j, task=task)
        with autocast(cell.config.training.precision, cell.device):
            out.append(cell.kind.evaluate(cell, j, task))
    return out


def train_step(cell: CellContext, batch: Batch, params: list[torch.nn.Parameter], tally: Tally | None = None) -> torch.Tensor:
    """One optimizer step of ``cell.optimizer`` on ``batch`` (``params`` are the parameters it
    updates, for clipping); returns the detached total loss."""
    hook, tcfg, scaler = cell.hook, cell.config.training, cell.scaler
    batch = hook.train_batch(cell=cell, batch=batch) or batch
    with autocast(tcfg.precision, cell.device):
        logits = cell.logits(batch)
        loss = cell.kind.loss(cell, batch, logits)
        extra = [t for t in hook.loss_terms(cell=cell, batch=batch, logits=logits, loss=loss) if t is not None]
        total = loss + sum(extra) if extra else loss
    cell.optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        total.backward()
    else:  # fp16: a scaled loss, gradients unscaled before anything looks at them
        scaler.scale(total).backward()
        scaler.unscale_(cell.optimizer)
    hook.after_backward(cell=cell, batch=batch)
    if tcfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
    if scaler is None:
        cell.optimizer.step()
    else:  # skips the step when a gradient is not finite, and adapts the scale
        scaler.step(cell.optimizer)
        scaler.update()
    detached = total.detach()
    if tally is not None:
        tally.steps += 1
        tally.examples += len(batch)
        tally.tokens = tally.tokens + batch.lengths.sum()
        tally.positions = tally.positions + computed_positions(batch.lengths, trimmed=cell.stream.input_kind == "tokens")
    hook.after_step(cell=cell, step=tally.steps if tally is not None else 0, loss=detached)
    return detached


def train_task(cell: CellContext, index: int, task: Task, tally: Tally | None = None,
               record: Callable[[int, float], None] | None = None) -> None:
    """Train on the ``index``-th task: its hooks, a new optimizer over the trainable
    parameters, and ``training.epochs`` passes of :func:`train_step` over the task's training
    data (or what ``train_data`` returned) in the batches of ``training.batching``. ``record``
    gets each epoch's mean training loss. Raises :class:`Diverged` when an epoch's loss is not
    finite."""
    hook, tcfg = cell.hook, cell.config.training
    tally = tally if tally is not None else Tally()
    cell.task_index, cell.task = index, task
    cell.model.train()
    hook.before_task(cell=cell, task=task)
    data = hook.train_data(cell=cell, task=task)
    data = task.train if data is None else data.to(cell.device)
    params = hook.trainable_parameters(cell=cell)
    params = [p for p in (cell.model.parameters() if params is None else params) if p.requires_grad]
    tally.trainable = max(tally.trainable, sum(p.numel() for p in params))
    n, bs = len(data), tcfg.batch_size
    cell.steps_in_task = tcfg.epochs * math.ceil(n / bs) if n and params else 0
    if n and params:
        cell.optimizer = make_optimizer(params, tcfg)
        cell.scaler = torch.amp.GradScaler(cell.device.type) if tcfg.precision == "fp16" else None
        if not hook.fit_task(cell=cell, task=task, data=data):
            for epoch in range(tcfg.epochs):
                running = torch.zeros((), device=cell.device)
                batches = 0
                for idx in batch_indices(data.lengths, bs, cell.generator, tcfg.batching, tcfg.length_window):
                    running += train_step(cell, data[idx.to(cell.device)], params, tally)
                    batches += 1
                if not bool(torch.isfinite(running)):
                    raise Diverged(f"loss is {running.item()} on task {index} ({task.name})")
                if batches and record is not None:  # the mean loss (with the strategies' terms) of the epoch
                    record(epoch, running.item() / batches)
    hook.after_task(cell=cell, task=task)


# --------------------------------------------------------------------------------------------
# A whole cell
# --------------------------------------------------------------------------------------------


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda-allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process-rss"


#: Distributions whose release can change a cell's numbers (or whether it runs), recorded in
#: each cell's ``versions``; "" where one is not installed.
RESULT_PACKAGES = (
    "torch", "numpy", "pandas", "scikit-learn", "scipy", "tokenizers", "safetensors", "transformers",
    "peft", "triton", "avalanche-lib", "qpsolvers", "quadprog", "pyarrow", "rouge-score", "rouge",
)


def versions() -> str:
    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return ""

    found = {"clbench": __version__, "python": platform.python_version()}
    found.update((dist, of(dist)) for dist in RESULT_PACKAGES)
    found["torch"] = torch.__version__  # the running one (a source build's may differ from its metadata)
    return json.dumps(found)


def cell_row(cell: CellConfig) -> dict[str, Any]:
    """A cell's ``cells`` row before it runs: :func:`run_cell` fills in the rest; the suite
    records it as it is (status ``failed``) for a cell whose worker process died."""
    return new_cell_row({
        "run_id": cell.run_id,
        "config_hash": cell.config_hash,
        "suite": cell.suite,
        "stream": cell.stream,
        "stream_params": json.dumps(cell.stream_params, sort_keys=True),
        "order": cell.order,
        "strategy": cell.strategy.label,
        "strategies": json.dumps([n for n, _ in cell.strategy.parts]),
        "params": json.dumps(cell.strategy.to_json(), sort_keys=True),
        "seed": cell.seed,
        "model": json.dumps(asdict(cell.model), sort_keys=True),
        "training": json.dumps(asdict(cell.training), sort_keys=True),
        "config": json.dumps(cell.config(), sort_keys=True),
        "versions": versions(),
        "started_at": time.time(),
    })


def build_model(config: CellConfig, stream: Stream) -> torch.nn.Module:
    """The cell's model for ``stream``, as its kind builds it, seeded with the cell's seed (and
    loaded from its pretrained ``model.init``)."""
    return kind_of(stream).build_model(config, stream)


def run_cell(
    cell: CellConfig,
    *,
    observers: Iterable[Any] = (),
    stream: Stream | None = None,
    on_evaluated: Callable[[int, list[dict[str, float]]], None] | None = None,
) -> CellResult:
    """Run one cell. ``observers`` are extra plugins for the cell's hooks (progress bars);
    ``stream`` may be passed in when it was already built (the suite builds each once);
    ``on_evaluated(train_task, scores)`` is told each evaluation of every task as it ends
    (``clbench tune`` reports it to Ray Tune's scheduler)."""
    started = time.perf_counter()
    row = cell_row(cell)
    meas: list[dict[str, Any]] = []
    base = {k: row[k] for k in ("run_id", "suite", "stream", "order", "strategy", "params", "seed")}

    def record(train_task: int, eval_task: int, metric: str, value: float) -> None:
        meas.append({**base, "train_task": train_task, "eval_task": eval_task, "metric": metric, "value": float(value)})

    def evaluate(after: int) -> float:
        t0 = time.perf_counter()
        scores = evaluate_tasks(ctx)
        for j, task_scores in enumerate(scores):
            for metric, value in task_scores.items():
                record(after, j, metric, value)
        with autocast(ctx.config.training.precision, ctx.device):
            stream_scores = ctx.kind.evaluate_stream(ctx)
        for metric, value in stream_scores.items():  # not a task's: eval_task -1
            record(after, -1, metric, value)
        for row in ctx.recorded:  # what strategies recorded (cell.record) since the last evaluation
            record(*row)
        ctx.recorded.clear()
        seconds = time.perf_counter() - t0
        if on_evaluated is not None:
            on_evaluated(after, scores)
        return seconds

    train_s = eval_s = 0.0
    threads = torch.get_num_threads()
    recorded = contextlib.ExitStack()
    used = recorded.enter_context(recording())  # the attention implementations the cell runs
    try:
        device = device_from(cell.training.device)
        row["device"] = str(device)
        if device.type == "cpu":  # the same count whatever runs the cell: same sums, same numbers
            torch.set_num_threads(cell.training.threads)
        row["threads"] = torch.get_num_threads()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stream = stream if stream is not None else build_stream(cell)
        row["scenario"] = stream.scenario
        row["tasks"] = json.dumps([t.name for t in stream.tasks])
        row["n_tasks"] = stream.n_tasks
        tasks = [replace(t, train=t.train.to(device), test=t.test.to(device)) for t in stream.tasks]
        model = build_model(cell, stream).to(device)
        row["total_params"] = model.n_parameters()

        pm = cell_manager(make_strategies(cell), observers)
        refuse(cell, stream, pm)
        ctx = CellContext(cell, stream, model, device, pm.hook, tasks)
        tally = Tally(tokens=torch.zeros((), dtype=torch.long, device=device),
                      positions=torch.zeros((), dtype=torch.long, device=device))

        eval_s += evaluate(-1)
        for i, task in enumerate(tasks):
            t0 = time.perf_counter()
            train_task(ctx, i, task, tally, record=lambda epoch, loss, i=i: record(i, epoch, "train_loss", loss))
            train_s += time.perf_counter() - t0
            eval_s += evaluate(i)

        row["status"] = "ok"
        row["trainable_params"] = tally.trainable
        row["examples_seen"] = tally.examples
        row["tokens_seen"] = int(tally.tokens.item())
        computed = int(tally.positions.item())
        row["padding_fraction"] = 1.0 - row["tokens_seen"] / computed if computed else float("nan")
        row["buffer_size"] = int(ctx.info.get("buffer_size", 0))
        row["samples"] = json.dumps(ctx.info.get("samples", []))
        row["peak_memory_mb"], row["memory_kind"] = _peak_memory_mb(device)
    except Diverged as exc:
        row["status"], row["error"] = "diverged", str(exc)
    except UserError as exc:  # a plugin refusing this cell: the cell fails, the suite goes on
        row["status"] = "failed"
        row["error"] = f"strategy '{cell.strategy.label}': {exc}".splitlines()[0]
        row["traceback"] = traceback.format_exc()
    except Exception as exc:  # a failing plugin: record it, the suite goes on
        row["status"] = "failed"
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        row["traceback"] = traceback.format_exc()
    finally:
        torch.set_num_threads(threads)
        recorded.close()
    row["attention"] = ",".join(sorted(used))
    row["train_seconds"] = train_s
    row["eval_seconds"] = eval_s
    row["total_seconds"] = time.perf_counter() - started
    return CellResult(row, meas)
