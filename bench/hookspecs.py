"""clbench's hook specifications: the whole plugin contract, in one file, in two classes.

* :class:`HostSpecs`, the **registration hooks**, run once on the host's plugin manager when
  clbench starts. Each is handed a ``register`` callback; calling it records a name, the object
  and which plugin supplied it. Built-in streams, strategies, metrics, reporters, executors and
  observers register through these same hooks.
* :class:`CellSpecs`, the **cell hooks**, run on a per-cell plugin manager that holds the cell's
  strategy objects (a cell may combine several) and observers (progress bars). They return values
  instead of mutating shared state. A hook marked ``firstresult`` is answered by at most one
  strategy of a cell: a combination in which two strategies implement the same ``firstresult``
  hook is refused before anything runs.

Each manager knows only its own class of specs, and a plugin that implements a hook its manager
does not know (a cell hook on a module registered with the host, a registration hook on a strategy
class) is refused when it is registered, with one line naming the hook (see docs/hooks.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from clbench.cell import CellContext
    from clbench.config import CellConfig
    from clbench.tasks import Batch, Examples, Stream, Task

hookspec = pluggy.HookspecMarker("clbench")
hookimpl = pluggy.HookimplMarker("clbench")


class HostSpecs:
    """Registration hooks: called once each, when the host first builds its registries."""

    @hookspec
    def register_streams(self, register: Callable) -> None:
        """Register stream factories.

        :param register: ``register(name, factory, description="")``. ``factory`` is called with
            the suite's stream parameters as keyword arguments (plus ``order``) and returns a
            :class:`clbench.tasks.Stream`. Its signature (annotations and defaults) is the
            parameter schema that suites are checked against.
        """

    @hookspec
    def register_strategies(self, register: Callable) -> None:
        """Register strategies.

        :param register: ``register(name, factory, description="")``. ``factory`` (usually a
            class) is called with the suite's strategy parameters as keyword arguments and returns
            an object whose methods implement cell hooks (decorated with ``clbench.hookimpl``).
            One object is made per cell.
        """

    @hookspec
    def register_metrics(self, register: Callable) -> None:
        """Register summary metrics computed from a cell's accuracy matrix.

        :param register: ``register(name, fn, description="")``. ``fn(m: clbench.results.Matrices)``
            returns a float (NaN when it is undefined for that cell).
        """

    @hookspec
    def register_reporters(self, register: Callable) -> None:
        """Register reporters.

        :param register: ``register(name, fn, description="")``. ``fn(tables, out, console)`` gets
            :class:`clbench.results.Tables`, an output folder (or None) and a ``rich`` console,
            and writes or prints a report.
        """

    @hookspec
    def register_executors(self, register: Callable) -> None:
        """Register executors that run a suite's cells.

        :param register: ``register(name, factory, description="")``. ``factory(**options)``
            returns an object with ``map(fn, cells)`` that yields ``fn(cell)`` for every cell, in
            any order, as each finishes, or :class:`clbench.cell.WorkerDied` for a cell whose
            process died. ``in_process = True`` on the object: ``fn`` runs in the driver;
            otherwise ``fn`` is picklable (docs/executors.md).
        """

    @hookspec
    def register_observers(self, register: Callable) -> None:
        """Register observers of a suite run (progress bars, loggers).

        :param register: ``register(name, factory, description="")``.
            ``factory(total=, console=, quiet=)`` is called once per suite run with the number of
            cells to run, the run's ``rich`` console and whether to stay quiet (``--no-progress``),
            and returns a context manager whose ``cell(config)`` gives a plugin of cell hooks for
            that cell (or None) and whose ``done(result)`` is told each finished cell (a
            :class:`clbench.cell.CellResult`). Cell hooks reach observers only for cells run in the
            driver's process.
        """


class CellSpecs:
    """Cell hooks, in the order a cell calls them (docs/hooks.md, "A cell, step by step")."""

    @hookspec
    def check_cell(self, config: CellConfig, stream: Stream) -> None:
        """Called before any cell runs (and before the results folder exists), once per
        combination of strategies and stream of a suite, and again when the cell starts.

        :param config: the :class:`clbench.config.CellConfig`: ``config.strategy.parts`` names every
            strategy the cell combines, ``config.model`` and ``config.training`` its settings.
        :param stream: the built stream (scenario, input kind, label space, tasks).

        Raise :class:`clbench.errors.UserError` with a one-line reason to refuse the combination:
        the suite then stops there, as for any bad field, instead of failing cell by cell. A
        refusal that depends only on the stream's kind of task is declared instead, by the
        strategy class's ``serves`` (a tuple of kind names; :func:`clbench.cell.refuse`).
        """

    @hookspec
    def before_task(self, cell: CellContext, task: Task) -> None:
        """Called before training on ``task`` (``cell.task_index`` is its position).

        Use it to change the model for the coming task (LoRA adds an adapter) or to snapshot
        state. The optimizer is built after this hook, so parameters added here can be trained.
        """

    @hookspec(firstresult=True)
    def train_data(self, cell: CellContext, task: Task) -> Examples | None:
        """Return the examples to train on for ``task``, or None for ``task.train``.

        ``joint`` returns the union of all tasks (then nothing later), ``cumulative`` the union of
        tasks seen so far, ``gdumb`` its memory. Returning empty examples skips training on the
        task.
        """

    @hookspec(firstresult=True)
    def trainable_parameters(self, cell: CellContext) -> Iterable[torch.nn.Parameter] | None:
        """Return the parameters the optimizer updates for the coming task, or None for every
        parameter of ``cell.model`` with ``requires_grad``. Called after :func:`train_data`."""

    @hookspec(firstresult=True)
    def fit_task(self, cell: CellContext, task: Task, data: Examples) -> bool | None:
        """Train on ``data`` with a loop of your own and return True, or return None to let
        clbench's loop train (the other hooks of a step then run as usual).

        For bridges to another library's training loop (``avalanche:<Class>``). Called after
        :func:`trainable_parameters`, with ``cell.optimizer`` built.
        """

    @hookspec(firstresult=True)
    def train_batch(self, cell: CellContext, batch: Batch) -> Batch | None:
        """Return the batch to train on instead of ``batch`` (replay mixes memory in), or None."""

    @hookspec
    def loss_terms(self, cell: CellContext, batch: Batch, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor | None:
        """Return an extra loss term (a scalar tensor) to add, or None.

        Every strategy's term is summed with the task's ``loss`` (EWC, SI, LwF penalties, DER's
        logit matching). ``logits`` are the model's outputs for the batch, as
        ``cell.logits(batch)`` gives them (masked for task-incremental scenarios).
        """

    @hookspec
    def after_backward(self, cell: CellContext, batch: Batch) -> None:
        """Called after ``backward()`` and before gradient clipping and the optimizer step: the
        gradients in ``cell.model`` can be read and changed here (A-GEM's projection, SI's path
        integral)."""

    @hookspec
    def after_step(self, cell: CellContext, step: int, loss: torch.Tensor) -> None:
        """Called after each optimizer step, for observers (progress, timing) and strategies that
        track parameters. ``loss`` is the detached total loss; calling ``.item()`` synchronises
        a GPU, so observers should do so sparingly."""

    @hookspec
    def after_task(self, cell: CellContext, task: Task) -> None:
        """Called after training on ``task`` and before the evaluation that follows it.

        EWC computes its Fisher here, replay fills its buffer, LoRA freezes its adapter.
        """

    @hookspec
    def before_eval(self, cell: CellContext, task_index: int, task: Task) -> None:
        """Called before the model is evaluated on ``task``, the ``task_index``-th task of the
        stream (task-incremental strategies route to the task's adapter here). ``cell.model`` is
        in eval mode."""


#: The names of each kind of hook, in the order of the classes above.
HOST_HOOKS: tuple[str, ...] = tuple(n for n in vars(HostSpecs) if n.startswith("register_"))
CELL_HOOKS: tuple[str, ...] = tuple(n for n in vars(CellSpecs) if not n.startswith("_"))
