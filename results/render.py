"""Writing a report's blocks as text: Markdown (with the PNG files it links to) and one
self-contained HTML page. A report is a list of blocks: ``("h1"|"h2"|"h3"|"p", text)``,
``("table", header, rows)`` and ``("figure", Figure)`` (:class:`clbench.results.figures.Figure`);
:func:`leaderboard_rows` turns a leaderboard into such a table."""

from __future__ import annotations

import base64
import html

import pandas as pd

from .analysis import BOARD, BOARD_COST, WHERE_MEASURED
from .figures import Figure
from .summary import fewer_values, unit_columns

#: Columns of text (left-aligned); the others hold numbers (right-aligned).
TEXT_COLUMNS = frozenset({"strategy", "stream", "order", "status", "error", "what", "value", "model", "source", "dimension",
                          "best configuration", "best value", "method", "note"})
#: How a report labels a row of published results (clbench.results.registry) beside measured ones.
PUBLISHED = "published, not run here"
HEADINGS = {"acc": "ACC", "aia": "AIA", "bwt": "BWT", "fwt": "FWT", "forgetting": "forgetting", "plasticity": "plasticity",
            "general_ppl_change": "general ppl Δ", "intransigence": "intransigence", "intransigence_last": "intransigence (last)",
            "forgetting_since_learned": "forgetting since learned", "general_bpb_change": "general bpb Δ"}


def _pct(mean, std, sem, pct: bool = True) -> str:
    """``mean ± sd [sem]``: in % (``pct``) with one decimal (none from 1000 % on: a perplexity can
    grow a thousandfold, and the decimals would only widen the column), or as they are (perplexities,
    bits per byte) to three significant digits."""
    if mean is None or pd.isna(mean):
        return "–"
    if pct:
        fmt = "{:.0f}" if abs(mean) >= 10 else "{:.1f}"
        f = lambda v: fmt.format(v * 100)  # noqa: E731
    else:
        f = "{:.3g}".format
    s = f(mean)
    if not pd.isna(std):
        s += " ± " + f(std)
    if not pd.isna(sem):
        s += " [" + f(sem) + "]"
    return s


def _num(fmt: str, mean, std) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    s = fmt.format(mean)
    if not pd.isna(std) and std > 0:
        s += " ± " + fmt.format(std)
    return s


def leaderboard_rows(board: pd.DataFrame, metrics=BOARD) -> tuple[list[str], list[list[str]]]:
    """The leaderboard of one (stream, stream params, order) as a header and rows of strings:
    the ``metrics`` it has (default :data:`~clbench.results.analysis.BOARD`; ``clbench show``
    gives every metric of the summary), each kind's apart where the stream mixes kinds of task
    (:func:`~clbench.results.summary.unit_columns`), and the board's cost columns."""
    units = next((u for u in board.get("units", []) if isinstance(u, str) and u), "")
    metrics = [c for c in unit_columns(units, metrics) if f"{c[1]}_mean" in board
               and (c[0] not in WHERE_MEASURED or board[f"{c[1]}_mean"].notna().any())]
    cost = [(c.column, c.heading_in(board), c.format) for c in BOARD_COST if f"{c.column}_mean" in board]
    header = ["rank", "strategy", "seeds", *(HEADINGS.get(m, m) + (f" {k}" if k else "") for m, _c, k, _p in metrics),
              *(h for _c, h, _f in cost)]
    rows = []
    for _, r in board.iterrows():
        rows.append([
            "–" if pd.isna(r["rank"]) else str(int(r["rank"])),
            str(r["strategy"]),
            f"{r['seeds']}" + (f" (+{r['not_ok']} failed)" if r["not_ok"] else ""),
            *(_pct(r[f"{c}_mean"], r[f"{c}_std"], r[f"{c}_sem"], pct) + fewer_values(r, c) for _m, c, _k, pct in metrics),
            *(_num(f, r[f"{c}_mean"], r[f"{c}_std"]) for c, _h, f in cost),
        ])
    return header, rows


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(bl: list[tuple], figures_dir: str = "figures") -> tuple[str, dict[str, bytes]]:
    """Markdown text, and the PNG files it links to (relative path -> bytes)."""
    lines, files = [], {}
    for b in bl:
        if b[0] in ("h1", "h2", "h3"):
            lines += ["#" * int(b[0][1]) + " " + b[1], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            header, rows = b[1], b[2]
            lines.append("| " + " | ".join(map(_md_cell, header)) + " |")
            lines.append("|" + "|".join("---" if h in TEXT_COLUMNS else "---:" for h in header) + "|")
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            lines.append("")
        elif b[0] == "figure":
            f: Figure = b[1]
            path = f"{figures_dir}/{f.name}.png"
            files[path] = f.png
            lines += [f"![{f.alt}]({path})", ""]
    return "\n".join(lines), files


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 86rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
.scroll { overflow-x: auto; margin: 0.5rem 0 1.5rem; }
table { border-collapse: collapse; font-size: 0.9rem; }
.leaderboard { font-size: 0.85rem; }
.leaderboard td, .leaderboard th { padding: 0.3rem 0.4rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; vertical-align: top; }
th.text, td.text { text-align: left; }
.leaderboard td { white-space: nowrap; }  /* a value never wraps; a heading may */
th { background: #f4f4f4; }
tr.published td { color: #555; font-style: italic; background: #fafafa; }
img { max-width: 100%; }
h2 { border-top: 2px solid #ccc; padding-top: 1rem; margin-top: 2rem; }
"""


def render_html(bl: list[tuple]) -> str:
    """One self-contained HTML page: images are embedded as base64 data URIs."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>clbench report</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    for b in bl:
        if b[0] in ("h1", "h2", "h3"):
            parts.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
        elif b[0] == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "table":
            header, rows = b[1], b[2]
            cls = ['class="text"' if h in TEXT_COLUMNS else "" for h in header]
            parts.append('<div class="scroll"><table class="leaderboard">' if header[0] == "rank" else '<div class="scroll"><table>')
            parts.append("<thead><tr>" + "".join(f"<th {k}>{e(h)}</th>".replace("<th >", "<th>") for k, h in zip(cls, header)) + "</tr></thead><tbody>")
            parts += [("<tr class=\"published\">" if any(str(c).startswith(PUBLISHED) for c in r) else "<tr>")
                      + "".join(f"<td {k}>{e(c)}</td>".replace("<td >", "<td>") for k, c in zip(cls, r)) + "</tr>" for r in rows]
            parts.append("</tbody></table></div>")
        elif b[0] == "figure":
            f: Figure = b[1]
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(f'<figure><img alt="{e(f.alt)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(f.title)}</figcaption></figure>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
