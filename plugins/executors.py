"""Built-in executors. ``local`` runs the cells one after another in this process."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from clbench import hookimpl


class LocalExecutor:
    """Run cells in this process, in suite order (progress bars show every step)."""

    in_process = True

    def map(self, fn: Callable, cells: Iterable) -> Iterator:
        for cell in cells:
            yield fn(cell)


@hookimpl
def register_executors(register):
    register("local", LocalExecutor, description="run cells one by one in this process")
