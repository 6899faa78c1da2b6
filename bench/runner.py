"""The cell runner: build a cell's stream and model, train through the tasks with the
training-loop hooks, and evaluate on every task before training and after each task.

One call of :func:`run_cell` gives a :class:`CellResult` (the cell's rows); it never raises for
a failing plugin or a diverging loss: those become ``status = "failed"`` / ``"diverged"``.
"""

from __future__ import annotations

import json
import math
import platform
import resource
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .errors import UserError
from .backbones import check_stream, is_pretrained, load_into, resolve
from .model import Transformer
from .host import firstresult_conflicts, get_host, new_cell_manager
from .suite import Cell

from clbench.tasks import Batch, Stream, Task
from clbench.tasks.batching import batch_indices


class Diverged(Exception):
    """The training loss became NaN or infinite."""


@dataclass
class CellResult:
    """What a cell produced: its ``cells`` row and its ``measurements`` rows."""

    cell: dict[str, Any]
    measurements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.cell["status"]


class CellContext:
    """What training-loop hooks see of the running cell.

    Attributes: ``cell`` (the :class:`~clbench.suite.Cell`), ``stream``, ``model``, ``device``,
    ``task_index`` (position of the current task), ``task`` (the current :class:`Task`),
    ``optimizer`` (rebuilt for every task), ``generator`` (the cell's seeded torch generator),
    ``rng`` (a seeded numpy generator), ``class_mask`` (``(n_tasks, n_classes)`` bool in
    task-incremental scenarios, else None), ``seen`` (counters: examples, tokens).
    """

    def __init__(self, cell: Cell, stream: Stream, model: Transformer, device: torch.device, hook):
        self.cell = cell
        self.stream = stream
        self.model = model
        self.device = device
        self.hook = hook
        self.task_index = -1
        self.task: Task | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.generator = torch.Generator().manual_seed(cell.seed)
        self.rng = np.random.default_rng(cell.seed)
        mask = stream.class_mask()
        self.class_mask = None if mask is None else mask.to(device)
        self.steps_in_task = 0
        self.info: dict[str, Any] = {}  # strategies may report numbers here (e.g. buffer size)

    # helpers strategies use -------------------------------------------------------------------
    def logits(self, batch: Batch, model: torch.nn.Module | None = None, masked: bool = True) -> torch.Tensor:
        """Logits of ``batch`` (masked to each example's task in task-incremental scenarios,
        unless ``masked`` is False: LwF distils the heads of earlier tasks)."""
        model = model or self.model
        x, lengths = batch.x, batch.lengths
        if self.stream.input_kind == "tokens" and x.shape[1] > 1:
            n = int(lengths.max())
            x = x[:, :n]
        mask = None if self.class_mask is None or not masked else self.class_mask[batch.t]
        return model(x, lengths, mask)

    def loss(self, batch: Batch, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Cross-entropy of ``batch`` under the cell's masking rules."""
        return F.cross_entropy(self.logits(batch, model), batch.y)


def device_from(name: str, what: str = "training.device") -> torch.device:
    """The torch device ``name`` names (``auto``: CUDA when available); a one-line
    :class:`UserError` naming the setting ``what`` when it is not one, or is CUDA without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"{what} {name!r} is not a device torch knows") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{what} is {name!r} but CUDA is not available")
    return dev


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_strategies(cell: Cell, host=None) -> list[tuple[str, Any]]:
    """Instantiate the cell's strategy objects (one per combined strategy)."""
    host = host or get_host()
    return [(name, host.get("strategies", name).obj(**params)) for name, params in cell.strategy.parts]


def registration_order(strategies: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The cell's strategies in the order they are registered on its plugin manager: those that
    change the model's structure (``changes_model = True``, e.g. LoRA injecting adapters) last, so
    that their hooks run first (pluggy calls the latest registered first) and the others see the
    model they will train, whatever the order of the names in the suite. Otherwise the suite's
    order is kept."""
    return sorted(strategies, key=lambda ns: bool(getattr(ns[1], "changes_model", False)))


def build_stream(cell: Cell, host=None) -> Stream:
    host = host or get_host()
    entry = host.get("streams", cell.stream)
    stream = entry.obj(**cell.stream_params, order=cell.order_value)
    if not isinstance(stream, Stream):
        raise TypeError(f"stream factory {cell.stream!r} returned {type(stream).__name__}, not a Stream")
    if not stream.tasks:
        raise UserError(f"stream {cell.stream!r} has no tasks")
    return stream


@torch.inference_mode()
def evaluate(ctx: CellContext, task_index: int, task: Task) -> tuple[float, float]:
    """Accuracy and mean loss of the model on ``task``'s test split."""
    data = task.test
    bs = ctx.cell.training.eval_batch_size
    correct = torch.zeros((), dtype=torch.long, device=ctx.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for i in range(0, len(data), bs):
        batch = data[i : i + bs]
        logits = ctx.logits(batch)
        loss_sum += F.cross_entropy(logits.float(), batch.y, reduction="sum").double()
        correct += (logits.argmax(dim=1) == batch.y).sum()
    n = max(len(data), 1)
    return correct.item() / n, loss_sum.item() / n


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda-allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process-rss"


#: Distributions whose release can change a cell's numbers (or whether it runs), recorded in
#: each cell's ``versions``; "" where one is not installed.
RESULT_PACKAGES = (
    "torch", "numpy", "pandas", "scikit-learn", "scipy", "tokenizers", "safetensors", "transformers",
    "peft", "triton", "avalanche-lib", "qpsolvers", "quadprog", "pyarrow",
)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return ""

    found = {"clbench": __version__, "python": platform.python_version()}
    found.update((dist, of(dist)) for dist in RESULT_PACKAGES)
    found["torch"] = torch.__version__  # the running one (a source build's may differ from its metadata)
    return json.dumps(found)


def cell_row(cell: Cell) -> dict[str, Any]:
    """A cell's ``cells`` row before it runs: :func:`run_cell` fills in the rest; the suite
    records it as it is (status ``failed``) for a cell whose worker process died."""
    return {
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
        "status": "running",
        "error": "",
        "traceback": "",
        "scenario": "",
        "tasks": "[]",
        "n_tasks": 0,
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "total_seconds": 0.0,
        "peak_memory_mb": float("nan"),
        "memory_kind": "",
        "trainable_params": 0,
        "total_params": 0,
        "buffer_size": 0,
        "examples_seen": 0,
        "tokens_seen": 0,
        "padding_fraction": float("nan"),
        "device": "",
        "threads": 0,
        "versions": versions(),
        "started_at": time.time(),
    }


def run_cell(
    cell: Cell,
    *,
    observers: Iterable[Any] = (),
    stream: Stream | None = None,
    host=None,
) -> CellResult:
    """Run one cell. ``observers`` are extra plugins for the cell's hooks (progress bars);
    ``stream`` may be passed in when it was already built (the suite builds each once)."""
    host = host or get_host()
    started = time.perf_counter()
    row = cell_row(cell)
    meas: list[dict[str, Any]] = []
    base = {
        "run_id": cell.run_id,
        "suite": cell.suite,
        "stream": cell.stream,
        "order": cell.order,
        "strategy": cell.strategy.label,
        "params": row["params"],
        "seed": cell.seed,
    }

    def record(train_task: int, eval_task: int, metric: str, value: float) -> None:
        meas.append({**base, "train_task": train_task, "eval_task": eval_task, "metric": metric, "value": float(value)})

    train_s = eval_s = 0.0
    threads = torch.get_num_threads()
    try:
        device = device_from(cell.training.device)
        row["device"] = str(device)
        if device.type == "cpu":  # the same count whatever runs the cell: same sums, same numbers
            torch.set_num_threads(cell.training.threads)
        row["threads"] = torch.get_num_threads()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stream = stream if stream is not None else build_stream(cell, host)
        row["scenario"] = stream.scenario
        row["tasks"] = json.dumps([t.name for t in stream.tasks])
        row["n_tasks"] = stream.n_tasks
        tasks = [
            Task(t.name, t.classes, t.train.to(device), t.test.to(device)) for t in stream.tasks
        ]

        backbone = resolve(cell.model.init) if is_pretrained(cell.model.init) else None
        if backbone is not None:
            check_stream(backbone, stream)
        torch.manual_seed(cell.seed)
        model = Transformer(
            cell.model,
            input_kind=stream.input_kind,
            input_dim=backbone.input_dim if backbone else stream.input_dim,  # a backbone may have extra ids ([MASK])
            n_classes=stream.n_classes,
        )
        if backbone is not None:
            load_into(model, backbone)
        model = model.to(device)
        row["total_params"] = model.n_parameters()

        pm = new_cell_manager()
        for name, obj in registration_order(make_strategies(cell, host)):
            pm.register(obj, name=f"strategy:{name}")
        conflicts = firstresult_conflicts(pm)
        if conflicts:
            hook, who = conflicts[0]
            raise UserError(
                f"strategies {' and '.join(who)} cannot be combined: both decide '{hook}'"
            )
        for i, obs in enumerate(observers):
            pm.register(obs, name=f"observer:{i}")
        hook = pm.hook
        ctx = CellContext(cell, stream, model, device, hook)
        ctx.tasks = tasks
        tcfg = cell.training
        ctx.info["progress_total_tasks"] = len(tasks)

        t0 = time.perf_counter()
        model.eval()
        for j, task in enumerate(tasks):
            hook.before_eval(cell=ctx, task=task)
            acc, loss = evaluate(ctx, j, task)
            record(-1, j, "acc", acc)
            record(-1, j, "loss", loss)
        eval_s += time.perf_counter() - t0

        examples_seen = 0
        tokens_seen = torch.zeros((), dtype=torch.long, device=device)
        padded_positions = torch.zeros((), dtype=torch.long, device=device)
        trainable = 0
        step = 0
        for i, task in enumerate(tasks):
            t0 = time.perf_counter()
            ctx.task_index, ctx.task = i, task
            model.train()
            hook.before_task(cell=ctx, task=task)
            data = hook.train_data(cell=ctx, task=task)
            data = task.train if data is None else data.to(device)
            params = hook.trainable_parameters(cell=ctx)
            params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
            trainable = max(trainable, sum(p.numel() for p in params))
            n = len(data)
            bs = tcfg.batch_size
            ctx.steps_in_task = tcfg.epochs * math.ceil(n / bs) if n else 0
            if n and params:
                ctx.optimizer = opt = make_optimizer(params, tcfg)
                for epoch in range(tcfg.epochs):
                    running = torch.zeros((), device=device)
                    batches = 0
                    for idx in batch_indices(data.lengths, bs, ctx.generator, tcfg.batching, tcfg.length_window):
                        batch = data[idx.to(device)]
                        batch = hook.train_batch(cell=ctx, batch=batch) or batch
                        logits = ctx.logits(batch)
                        loss = F.cross_entropy(logits, batch.y)
                        extra = [t for t in hook.loss_terms(cell=ctx, batch=batch, logits=logits, loss=loss) if t is not None]
                        total = loss + sum(extra) if extra else loss
                        opt.zero_grad(set_to_none=True)
                        total.backward()
                        hook.after_backward(cell=ctx, batch=batch)
                        if tcfg.grad_clip > 0:
                            torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
                        opt.step()
                        step += 1
                        detached = total.detach()
                        running += detached
                        batches += 1
                        examples_seen += len(batch)
                        tokens_seen += batch.lengths.sum()
                        # positions computed: token batches are trimmed to their longest sequence (ctx.logits)
                        padded_positions += batch.lengths.max() * len(batch) if stream.input_kind == "tokens" else batch.lengths.sum()
                        hook.after_step(cell=ctx, step=step, loss=detached)
                    if not bool(torch.isfinite(running)):
                        raise Diverged(f"loss is {running.item()} on task {i} ({task.name})")
                    # mean training loss (with the strategy's terms) of the epoch: eval_task = epoch
                    if batches:
                        record(i, epoch, "train_loss", running.item() / batches)
            hook.after_task(cell=ctx, task=task)
            train_s += time.perf_counter() - t0

            t0 = time.perf_counter()
            model.eval()
            for j, other in enumerate(tasks):
                hook.before_eval(cell=ctx, task=other)
                acc, loss = evaluate(ctx, j, other)
                record(i, j, "acc", acc)
                record(i, j, "loss", loss)
            eval_s += time.perf_counter() - t0

        row["status"] = "ok"
        row["trainable_params"] = trainable
        row["examples_seen"] = examples_seen
        row["tokens_seen"] = int(tokens_seen.item())
        pp = int(padded_positions.item())
        row["padding_fraction"] = 1.0 - row["tokens_seen"] / pp if pp else float("nan")
        row["buffer_size"] = int(ctx.info.get("buffer_size", 0))
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
    row["train_seconds"] = train_s
    row["eval_seconds"] = eval_s
    row["total_seconds"] = time.perf_counter() - started
    return CellResult(row, meas)
