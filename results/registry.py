"""Published results: a small registry of numbers that papers printed, shipped with clbench as data
files (``results/published/<entry>.toml``), each number with its provenance, for reports to show
beside what clbench measured. A suite names an entry with ``published = "<entry>"``
(docs/suites.md); ``clbench report`` then shows the entry's rows, labelled "published, not run
here", beside the suite's measured ones (docs/reports.md, which also says how to add an entry).

An entry file holds the entry's ``name`` (its file's stem), a ``title``, the ``benchmark`` the
papers ran, and its rows (``[[rows]]``). Every row has the fields of :data:`ROW_FIELDS`; a field
given at the top of the file is the default of every row that does not give it, so that a table's
rows need not repeat their paper, except ``note``: a row's own note is added to the file's.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from clbench.errors import UserError

#: Every row's fields (after the file's defaults are applied), and what each holds. All are
#: non-empty strings but ``value`` (a finite number), ``strategy`` (may be empty: no clbench
#: strategy is the paper's method) and the optional ``spread``/``spread_kind``.
ROW_FIELDS: dict[str, str] = {
    "paper": "authors, year, title and where it appeared (venue, arXiv id and version)",
    "url": "where the paper can be read",
    "table": "the table (or figure) the value is printed in, and the row/column where needed",
    "model": "the model the paper ran",
    "protocol": "the paper's protocol: data, task orders, what is averaged",
    "method": "the method as the paper names it",
    "strategy": "the clbench strategy that corresponds to the method, or empty",
    "metric": "one of METRICS",
    "value": "the number as printed (percentages as percentages)",
    "note": "how the paper's protocol differs from clbench's suite, and anything a reader must know",
    "checked": "against what text the value was checked, when and how",
}
OPTIONAL_FIELDS: dict[str, str] = {
    "spread": "the ± the paper prints beside the value",
    "spread_kind": "what the spread is: 'sem' (standard error of the mean) or 'sd' (standard deviation)",
}
#: The metrics a row may hold: the summary metrics of the same definition (docs/results.md; in %),
#: and metrics clbench does not compute, shown in columns of their own.
METRICS: dict[str, str] = {
    "acc": "ACC: mean accuracy on every task after the last (OP in TRACE), %",
    "bwt": "BWT: backward transfer, %",
    "fwt": "FWT: forward transfer, %",
    "forgetting": "forgetting, %",
    "general_ability_delta": "TRACE's General Ability Delta: mean change of six general benchmarks' scores, points",
}
SPREAD_KINDS = ("sem", "sd")


@dataclass(frozen=True)
class Entry:
    """A registry entry: its name, title, the benchmark it is about, and its rows (dicts with
    every field of :data:`ROW_FIELDS`, and ``spread``/``spread_kind`` where the paper gives one)."""

    name: str
    title: str
    benchmark: str
    note: str  # what every row's note starts with: how the suite's protocol differs
    rows: tuple[dict, ...]


def _fail(where: str, msg: str) -> None:
    raise ValueError(f"{where}: {msg}")


def parse_entry(data: dict, where: str, name: str) -> Entry:
    """An :class:`Entry` from a parsed entry file, every row checked against :data:`ROW_FIELDS`;
    a ValueError naming ``where`` and the row otherwise."""
    known = {"name", "title", "benchmark", "rows", *ROW_FIELDS, *OPTIONAL_FIELDS}
    for key in data:
        if key not in known:
            _fail(where, f"unknown field {key!r}")
    if data.get("name") != name:
        _fail(where, f"field 'name' must be the file's stem {name!r}, got {data.get('name')!r}")
    for key in ("title", "benchmark"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            _fail(where, f"field {key!r} must be a non-empty string")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        _fail(where, "no [[rows]]")
    defaults = {k: v for k, v in data.items() if k in ROW_FIELDS or k in OPTIONAL_FIELDS}
    out = []
    for i, raw in enumerate(rows):
        at = f"{where}: rows[{i}]"
        if not isinstance(raw, dict):
            _fail(at, "must be a table")
        for key in raw:
            if key not in ROW_FIELDS and key not in OPTIONAL_FIELDS:
                _fail(at, f"unknown field {key!r} (fields: {', '.join([*ROW_FIELDS, *OPTIONAL_FIELDS])})")
        row = {**defaults, **raw}
        own = raw.get("note", "") if "note" in defaults else ""
        if own and isinstance(own, str) and isinstance(defaults["note"], str):
            row["note"] = f"{defaults['note']}; {own}"
        row["own_note"] = own if isinstance(own, str) else ""
        for key in ROW_FIELDS:
            v = row.get(key)
            if key == "value":
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    _fail(at, f"field 'value' must be a finite number, got {v!r}")
            elif not isinstance(v, str) or (key != "strategy" and not v.strip()):
                _fail(at, f"field {key!r} must be a {'' if key == 'strategy' else 'non-empty '}string, got {v!r}")
        if row["metric"] not in METRICS:
            _fail(at, f"unknown metric {row['metric']!r} (metrics: {', '.join(METRICS)})")
        if ("spread" in row) != ("spread_kind" in row):
            _fail(at, "'spread' and 'spread_kind' go together")
        if "spread" in row:
            s = row["spread"]
            if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s) or s < 0:
                _fail(at, f"field 'spread' must be a number >= 0, got {s!r}")
            if row["spread_kind"] not in SPREAD_KINDS:
                _fail(at, f"field 'spread_kind' must be one of {', '.join(SPREAD_KINDS)}, got {row['spread_kind']!r}")
        row["value"] = float(row["value"])
        out.append(row)
    seen = set()
    for row in out:
        key = (row["paper"], row["table"], row["method"], row["model"], row["protocol"], row["metric"])
        if key in seen:
            _fail(where, f"two rows for {row['method']!r}, {row['metric']!r} from {row['table']}")
        seen.add(key)
    common = defaults.get("note", "")
    return Entry(name, data["title"], data["benchmark"], common if isinstance(common, str) else "", tuple(out))


@cache
def entries() -> dict[str, Entry]:
    """Every entry of the registry shipped with clbench, by name."""
    out = {}
    folder = resources.files("clbench.results") / "published"
    for f in sorted(folder.iterdir(), key=lambda p: p.name):
        if f.name.endswith(".toml"):
            name = f.name[: -len(".toml")]
            out[name] = parse_entry(tomllib.loads(f.read_text(encoding="utf-8")), f"published/{f.name}", name)
    return out


def entry(name: str) -> Entry:
    """The entry ``name``; a one-line :class:`UserError` listing the entries otherwise."""
    known = entries()
    if name not in known:
        raise UserError(f"no published results named {name!r} (registry entries: {', '.join(sorted(known))})")
    return known[name]


def builtin_suite_entry(suite: str) -> str:
    """The entry the built-in suite named ``suite`` names (``published``), or "": how a report
    finds the entry of results written before cells recorded it."""
    f = resources.files("clbench.suites") / f"{suite}.toml"
    if not f.is_file():
        return ""
    value = tomllib.loads(f.read_text(encoding="utf-8")).get("published", "")
    return value if isinstance(value, str) else ""
