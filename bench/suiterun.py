"""Run a whole suite: check everything first, then run the cells with an executor and write each
cell's rows as it comes back. Finished cells (by config hash) are not run again unless forced.

Executors that run cells in other processes get :func:`run_cell_in_worker` with a
:class:`WorkerSetup`: the driver's plugins and environment, so that a worker runs a cell exactly
as the driver would. :func:`worker_stream` is the one worker bootstrap (``clbench run``'s workers
and ``clbench tune``'s trials): it installs the driver's plugins as the worker's host and keeps
the last stream built."""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import pickle
import sys
import traceback
import types
import uuid
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from .cell import CellResult, WorkerDied, cell_manager, make_strategies, refuse
from .config import CellConfig, Suite
from .errors import UserError
from .host import DEFAULT_PLUGINS, Host, get_host, set_host
from .loop import build_stream, cell_row, run_cell
from .params import check_params, device_from

from clbench.results import load, write_tables
from clbench.results.store import done_cells, prepare_out, write_cell

#: Environment variables a worker process gets from the driver (data folders of text streams).
WORKER_ENV = ("CLBENCH_DATA",)


@dataclass
class SuiteRun:
    out: Path
    ran: list[CellResult] = field(default_factory=list)
    skipped: int = 0

    @property
    def not_ok(self) -> list[CellResult]:
        return [r for r in self.ran if r.status != "ok"]


def stream_key(cell: CellConfig) -> str:
    """What determines a cell's stream (cells with the same key share one built stream)."""
    return json.dumps([cell.stream, cell.stream_params, cell.order_value, cell.tasks], sort_keys=True, default=str)


def preflight(suite: Suite) -> dict[str, object]:
    """Build every distinct stream once and every strategy combination once, and ask
    :func:`clbench.cell.refuse` about each (strategy combination, stream) of the suite, so that a
    mistake in a suite is reported before anything is written. Returns the built streams by key."""
    streams = {}
    for cell in suite.cells:
        what = "training.device" if cell.training is suite.cells[0].training else f"strategy '{cell.strategy.label}': training.device"
        try:
            device_from(cell.training.device, what)
        except UserError as exc:
            raise UserError(f"{suite.path}: {exc}") from None
        key = stream_key(cell)
        if key not in streams:
            try:
                streams[key] = build_stream(cell)
            except UserError as exc:
                said = str(exc) if str(exc).startswith(f"stream '{cell.stream}'") else f"stream '{cell.stream}': {exc}"
                raise UserError(f"{suite.path}: {said}") from None
    checked = set()
    for cell in suite.cells:
        key = stream_key(cell)
        if (cell.strategy.label, key) in checked:
            continue
        checked.add((cell.strategy.label, key))
        try:
            objs = make_strategies(cell)
        except UserError as exc:
            raise UserError(f"{suite.path}: strategy '{cell.strategy.label}': {exc}") from None
        except Exception:  # a broken strategy class: its cells fail (run_cell records why)
            continue
        try:
            refuse(cell, streams[key], cell_manager(objs))
        except UserError as exc:
            raise UserError(f"{suite.path}: strategy '{cell.strategy.label}': {exc}") from None
    return streams


# -- running cells in other processes ------------------------------------------------------------


@dataclass(frozen=True)
class _ModuleRef:
    """A plugin that is a module travels by name (modules do not pickle)."""

    name: str


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker process needs to run cells as the driver would.

    ``allow`` lists the built-in and entry-point plugins the driver has loaded (a worker loads the
    same), ``plugins`` the others (registered at run time, e.g. by a test), pickled; ``sys_path``
    lets the worker import the modules that define them; ``env`` holds :data:`WORKER_ENV`.
    """

    token: str
    allow: str
    plugins: bytes
    sys_path: tuple[str, ...]
    env: tuple[tuple[str, str | None], ...]

    @classmethod
    def of(cls) -> "WorkerSetup":
        """The setup of this process's host (:func:`clbench.host.get_host`)."""
        host = get_host()
        known = set(DEFAULT_PLUGINS) | {ep.name for ep in entry_points(group="clbench")}
        allow, extra = [], []
        for name, plugin in host.pm.list_name_plugin():
            if name in known:
                allow.append(name)
            elif isinstance(plugin, types.ModuleType):
                extra.append((name, _ModuleRef(plugin.__name__)))
            else:
                extra.append((name, plugin))
        try:
            blob = pickle.dumps(extra)
        except Exception as exc:
            raise UserError(
                f"plugins {', '.join(n for n, _ in extra)} cannot be sent to worker processes "
                f"({type(exc).__name__}: {exc}); use the local executor"
            ) from None
        env = tuple((k, os.environ.get(k)) for k in WORKER_ENV)
        return cls(uuid.uuid4().hex, ",".join(allow), blob, tuple(sys.path), env)

    def host(self) -> Host:
        """A host with the driver's plugins, in the driver's environment (run in the worker)."""
        for p in self.sys_path:
            if p not in sys.path:
                sys.path.append(p)
        for k, v in self.env:  # as in the driver: set, or unset
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        host = Host().load(self.allow)
        for name, plugin in pickle.loads(self.plugins):
            if isinstance(plugin, _ModuleRef):
                plugin = importlib.import_module(plugin.name)
            host.register(plugin, name=name)
        return host


_worker: dict[str, Any] = {}  # this worker process's setup token, and its last stream


def worker_stream(setup: WorkerSetup, cell: CellConfig, key: Any = None,
                  build: Callable[[CellConfig], Any] = build_stream):
    """The worker bootstrap: once per process and ``setup``, load the driver's plugins and install
    them as this process's host (:func:`clbench.host.set_host`); then ``cell``'s stream, built by
    ``build`` and kept for the next cells with the same ``key`` (default :func:`stream_key`),
    which come one after another."""
    if _worker.get("token") != setup.token:
        _worker.clear()
        set_host(setup.host())
        _worker["token"] = setup.token
    key = stream_key(cell) if key is None else key
    if _worker.get("stream_key") != key:
        _worker.pop("stream", None)  # keep one
        _worker["stream"] = build(cell)
        _worker["stream_key"] = key
    return _worker["stream"]


def run_cell_in_worker(cell: CellConfig, setup: WorkerSetup) -> CellResult:
    """Run ``cell`` in a worker process (what out-of-process executors call; picklable with
    ``functools.partial``), set up by :func:`worker_stream`."""
    try:
        stream = worker_stream(setup, cell)
    except UserError:
        raise
    except Exception as exc:  # the worker could not be set up: the cell fails, the suite goes on
        row = cell_row(cell)
        row.update(status="failed", error=f"worker setup: {type(exc).__name__}: {exc}".splitlines()[0],
                   traceback=traceback.format_exc())
        return CellResult(row, [])
    return run_cell(cell, stream=stream)


def worker_died(cell: CellConfig, error: str) -> CellResult:
    """The result of a cell whose worker process died: failed, no measurements."""
    row = cell_row(cell)
    row.update(status="failed", error=error)
    return CellResult(row, [])


def make_executor(name: str, options: dict | None = None):
    """The executor ``name`` built with ``options`` (checked against its signature)."""
    factory = get_host().get("executors", name).obj
    opts = check_params(factory, options or {}, what=f"executor '{name}'")
    try:
        return factory(**opts)
    except UserError as exc:
        raise UserError(f"executor '{name}': {exc}") from None


def run_suite(
    suite: Suite,
    out: Path,
    *,
    executor: str = "local",
    executor_options: dict | None = None,
    force: bool = False,
    console: Console | None = None,
    progress: bool = True,
) -> SuiteRun:
    """Run ``suite`` into ``out``: :func:`preflight`, then every cell that has no result there
    yet (all with ``force``) on the executor ``executor``, each cell's rows written as it ends,
    then the suite's tables."""
    host = get_host()
    console = console or Console(stderr=True)
    executor_obj = make_executor(executor, executor_options)
    in_process = getattr(executor_obj, "in_process", False)
    streams = preflight(suite)
    setup = None if in_process else WorkerSetup.of()
    out = prepare_out(Path(out))
    console.print(f"suite [bold]{escape(suite.name)}[/bold]: {len(suite.cells)} cells → {out}", soft_wrap=True)

    done = {} if force else {k: v for k, v in done_cells(out).items() if v == "ok"}
    todo = [c for c in suite.cells if c.run_id not in done]
    run = SuiteRun(out=out, skipped=len(suite.cells) - len(todo))
    if run.skipped:
        console.print(f"{run.skipped} of {len(suite.cells)} cells already have results in {out} (--force runs them again)")

    with contextlib.ExitStack() as stack:
        watching = [stack.enter_context(e.obj(total=len(todo), console=console, quiet=not progress))
                    for e in host.registries["observers"].values()]
        if in_process:

            def fn(cell: CellConfig) -> CellResult:
                plugins = [p for p in (w.cell(cell) for w in watching) if p is not None]
                return run_cell(cell, observers=plugins, stream=streams.get(stream_key(cell)))

        else:
            fn = functools.partial(run_cell_in_worker, setup=setup)

        for result in executor_obj.map(fn, todo):
            if isinstance(result, WorkerDied):
                result = worker_died(result.cell, result.error)
            write_cell(out, result.row, result.measurements)
            run.ran.append(result)
            for w in watching:
                w.done(result)

    if suite.cells:
        tables = load(out)
        write_tables(out, tables)
    return run
