"""Built-in reporters. ``console`` prints the leaderboard (mean ± sd over seeds) with rich;
``markdown`` and ``html`` write the comparison report (clbench.results.report) to a folder."""

from __future__ import annotations

import math
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from clbench import hookimpl
from clbench.errors import UserError
from clbench.results.report import write_html, write_markdown
from clbench.results.summary import aggregate, fewer_values, stream_title

SHOWN = ("acc", "aia", "bwt", "fwt", "forgetting", "intransigence", "plasticity", "general_ppl_change")
#: Column headings, short so that the table fits 100 columns (the caption spells them out).
HEAD = {"acc": "ACC", "aia": "AIA", "bwt": "BWT", "fwt": "FWT", "forgetting": "forget", "intransigence": "intrans",
        "plasticity": "plast", "general_ppl_change": "gen ppl Δ"}
#: Shown only where some cell has a value (generative streams with a general text).
WHERE_MEASURED = ("general_ppl_change",)


def _fmt(mean: float, std: float, pct: bool = True, stacked: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    scale = 100.0 if pct else 1.0
    s = f"{mean * scale:.1f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += ("\n" if stacked else " ") + f"± {std * scale:.1f}"
    return s


def console_report(tables, out, console) -> None:
    agg = aggregate(tables.summary)
    if agg.empty:
        console.print("no results")
        return
    # narrow terminals (under 140 columns): the sd goes under the mean, so that rows fit
    stacked = console.width < 140
    for (stream, _params, variant, order), g in agg.groupby(["stream", "stream_params", "variant", "order"], sort=False):
        shown = [m for m in SHOWN if f"{m}_mean" in g and (m not in WHERE_MEASURED or g[f"{m}_mean"].notna().any())]
        table = Table(title=f"{escape(stream_title(stream, variant))} · order {order}",
                      caption="% as mean ± sd over seeds; forget = forgetting, intrans = intransigence, plast = plasticity"
                      + ("; gen ppl Δ = relative change of the general text's perplexity" if "general_ppl_change" in shown else ""),
                      padding=(0, 1), show_lines=stacked)
        table.add_column("rank", justify="right")
        table.add_column("strategy")
        table.add_column("seeds", justify="right")
        for m in shown:
            table.add_column(HEAD[m], justify="right", no_wrap=True)
        table.add_column("train s", justify="right", no_wrap=True)
        for _, r in g.sort_values("rank", na_position="last").iterrows():
            cells = [
                "–" if math.isnan(r["rank"]) else str(int(r["rank"])),
                escape(str(r["strategy"])),
                f"{r['seeds']}" + (f" (+{r['not_ok']} failed)" if r["not_ok"] else ""),
            ]
            cells += [_fmt(r[f"{m}_mean"], r[f"{m}_std"], stacked=stacked) + fewer_values(r, m) for m in shown]
            cells.append(_fmt(r["train_seconds_mean"], r["train_seconds_std"], pct=False, stacked=stacked))
            table.add_row(*cells)
        console.print(table)


def _need_out(out, name: str):
    if out is None:
        raise UserError(f"the {name} reporter writes files: give an output folder (--out)")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    return out


def markdown_report(tables, out, console) -> None:
    console.print(f"wrote {write_markdown(tables, _need_out(out, 'markdown'))}", soft_wrap=True)


def html_report(tables, out, console) -> None:
    console.print(f"wrote {write_html(tables, _need_out(out, 'html'))}", soft_wrap=True)


@hookimpl
def register_reporters(register):
    register("console", console_report, description="leaderboard table in the terminal")
    register("markdown", markdown_report, description="report.md with PNG plots, in the output folder")
    register("html", html_report, description="self-contained report.html (plots embedded), in the output folder")
