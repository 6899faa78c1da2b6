"""The cell contract: what a strategy's hooks are handed, what they may raise, and which
combinations a cell refuses.

* :class:`CellContext` is the ``cell`` argument of every cell hook (docs/hooks.md).
* :class:`Diverged` (a loss became NaN or infinite) and :class:`WorkerDied` (an executor's worker
  process died) are the outcomes a cell records instead of raising;
  :class:`clbench.errors.UserError` from a hook fails the cell with its one line.
* :func:`cell_manager` builds a cell's plugin manager from its strategies and observers, and
  :func:`refuse` is the one place that decides whether a cell can run: the suite's preflight
  calls it before anything is written, and :func:`clbench.loop.run_cell` again when the cell starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pluggy
import torch

from . import hookspecs
from .errors import UserError
from .host import get_host, new_manager, register_checked
from .kinds import KINDS, kind_name, kind_of
from .models.backbones import check_stream, is_pretrained, resolve

if TYPE_CHECKING:  # pragma: no cover
    from .kinds import Kind
    from .config import CellConfig
    from clbench.tasks import Batch, Stream, Task


class Diverged(Exception):
    """The training loss became NaN or infinite: the cell is recorded as ``diverged``."""


@dataclass
class WorkerDied:
    """What an executor yields instead of ``fn(cell)`` when the process running ``cell`` died:
    the cell is recorded as ``failed`` with ``error``."""

    cell: Any
    error: str


@dataclass
class CellResult:
    """What a cell produced: its ``cells`` row (``row``) and its ``measurements`` rows
    (:mod:`clbench.results.schema` describes both)."""

    row: dict[str, Any]
    measurements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.row["status"]


class CellContext:
    """What cell hooks see of the running cell (their ``cell`` argument).

    The loop (:mod:`clbench.loop`) sets ``task_index``, ``task``, ``optimizer``, ``scaler`` and
    ``steps_in_task`` as it goes; strategies read them and may write ``info``.
    """

    config: CellConfig
    """The cell's configuration (:class:`clbench.config.CellConfig`): ``config.strategy``,
    ``config.model``, ``config.training``, ``config.seed``."""
    stream: Stream
    """The stream as built, its tasks on the CPU (``stream.union(k)`` for the training data of
    tasks ``0..k``)."""
    tasks: list[Task]
    """The stream's tasks with their examples on :attr:`device`: what the loop trains and
    evaluates on."""
    model: torch.nn.Module
    """The network being trained (a strategy may wrap or replace its layers in ``before_task``)."""
    kind: Kind
    """The stream's kind of task (:mod:`clbench.kinds`): the model's outputs, the loss of a batch
    and the evaluation of a task."""
    device: torch.device
    """Where the model and :attr:`tasks` are."""
    task_index: int
    """Position of the task being trained (-1 before the first)."""
    task: Task | None
    """The task being trained (None before the first)."""
    optimizer: torch.optim.Optimizer | None
    """The optimizer of the current task, rebuilt for every task after ``trainable_parameters``."""
    scaler: torch.amp.GradScaler | None
    """The loss scaler of the current task when ``training.precision`` is ``fp16``, else None."""
    steps_in_task: int
    """Optimizer steps the current task will take (0 when it trains no parameter)."""
    generator: torch.Generator
    """The cell's seeded torch generator (batch order, memory samples)."""
    rng: np.random.Generator
    """The cell's seeded numpy generator (memories, Fisher samples)."""
    class_mask: torch.Tensor | None
    """``(n_tasks, n_classes)`` bool on :attr:`device`: the classes of each task, in
    task-incremental streams; None otherwise."""
    info: dict[str, Any]
    """What a strategy reports for the cell's row: ``buffer_size``, and ``samples`` (examples it wrote,
    :func:`clbench.strategies.synthetic.record`)."""
    recorded: list[tuple[int, int, str, float]]
    """Rows a strategy added to the cell's ``measurements`` with :meth:`record`, not yet written."""
    hook: pluggy.HookRelay
    """The cell's hooks, as the loop calls them (``cell.hook.after_step(...)``)."""

    def __init__(self, config: CellConfig, stream: Stream, model: torch.nn.Module, device: torch.device,
                 hook: pluggy.HookRelay | None = None, tasks: list[Task] | None = None):
        self.config = config
        self.stream = stream
        self.tasks = list(stream.tasks) if tasks is None else tasks
        self.model = model
        self.kind = kind_of(stream)
        self.device = device
        self.hook = hook if hook is not None else cell_manager([]).hook
        self.task_index = -1
        self.task = None
        self.optimizer = None
        self.scaler = None
        self.steps_in_task = 0
        self.generator = torch.Generator().manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        mask = stream.class_mask()
        self.class_mask = None if mask is None else mask.to(device)
        self.info = {}
        self.recorded = []

    # helpers strategies use -------------------------------------------------------------------
    def record(self, metric: str, value: float, eval_task: int = -1) -> None:
        """Add a row to the cell's ``measurements``: ``metric`` = ``value`` with ``train_task``
        the task being trained (:attr:`task_index`, -1 before the first) and ``eval_task`` as
        given (-1: not a task's; ``moe-lora`` puts the expert there, as ``train_loss`` puts the
        epoch). Use a metric name of your own: ``acc`` and the task's scores belong to the
        evaluation. The loop writes the rows after each evaluation of every task."""
        self.recorded.append((self.task_index, int(eval_task), str(metric), float(value)))

    def logits(self, batch: Batch, model: torch.nn.Module | None = None, masked: bool = True) -> torch.Tensor:
        """The outputs of ``model`` (default: the cell's) for ``batch``, as the task's kind gives
        them: class logits masked to each example's task in task-incremental scenarios (unless
        ``masked`` is False: LwF distils the heads of earlier tasks)."""
        return self.kind.logits(self, batch, model or self.model, masked)

    def loss(self, batch: Batch, model: torch.nn.Module | None = None) -> torch.Tensor:
        """The task's loss of ``batch`` (cross-entropy under the cell's masking rules)."""
        return self.kind.loss(self, batch, self.logits(batch, model))


# --------------------------------------------------------------------------------------------
# A cell's plugin manager, and what it refuses
# --------------------------------------------------------------------------------------------


def strategy_order(strategies: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The cell's strategies in the order they are registered on its plugin manager: those that
    change the model's structure (``changes_model = True``, e.g. LoRA injecting adapters) last, so
    that their hooks run first (pluggy calls the latest registered first) and the others see the
    model they will train, whatever the order of the names in the suite. Otherwise the suite's
    order is kept."""
    return sorted(strategies, key=lambda ns: bool(getattr(ns[1], "changes_model", False)))


def cell_manager(strategies: list[tuple[str, Any]], observers: Iterable[Any] = ()) -> pluggy.PluginManager:
    """A cell's plugin manager: its strategy objects (``(name, object)`` pairs, in
    :func:`strategy_order`) and its observers, each checked to implement only cell hooks."""
    pm = new_manager(hookspecs.CellSpecs)
    for name, obj in strategy_order(strategies):
        register_checked(pm, obj, f"strategy:{name}", f"strategy '{name}'")
    for i, obs in enumerate(observers):
        register_checked(pm, obs, f"observer:{i}", f"observer {type(obs).__name__}")
    return pm


def make_strategies(config: CellConfig) -> list[tuple[str, Any]]:
    """Instantiate the cell's strategy objects (one per combined strategy)."""
    host = get_host()
    return [(name, host.get("strategies", name).obj(**params)) for name, params in config.strategy.parts]


def firstresult_conflicts(pm: pluggy.PluginManager) -> list[tuple[str, list[str]]]:
    """``firstresult`` hooks implemented by more than one strategy of ``pm`` (observers, which
    answer None, do not count)."""
    out = []
    for name in hookspecs.CELL_HOOKS:
        caller = getattr(pm.hook, name)
        who = [pm.get_name(i.plugin) for i in caller.get_hookimpls()]
        who = [w.split(":", 1)[1] for w in who if w.startswith("strategy:")]
        if caller.spec.opts.get("firstresult") and len(who) > 1:
            out.append((name, who))
    return out


def served_kinds(strategy: Any, name: str) -> tuple[str, ...] | None:
    """The kinds of task (:data:`clbench.kinds.KINDS`) the strategy ``name`` declares it serves,
    by its class attribute ``serves`` (a tuple of kind names); None, for every kind, when it
    declares none. A name that is not a kind of task is a one-line :class:`UserError`."""
    serves = getattr(strategy, "serves", None)
    if serves is None:
        return None
    names = (serves,) if isinstance(serves, str) else tuple(serves)
    for kind in names:
        if kind not in KINDS:
            raise UserError(f"strategy '{name}' declares serves = {names!r}, but {kind!r} is not a kind of task "
                            f"(kinds: {', '.join(KINDS)})")
    return names


def refuse(config: CellConfig, stream: Stream, pm: pluggy.PluginManager) -> None:
    """Raise a one-line :class:`UserError` if the cell ``config`` cannot run on ``stream`` with
    the strategies registered on ``pm``, else return. In this order:

    1. two strategies decide the same ``firstresult`` hook ("cannot be combined");
    2. a strategy does not serve the stream's kind of task (its ``serves``, :func:`served_kinds`);
    3. the stream's positions exceed ``model.max_len``;
    4. a pretrained ``model.init`` that the stream does not feed what it was trained on, or a
       model that cannot do the stream's kind of task (a generative stream needs a causal model);
    5. a strategy's own ``check_cell`` hook refuses the combination.
    """
    for hook, who in firstresult_conflicts(pm):
        raise UserError(f"strategies {' and '.join(who)} cannot be combined: both decide '{hook}'")
    kind = kind_name(stream)
    for plugin_name, obj in pm.list_name_plugin():
        if not plugin_name.startswith("strategy:"):
            continue
        name = plugin_name.split(":", 1)[1]
        served = served_kinds(obj, name)
        if served is not None and kind not in served:
            who = "" if len(config.strategy.parts) == 1 else f"'{name}' "  # the error names the cell's strategy
            raise UserError(f"{who}serves {' and '.join(served)} streams only, and stream '{config.stream}' has "
                            f"{kind} tasks")
    if stream.max_len > config.model.max_len:
        raise UserError(
            f"model.max_len = {config.model.max_len} is below the {stream.max_len} positions "
            f"of stream '{config.stream}' (raise model.max_len, or lower the stream's max_len)"
        )
    if is_pretrained(config.model.init):
        check_stream(resolve(config.model.init), stream)
    kind_of(stream).check(config, stream)
    pm.hook.check_cell(config=config, stream=stream)
