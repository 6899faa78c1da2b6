"""Run a whole suite: check everything first, then run the cells with an executor and write each
cell's rows as it comes back. Finished cells (by config hash) are not run again unless forced."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from .errors import UserError
from .host import firstresult_conflicts, get_host, new_cell_manager
from .runner import CellResult, build_stream, make_strategies, run_cell
from .suite import Cell, Suite


@dataclass
class SuiteRun:
    out: Path
    ran: list[CellResult] = field(default_factory=list)
    skipped: int = 0

    @property
    def not_ok(self) -> list[CellResult]:
        return [r for r in self.ran if r.status != "ok"]


def _stream_key(cell: Cell) -> str:
    import json

    return json.dumps([cell.stream, cell.stream_params, cell.order_value], sort_keys=True, default=str)


def preflight(suite: Suite, host=None) -> dict[str, object]:
    """Build every distinct stream once and every strategy object once, so that a mistake in a
    suite is reported before anything is written. Returns the built streams by key."""
    host = host or get_host()
    streams = {}
    for cell in suite.cells:
        key = _stream_key(cell)
        if key not in streams:
            try:
                streams[key] = build_stream(cell, host)
            except UserError as exc:
                raise UserError(f"{suite.path}: stream '{cell.stream}': {exc}") from None
    seen = set()
    for cell in suite.cells:
        if cell.strategy.label in seen:
            continue
        seen.add(cell.strategy.label)
        try:
            objs = make_strategies(cell, host)
        except UserError as exc:
            raise UserError(f"{suite.path}: strategy '{cell.strategy.label}': {exc}") from None
        pm = new_cell_manager()
        for name, obj in objs:
            pm.register(obj, name=name)
        for hook, who in firstresult_conflicts(pm):
            raise UserError(
                f"{suite.path}: strategies {' and '.join(who)} cannot be combined: both decide '{hook}'"
            )
    return streams


def run_suite(
    suite: Suite,
    out: Path,
    *,
    executor: str = "local",
    force: bool = False,
    console: Console | None = None,
    progress: bool = True,
    host=None,
) -> SuiteRun:
    from clbench.plugins.progress import SuiteProgress
    from clbench.results import load, write_tables
    from clbench.results.store import done_cells, prepare_out, write_cell

    host = host or get_host()
    console = console or Console(stderr=True)
    executor_obj = host.get("executors", executor).obj()
    streams = preflight(suite, host)
    out = prepare_out(Path(out))
    console.print(f"suite [bold]{suite.name}[/bold]: {len(suite.cells)} cells → {out}", soft_wrap=True)

    done = {} if force else {k: v for k, v in done_cells(out).items() if v == "ok"}
    todo = [c for c in suite.cells if c.run_id not in done]
    run = SuiteRun(out=out, skipped=len(suite.cells) - len(todo))
    if run.skipped:
        console.print(f"{run.skipped} of {len(suite.cells)} cells already have results in {out} (--force runs them again)")

    with SuiteProgress(len(todo), console=console, enabled=progress) as bars:
        in_process = getattr(executor_obj, "in_process", False)

        def fn(cell: Cell) -> CellResult:
            observers = [bars.cell_observer(cell)] if in_process else []
            return run_cell(cell, observers=observers, stream=streams.get(_stream_key(cell)), host=host)

        for result in executor_obj.map(fn, todo):
            write_cell(out, result.cell, result.measurements)
            run.ran.append(result)
            bars.cell_done(result)

    if suite.cells:
        tables = load(out)
        write_tables(out, tables)
    return run
