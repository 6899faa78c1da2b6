"""``progress``: rich progress bars, one over the suite's cells, one over the running cell's
steps, and a line for each cell that did not finish.

A registered observer (``register_observers``): :class:`SuiteProgress` watches a suite run;
:class:`CellProgress` is the plugin it gives each cell run in the driver's process, implementing
``before_task`` and ``after_step``. It reads nothing but what the hooks hand it.
"""

from __future__ import annotations

from rich.markup import escape

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from clbench import hookimpl


class SuiteProgress:
    """Progress of a suite run: ``total`` cells; ``quiet`` hides the bars (failures are still
    printed)."""

    def __init__(self, total: int, console: Console | None = None, quiet: bool = False):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
            transient=False,
        )
        self.total = total
        self._suite = None
        self._cell = None

    def __enter__(self) -> "SuiteProgress":
        self.progress.__enter__()
        self._suite = self.progress.add_task("cells", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._cell is not None:
            self.progress.remove_task(self._cell)
            self._cell = None
        self.progress.__exit__(*exc)

    def cell(self, cell) -> "CellProgress":
        if self._cell is not None:
            self.progress.remove_task(self._cell)
        self._cell = self.progress.add_task(f"  {cell.describe()}", total=None)
        return CellProgress(self.progress, self._cell)

    def done(self, result) -> None:
        self.progress.advance(self._suite)
        if result.status != "ok":
            self.progress.console.print(
                f"[red]failed[/red] ({result.status}): {escape(str(result.row['strategy']))} seed {result.row['seed']}: "
                f"{escape(str(result.row['error']))}"
            )


class CellProgress:
    """Advances a bar by one per optimizer step; its total is set per task."""

    def __init__(self, progress: Progress, task_id):
        self.progress = progress
        self.task_id = task_id
        self.total = 0
        self.done = 0

    @hookimpl
    def before_task(self, cell, task):
        self.progress.update(
            self.task_id,
            description=f"  {escape(cell.config.describe())} · task {cell.task_index + 1}/{cell.stream.n_tasks}",
        )

    @hookimpl
    def after_step(self, cell, step, loss):
        if self.done == self.total:  # first step of a task: now the task's step count is known
            self.total += cell.steps_in_task
            self.progress.update(self.task_id, total=self.total)
        self.done += 1
        self.progress.advance(self.task_id)


@hookimpl
def register_observers(register):
    register("progress", SuiteProgress, description="progress bars over cells and steps; a line per failed cell")
