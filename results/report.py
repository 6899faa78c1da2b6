"""The comparison report: for each (stream, stream params, order), a leaderboard, accuracy-matrix
heatmaps, accuracy over tasks, forgetting per task, training loss, the change of general ability
(generative streams with a general text) and cost, after the results' provenance; then, for a
suite that names an entry of the registry of published results, the published rows beside the
measured ones; as Markdown (with PNG files) and as one self-contained HTML page.

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

from .analysis import (
    accuracy_curves,
    beside_published,
    forgetting_per_task,
    general_curves,
    leaderboard,
    mean_matrices,
    train_losses,
)
from .figures import cost_bars, curves, forgetting_bars, general_curves as general_figure, heatmaps, loss_curves
from .registry import METRICS as PUBLISHED_METRICS
from .registry import entry as published_entry
from .render import HEADINGS, PUBLISHED, leaderboard_rows, render_html, render_markdown
from .schema import MEMORY_KINDS
from .store import Tables
from .summary import parse_units, stream_title, unit_note, with_variants
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
    cut = pd.to_numeric(c["prompt_cut_fraction"], errors="coerce").max() if "prompt_cut_fraction" in c else float("nan")
    if cut == cut:  # generative streams: the share of prompts that lost tokens to max_len
        parts.append(f"prompts shortened from the left to fit max_len: {cut:.1%}")
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
                     "forgetting: max over all earlier rows minus final accuracy (Chaudhry et al. 2018, as A-GEM's code computes it); plasticity: mean accuracy right after learning each task. "
                     "Cost: training seconds (after a warm-up that is not counted), peak memory in MB ("
                     + ("; ".join(f"{MEMORY_KINDS.get(k, (k, ''))[0]}: {MEMORY_KINDS.get(k, ('', k))[1]}" for k in kinds) or "not measured")
                     + "), and the most parameters trained at once."))
    for line in stand_ins(tables):
        out.append(("p", line))
    board = leaderboard(tables.summary)
    means = mean_matrices(tables)
    curves_df = accuracy_curves(tables)
    forget_df = forgetting_per_task(tables)
    loss = train_losses(tables)
    general = general_curves(tables)
    for (stream, _params, variant, order), b in board.groupby(["stream", "stream_params", "variant", "order"], sort=False):
        out.append(("h2", f"{stream_title(stream, variant)} · order {order}"))
        about = _about(tables, stream, order, variant)
        if about:
            out.append(("p", about))
        out.append(("h3", "Leaderboard"))
        note = unit_note(next((u for u in b.get("units", []) if isinstance(u, str) and u), ""))
        if note:
            out.append(("p", note[0].upper() + note[1:] + " (docs/cpt.md)."))
        out.append(("table", *leaderboard_rows(b)))
        sel = lambda df: df[(df["stream"] == stream) & (df["variant"] == variant) & (df["order"] == order)]  # noqa: E731
        kinds = parse_units(next((u for u in b.get("units", []) if isinstance(u, str) and u), ""))
        percent = all(d == "higher" for _u, d in kinds.values())
        if means.get((stream, variant, order)):
            out.append(("h3", "Accuracy matrices"))
            out.append(("figure", heatmaps(tables, stream, order, means[(stream, variant, order)], variant, percent)))
        if percent and not sel(curves_df).empty:  # these two draw accuracies in %
            out.append(("h3", "Accuracy over tasks"))
            out.append(("figure", curves(stream, order, sel(curves_df), variant, tables)))
        if percent and not sel(forget_df).empty:
            out.append(("h3", "Forgetting per task"))
            out.append(("figure", forgetting_bars(stream, order, sel(forget_df), variant, tables)))
            why = negative_forgetting(b, sel(forget_df))
            if why:
                out.append(("p", why))
        if not sel(loss).empty:
            out.append(("h3", "Training loss"))
            out.append(("figure", loss_curves(stream, order, sel(loss), variant, tables)))
            out.append(("p", "Each strategy on its own y axis: the loss a strategy trains on includes its own terms "
                             "(EWC's and SI's penalties, LwF's and DER's distillation), which can be far larger than the task's loss."))
        if not sel(general).empty:
            out.append(("h3", "General ability"))
            out.append(("figure", general_figure(stream, order, sel(general), variant, tables)))
            out.append(("p", "The perplexity of the stream's held-out general text after each task, divided by its perplexity "
                             "before training: above ×1, the model lost general ability (the leaderboard's general ppl Δ is the last "
                             "point minus 1, in %)."))
        ok = b[b["seeds"] > 0]
        if not ok.empty:
            out.append(("h3", "Cost"))
            out.append(("figure", cost_bars(stream, order, ok, variant)))
    out += published_blocks(tables)
    labelled = with_variants(cells)
    bad = labelled[labelled["status"] != "ok"]
    if not bad.empty:
        out.append(("h2", "Failed cells"))
        out.append(("table", ["stream", "order", "strategy", "seed", "status", "error"],
                    [[stream_title(r["stream"], r["variant"]), str(r["order"]), str(r["strategy"]), str(r["seed"]), str(r["status"]), str(r["error"])]
                     for _, r in bad.iterrows()]))
    return out


def negative_forgetting(board: pd.DataFrame, forget: pd.DataFrame) -> str:
    """A paragraph that explains forgetting below zero, naming the strategies that have it (in the
    leaderboard or on a task), or "" when none has."""
    below = []
    for _, r in board.iterrows():
        per_task = forget[forget["strategy"] == r["strategy"]].groupby("task")["forgetting"].mean()
        if pd.notna(r.get("forgetting_mean")) and r["forgetting_mean"] < -0.0005:
            below.append(f"{r['strategy']} ({r['forgetting_mean'] * 100:.1f} %)")
        elif (per_task < -0.0005).any():
            below.append(f"{r['strategy']} (on {int((per_task < -0.0005).sum())} task(s))")
    if not below:
        return ""
    return ("Forgetting below zero: " + ", ".join(below) + ". A task's forgetting is the best accuracy it had before the last "
            "task minus its accuracy at the end (Chaudhry et al. 2018); below zero, the task was not forgotten but kept "
            "improving after it was trained: cumulative and joint train on it again, replay revisits its examples, and a "
            "later task can transfer backwards to it.")


def _published_value(v: float, spread: float, kind: str) -> str:
    s = f"{v:.1f}" if abs(v) >= 0.1 or v == 0 else f"{v:.2f}"
    if pd.notna(spread) and kind:
        s += f" ± {spread:.1f}" + (" (s.e.m.)" if kind == "sem" else "")
    return s


def published_blocks(tables: Tables) -> list[tuple]:
    """For each suite that names an entry of the registry of published results, a table of its
    measured rows, each followed by the published rows of the same strategy, labelled
    "published, not run here", with their sources and notes below."""
    df = beside_published(tables)
    out: list[tuple] = []
    for (suite, name, stream, variant), g in df.groupby(["suite", "published", "stream", "variant"], sort=False):
        entry = published_entry(name)
        metrics = [m for m in PUBLISHED_METRICS if m in set(g["metric"])]
        heading = [HEADINGS.get(m, m) if m != "general_ability_delta" else "general ability Δ (TRACE)" for m in metrics]
        out.append(("h2", f"Published results beside measured ones: {entry.title}"))
        out.append(("p", f"Suite {suite} names the registry entry {name} (published = \"{name}\"), about {entry.benchmark}. "
                         f"Measured on the stream {stream_title(stream, variant)}. The rows marked \"{PUBLISHED}\" are numbers printed in "
                         "papers: their model, data and training differ from this suite's. "
                         f"How: {entry.note}. Measured rows: mean ± sd over the suite's finished cells of the strategy "
                         "(every task order and seed), in %."))
        sources: dict[tuple, int] = {}
        notes = []

        def line(r0: pd.DataFrame, what: str, source: str, model: str) -> list[str]:
            vals = {x["metric"]: _published_value(x["value"], x["spread"], x["spread_kind"]) for _, x in r0.iterrows()}
            first = r0.iloc[0]
            return [first["strategy"] or "–", what, *(vals.get(m, "–") for m in metrics), model, source]

        rows = []
        measured = g[g["source"] == "measured"]
        published = g[g["source"] == "published"]
        order = list(dict.fromkeys(measured["strategy"]))
        order += [s for s in dict.fromkeys(published["strategy"]) if s and s not in order]
        order += [""]
        for strategy in order:
            m = measured[measured["strategy"] == strategy]
            if len(m):
                rows.append(line(m, f"measured here ({int(m['n'].max())} cells)", "this report", m.iloc[0]["model"]))
            p = published[published["strategy"] == strategy]
            for (method, paper, table), pr in p.groupby(["method", "paper", "table"], sort=False):
                k = sources.setdefault((paper, table), len(sources) + 1)
                rows.append(line(pr, f"{PUBLISHED}: {method}", f"[{k}]", pr.iloc[0]["model"]))
                for own in dict.fromkeys(n for n in pr["note"] if n):
                    notes.append([method, f"[{k}]", own])
        out.append(("table", ["strategy", "what", *heading, "model", "source"], rows))
        rows_by = {(r["paper"], r["table"]): r for r in entry.rows}
        for (paper, table), k in sources.items():
            r = rows_by[(paper, table)]
            out.append(("p", f"[{k}] {paper}, {table}. {r['url']}. Model: {r['model']}. Protocol: {r['protocol']}. "
                             f"Checked: {r['checked']}."))
        if notes:
            out.append(("table", ["method", "source", "note"], notes))
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
