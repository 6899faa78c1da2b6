"""clbench's hook specifications: the whole plugin contract, in one file.

Two kinds of hooks (see docs/hooks.md for the long form of each):

* **Registration hooks** run once on the global plugin manager when clbench starts. Each is
  handed a ``register`` callback; calling it records a name, the object and which plugin supplied
  it. Built-in streams and strategies register through these same hooks.
* **Training-loop hooks** run on a per-cell plugin manager that holds the cell's strategy objects
  (a cell may combine several) and observers (progress, timing). They return values instead of
  mutating shared state. A hook marked ``firstresult`` is answered by at most one strategy of a
  cell: a combination in which two strategies implement the same ``firstresult`` hook is refused
  before the cell runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .runner import CellContext
    from clbench.tasks import Batch, Examples, Stream, Task

hookspec = pluggy.HookspecMarker("clbench")
hookimpl = pluggy.HookimplMarker("clbench")


# --------------------------------------------------------------------------------------------
# Registration hooks (global plugin manager)
# --------------------------------------------------------------------------------------------


@hookspec
def register_streams(register: Callable) -> None:
    """Register stream factories.

    :param register: ``register(name, factory, description="")``. ``factory`` is called with the
        suite's stream parameters as keyword arguments (plus ``order``) and returns a
        :class:`clbench.tasks.Stream`. Its signature (annotations and defaults) is the parameter
        schema that suites are checked against.
    """


@hookspec
def register_strategies(register: Callable) -> None:
    """Register strategies.

    :param register: ``register(name, factory, description="")``. ``factory`` (usually a class)
        is called with the suite's strategy parameters as keyword arguments and returns an object
        whose methods implement training-loop hooks (decorated with ``clbench.hookimpl``). One
        object is made per cell.
    """


@hookspec
def register_metrics(register: Callable) -> None:
    """Register summary metrics computed from a cell's accuracy matrix.

    :param register: ``register(name, fn, description="")``. ``fn(m: clbench.results.Matrices)``
        returns a float (NaN when it is undefined for that cell).
    """


@hookspec
def register_reporters(register: Callable) -> None:
    """Register reporters.

    :param register: ``register(name, fn, description="")``. ``fn(tables, out, console)`` gets
        :class:`clbench.results.Tables`, an output folder (or None) and a ``rich`` console, and
        writes or prints a report.
    """


@hookspec
def register_executors(register: Callable) -> None:
    """Register executors that run a suite's cells.

    :param register: ``register(name, factory, description="")``. ``factory(**options)`` returns
        an object with ``map(fn, cells)`` that yields ``fn(cell)`` for every cell, in any order,
        as each finishes, or ``clbench.plugins.executors.WorkerDied(cell, error)`` for a cell
        whose process died. ``in_process = True`` on the object: ``fn`` runs in the driver;
        otherwise ``fn`` is picklable (docs/executors.md).
    """


# --------------------------------------------------------------------------------------------
# Training-loop hooks (per-cell plugin manager)
# --------------------------------------------------------------------------------------------


@hookspec
def check_stream(stream: Stream) -> None:
    """Called before any cell runs (and before the results folder exists), once per stream a
    strategy will be run on, with the built stream. Raise :class:`clbench.errors.UserError` with a
    one-line reason to refuse it: the suite then stops there, as for any bad field, instead of
    failing cell by cell. LoRA's ``per-task`` mode refuses streams that are not
    task-incremental."""


@hookspec
def before_task(cell: CellContext, task: Task) -> None:
    """Called before training on ``task`` (``cell.task_index`` is its position).

    Use it to change the model for the coming task (LoRA adds an adapter) or to snapshot state.
    The optimizer is built after this hook, so parameters added here can be trained.
    """


@hookspec(firstresult=True)
def train_data(cell: CellContext, task: Task) -> Examples | None:
    """Return the examples to train on for ``task``, or None for ``task.train``.

    ``joint`` returns the union of all tasks (then nothing later), ``cumulative`` the union of
    tasks seen so far, ``gdumb`` its memory. Returning empty examples skips training on the task.
    """


@hookspec(firstresult=True)
def trainable_parameters(cell: CellContext) -> Iterable[torch.nn.Parameter] | None:
    """Return the parameters the optimizer updates for the coming task, or None for every
    parameter of ``cell.model`` with ``requires_grad``. Called after :func:`before_task`."""


@hookspec(firstresult=True)
def train_batch(cell: CellContext, batch: Batch) -> Batch | None:
    """Return the batch to train on instead of ``batch`` (replay mixes memory in), or None."""


@hookspec
def loss_terms(cell: CellContext, batch: Batch, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor | None:
    """Return an extra loss term (a scalar tensor) to add, or None.

    Every strategy's term is summed with the cross-entropy ``loss`` (EWC, SI, LwF penalties,
    DER's logit matching). ``logits`` are already masked for task-incremental scenarios.
    """


@hookspec
def after_backward(cell: CellContext, batch: Batch) -> None:
    """Called after ``backward()`` and before the optimizer step: the gradients in
    ``cell.model`` can be read and changed here (A-GEM's projection, SI's path integral)."""


@hookspec
def after_step(cell: CellContext, step: int, loss: torch.Tensor) -> None:
    """Called after each optimizer step, for observers (progress, timing) and strategies that
    track parameters. ``loss`` is the detached total loss; calling ``.item()`` synchronises a GPU,
    so observers should do so sparingly."""


@hookspec
def after_task(cell: CellContext, task: Task) -> None:
    """Called after training on ``task`` and before the evaluation that follows it.

    EWC computes its Fisher here, replay fills its buffer, LoRA merges or freezes its adapter.
    """


@hookspec
def before_eval(cell: CellContext, task: Task) -> None:
    """Called before the model is evaluated on ``task``'s test split (task-incremental strategies
    route to the task's adapter here). ``cell.model`` is in eval mode."""
