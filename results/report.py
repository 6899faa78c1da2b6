"""The comparison report: for each (stream, stream params, order), a leaderboard, accuracy-matrix
heatmaps, accuracy over tasks, forgetting per task, training loss and cost, after the results'
provenance, as Markdown (with PNG files) and as one self-contained HTML page.

The report is assembled here from the numbers of :mod:`clbench.results.analysis`, the figures of
:mod:`clbench.results.figures`, and written by :mod:`clbench.results.render`::

    tables = clbench.results.load("results/a", "results/b")
    analysis.leaderboard(tables.summary)   # one row per (stream, stream params, order, strategy)
    report.write_html(tables, "report/")   # report/report.html
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .analysis import accuracy_curves, forgetting_per_task, leaderboard, mean_matrices, train_losses
from .figures import cost_bars, curves, forgetting_bars, heatmaps, loss_curves
from .render import leaderboard_rows, render_html, render_markdown
from .store import Tables
from .summary import stream_title, with_variants
from clbench.tasks.trace import TRACE_METRICS


def _about(tables: Tables, stream: str, order: str, variant: str) -> str:
    """The scenario and the tasks, in order, of a (stream, variant, order) group."""
    cells = with_variants(tables.cells)
    c = cells[(cells["stream"] == stream) & (cells["variant"] == variant) & (cells["order"] == order)]
    c = c[c["status"] == "ok"] if (c["status"] == "ok").any() else c
    if c.empty:
        return ""
    r = c.iloc[0]
    tasks = json.loads(r["tasks"]) if isinstance(r.get("tasks"), str) else []
    parts = []
    if r.get("scenario"):
        parts.append(f"Scenario: {r['scenario']}")
    if tasks:
        parts.append(f"tasks in order: {', '.join(map(str, tasks))}")
    parts.append(f"stream parameters: {r['stream_params']}")
    return "; ".join(parts) + "."


def _distinct(values) -> str:
    vals = list(dict.fromkeys(str(v) for v in values if isinstance(v, str) and v))
    return " | ".join(vals) if vals else "–"


def provenance(tables: Tables) -> list[list[str]]:
    """What produced the numbers, as (what, value) rows: suites, model and training settings,
    versions (each distinct value of the cells' JSON columns), devices, and when cells started."""
    c = tables.cells
    rows = [["suites", _distinct(c["suite"])]]
    for col, what in (("model", "model"), ("training", "training"), ("versions", "versions"), ("device", "devices")):
        if col in c:
            rows.append([what, _distinct(c[col])])
    if "started_at" in c and c["started_at"].notna().any():
        t = pd.to_datetime(c["started_at"].dropna().astype(float), unit="s", utc=True)
        rows.append(["cells started", f"{t.min():%Y-%m-%d %H:%M} – {t.max():%Y-%m-%d %H:%M} UTC"])
    if tables.sources:
        rows.append(["results folders", ", ".join(map(str, tables.sources))])
    return rows


def stand_ins(tables: Tables) -> list[str]:
    """One line for each number of these results that stands in for a paper's different
    procedure: the general text's perplexity for TRACE's general-ability benchmarks, a TRACE task
    scored by another metric than TRACE's (20Minuten without SARI)."""
    lines = []
    if (tables.measurements["metric"] == "general_ppl").any():
        lines.append("General ability (general ppl Δ, the general text's bits per byte) is the perplexity of a held-out "
                     "text: a stand-in for the benchmarks (MMLU, BBH, GSM8K, ...) with which TRACE (Wang et al. 2023) "
                     "measures it, not TRACE's number.")
    seen = set()
    for _, c in tables.cells[tables.cells["stream"] == "trace"].iterrows():
        try:
            metrics = json.loads(c["stream_params"]).get("metrics") or {}
        except (TypeError, ValueError, AttributeError):
            continue
        for task, metric in metrics.items():
            short = str(task).rsplit("/", 1)[-1]
            paper = TRACE_METRICS.get(short)
            if paper and metric != paper and (short, metric) not in seen:
                seen.add((short, metric))
                lines.append(f"TRACE's {short} is scored by {metric} here, not by TRACE's {paper}.")
    return lines


def blocks(tables: Tables, sources: list[str] | None = None) -> list[tuple]:
    """The report as a list of blocks: ``("h1"|"h2"|"h3"|"p", text)``, ``("table", header,
    rows)`` and ``("figure", Figure)``."""
    cells = tables.cells
    n_ok = int((cells["status"] == "ok").sum())
    out: list[tuple] = [("h1", "clbench report")]
    what = f"{len(cells)} cells ({n_ok} ok, {len(cells) - n_ok} failed)"
    if sources:
        what += " from " + ", ".join(sources)
    out.append(("p", what + "."))
    kinds = sorted(set(cells["memory_kind"].dropna()) - {""}) if "memory_kind" in cells else []
    out.append(("h2", "Provenance"))
    out.append(("table", ["what", "value"], provenance(tables)))
    out.append(("p", "Metrics in % as mean ± sd [standard error] over seeds; rank by mean ACC. "
                     "A failed cell (status failed or diverged) is counted, not averaged. "
                     "ACC: mean final accuracy; AIA: average incremental accuracy; BWT: backward transfer; FWT: forward transfer; "
                     "forgetting: max over all earlier rows minus final accuracy (Chaudhry et al. 2018, as A-GEM's code computes it); plasticity: mean accuracy right after learning each task. Cost: training seconds, peak memory "
                     f"(MB; {', '.join(kinds) or 'not measured'}), and the most parameters trained at once."))
    for line in stand_ins(tables):
        out.append(("p", line))
    board = leaderboard(tables.summary)
    means = mean_matrices(tables)
    curves_df = accuracy_curves(tables)
    forget_df = forgetting_per_task(tables)
    for (stream, _params, variant, order), b in board.groupby(["stream", "stream_params", "variant", "order"], sort=False):
        out.append(("h2", f"{stream_title(stream, variant)} · order {order}"))
        about = _about(tables, stream, order, variant)
        if about:
            out.append(("p", about))
        out.append(("h3", "Leaderboard"))
        out.append(("table", *leaderboard_rows(b)))
        sel = lambda df: df[(df["stream"] == stream) & (df["variant"] == variant) & (df["order"] == order)]  # noqa: E731
        if means.get((stream, variant, order)):
            out.append(("h3", "Accuracy matrices"))
            out.append(("figure", heatmaps(tables, stream, order, means[(stream, variant, order)], variant)))
        if not sel(curves_df).empty:
            out.append(("h3", "Accuracy over tasks"))
            out.append(("figure", curves(stream, order, sel(curves_df), variant)))
        if not sel(forget_df).empty:
            out.append(("h3", "Forgetting per task"))
            out.append(("figure", forgetting_bars(stream, order, sel(forget_df), variant)))
        loss = train_losses(tables)
        if not sel(loss).empty:
            out.append(("h3", "Training loss"))
            out.append(("figure", loss_curves(stream, order, sel(loss), variant)))
        ok = b[b["seeds"] > 0]
        if not ok.empty:
            out.append(("h3", "Cost"))
            out.append(("figure", cost_bars(stream, order, ok, variant)))
    labelled = with_variants(cells)
    bad = labelled[labelled["status"] != "ok"]
    if not bad.empty:
        out.append(("h2", "Failed cells"))
        out.append(("table", ["stream", "order", "strategy", "seed", "status", "error"],
                    [[stream_title(r["stream"], r["variant"]), str(r["order"]), str(r["strategy"]), str(r["seed"]), str(r["status"]), str(r["error"])]
                     for _, r in bad.iterrows()]))
    return out


def write_markdown(tables: Tables, out: str | Path) -> Path:
    """Write ``out/report.md`` and the PNG files it shows (``out/figures/``)."""
    out = Path(out)
    text, files = render_markdown(blocks(tables, tables.sources))
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    (out / "report.md").write_text(text, encoding="utf-8")
    return out / "report.md"


def write_html(tables: Tables, out: str | Path) -> Path:
    """Write ``out/report.html``, a page with everything embedded (no other file needed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(render_html(blocks(tables, tables.sources)), encoding="utf-8")
    return out / "report.html"
