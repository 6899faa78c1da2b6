"""Built-in executors: ``local`` (cells one after another in this process), ``pool`` (worker
processes on this machine) and ``ray`` (a Ray cluster, or a local Ray instance).

An executor's ``map(fn, cells)`` yields ``fn(cell)`` for every cell as each finishes. When the
process running a cell dies (killed, out of memory, a crash in native code), it yields
:class:`clbench.cell.WorkerDied` for that cell instead, and goes on with the others; the driver records the
cell as failed. Out-of-process executors get a picklable ``fn`` (see
:func:`clbench.suiterun.run_cell_in_worker`). Ray is optional (``clbench[ray]``): it is imported
inside the methods that use it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

import torch

from clbench import hookimpl
from clbench.cell import WorkerDied
from clbench.errors import UserError
from clbench.host import DEFAULT_PLUGINS
from clbench.params import require


class LocalExecutor:
    """Run cells in this process, in suite order (progress bars show every step)."""

    in_process = True

    def map(self, fn: Callable, cells: Iterable) -> Iterator:
        for cell in cells:
            yield fn(cell)


def _init_worker(threads: int, driver: int) -> None:
    torch.set_num_threads(threads)

    def exit_with_driver() -> None:  # a killed driver must not leave workers training on
        while True:
            time.sleep(1.0)
            try:
                os.kill(driver, 0)
            except (ProcessLookupError, PermissionError):  # gone (its id may be someone else's now)
                os._exit(1)

    threading.Thread(target=exit_with_driver, daemon=True).start()


def torch_threads(workers: int) -> int:
    """Torch threads per worker so that ``workers`` processes share the cores without
    oversubscription (at least 1)."""
    return max(1, (os.cpu_count() or 1) // workers)


class PoolExecutor:
    """Run cells in ``workers`` processes on this machine (each runs one cell at a time, on the
    cell's ``training.threads`` torch threads)."""

    in_process = False

    def __init__(self, workers: int = 2):
        require(workers >= 1, "workers", "at least 1", workers)
        self.workers = workers

    def _pool(self, n: int) -> ProcessPoolExecutor:
        # forkserver: one clean process imports torch, clbench and the built-in plugins once, and
        # every worker (of this pool and of later ones) is forked from it; the driver is never
        # forked (its threads, CUDA).
        if "forkserver" in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["clbench.suiterun", *DEFAULT_PLUGINS])
        else:
            ctx = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(torch_threads(n), os.getpid()))

    def map(self, fn: Callable, cells: Iterable) -> Iterator:
        queue = deque(cells)
        n = min(self.workers, len(queue))
        while queue:
            pool = self._pool(n)
            running: dict = {}  # never more in flight than workers: every cell in it is running
            suspects: list = []  # the cells in flight when a worker died
            broken = finished = False
            try:
                while (queue or running) and not broken:
                    try:
                        while queue and len(running) < n:
                            fut = pool.submit(fn, queue[0])  # raises if the pool broke: cell stays queued
                            running[fut] = queue.popleft()
                    except BrokenProcessPool:
                        broken = True
                    done, _ = wait(running, return_when=FIRST_COMPLETED) if running else ((), ())
                    for fut in done:
                        cell = running.pop(fut)
                        try:
                            result = fut.result()
                        except BrokenProcessPool:
                            suspects.append(cell)
                            broken = True
                            continue
                        finished = True
                        yield result
                    if broken:
                        suspects += running.values()
            finally:
                pool.shutdown(wait=not broken, cancel_futures=True)
            if broken and not suspects and not finished:
                raise RuntimeError("the pool's worker processes died before running any cell")
            # Which suspect killed its worker? Run each alone in a fresh process.
            for cell in suspects:
                with self._pool(1) as alone:
                    try:
                        yield alone.submit(fn, cell).result()
                    except BrokenProcessPool:
                        yield WorkerDied(cell, "the worker process running this cell died (killed, out of memory, or a crash)")


class RayExecutor:
    """Run each cell as a Ray task: on the cluster at ``address``, or on a local Ray instance
    (with ``workers`` CPUs, default all) that clbench starts and stops."""

    in_process = False

    def __init__(self, address: str | None = None, workers: int | None = None):
        try:
            import ray  # noqa: F401  (optional: clbench[ray]; imported where it is used)
        except ImportError:
            raise UserError("Ray is not installed: pip install 'clbench[ray]'") from None
        require(workers is None or workers >= 1, "workers", "at least 1", workers)
        self.address = address
        self.workers = workers

    def start(self) -> bool:
        """Connect to (or start) Ray; True if this call started it."""
        import ray

        if ray.is_initialized():
            return False
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if self.address:
            kw["address"] = self.address
        else:
            kw["num_cpus"] = self.workers or os.cpu_count() or 1
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(**kw)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise UserError(f"cannot start or reach {where}: {str(exc).splitlines()[0]}") from None
        finally:
            if main and sigterm is not None:  # ray.init installs its own (sys.exit): a kill says what Ctrl-C says
                signal.signal(signal.SIGTERM, sigterm)
        return True

    def map(self, fn: Callable, cells: Iterable) -> Iterator:
        import ray
        from ray.exceptions import RayError, RayTaskError

        queue = deque(cells)
        if not queue:
            return
        started = self.start()
        running: dict = {}
        try:
            # max_retries=0: a cell whose worker dies is recorded as failed, not run again and
            # again (a crash is usually deterministic); resuming the suite runs it again.
            task = ray.remote(num_cpus=1, max_retries=0)(_call)
            limit = self.workers or len(queue)
            while queue or running:
                while queue and len(running) < limit:
                    cell = queue.popleft()
                    running[task.remote(fn, cell)] = cell
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    cell = running.pop(ref)
                    try:
                        yield ray.get(ref)
                    except RayTaskError as exc:  # fn raised: a UserError, or a bug outside run_cell
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, UserError):
                            raise UserError(str(cause)) from None
                        yield WorkerDied(cell, f"{type(cause or exc).__name__}: {str(cause or exc).splitlines()[0]}")
                    except RayError as exc:  # the worker died (crash, kill, OOM), or its node
                        yield WorkerDied(cell, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


def _call(fn: Callable, cell: Any) -> Any:
    return fn(cell)


@hookimpl
def register_executors(register):
    register("local", LocalExecutor, description="run cells one by one in this process")
    register("pool", PoolExecutor, description="run cells in worker processes on this machine (--workers N)")
    register("ray", RayExecutor, description="run cells as Ray tasks (--address of a cluster, else a local Ray)")
