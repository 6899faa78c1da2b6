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
from .summary import fewer_values

HEADINGS = {"acc": "ACC", "aia": "AIA", "bwt": "BWT", "fwt": "FWT", "forgetting": "forgetting", "plasticity": "plasticity",
            "general_ppl_change": "general ppl Δ"}


def _pct(mean, std, sem) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    s = f"{mean * 100:.1f}"
    if not pd.isna(std):
        s += f" ± {std * 100:.1f}"
    if not pd.isna(sem):
        s += f" [{sem * 100:.1f}]"
    return s


def _num(fmt: str, mean, std) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    s = fmt.format(mean)
    if not pd.isna(std) and std > 0:
        s += " ± " + fmt.format(std)
    return s


def leaderboard_rows(board: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The leaderboard of one (stream, stream params, order) as a header and rows of strings."""
    metrics = [m for m in BOARD if f"{m}_mean" in board and (m not in WHERE_MEASURED or board[f"{m}_mean"].notna().any())]
    cost = [(c.column, c.heading, c.format) for c in BOARD_COST if f"{c.column}_mean" in board]
    header = ["rank", "strategy", "seeds", *(HEADINGS[m] for m in metrics), *(h for _c, h, _f in cost)]
    rows = []
    for _, r in board.iterrows():
        rows.append([
            "–" if pd.isna(r["rank"]) else str(int(r["rank"])),
            str(r["strategy"]),
            f"{r['seeds']}" + (f" (+{r['not_ok']} failed)" if r["not_ok"] else ""),
            *(_pct(r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_sem"]) + fewer_values(r, m) for m in metrics),
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
            lines.append("|" + "|".join("---" if h in ("strategy", "stream", "order", "status", "error", "what", "value") else "---:" for h in header) + "|")
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            lines.append("")
        elif b[0] == "figure":
            f: Figure = b[1]
            path = f"{figures_dir}/{f.name}.png"
            files[path] = f.png
            lines += [f"![{f.alt}]({path})", ""]
    return "\n".join(lines), files


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }
th:nth-child(2), td:nth-child(2) { text-align: left; }
th { background: #f4f4f4; }
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
            parts.append('<table class="leaderboard">' if header[0] == "rank" else "<table>")
            parts.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append("</tbody></table>")
        elif b[0] == "figure":
            f: Figure = b[1]
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(f'<figure><img alt="{e(f.alt)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(f.title)}</figcaption></figure>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
