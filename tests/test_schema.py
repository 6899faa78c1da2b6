"""The result tables' columns have one home (clbench.results.schema) and one description
(docs/results.md): every column on disk is described, and every described column exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import make_suite

from clbench.results import schema

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()


def _table(marker: str) -> list[str]:
    rest = DOCS.split(marker, 1)[1]
    block = rest[rest.index("\n|"):].split("\n\n", 1)[0]
    names = []
    for line in block.strip().splitlines():
        first = line.split("|")[1].strip()
        if first in ("column", "---") or set(first) <= {"-"}:
            continue
        names += [n.strip() for n in first.split(",")]
    return names


def test_every_column_on_disk_is_in_the_schema_and_described(run_suite_dict):
    _, tables = run_suite_dict(make_suite(["naive", "cumulative"], stream_params={"patch_size": 4, "n_tasks": 2}))
    cells_doc, meas_doc = _table("**cells**"), _table("**measurements**")

    assert list(tables.measurements.columns) == list(schema.MEASUREMENTS)
    assert sorted(meas_doc) == sorted(schema.MEASUREMENTS)

    assert list(tables.cells.columns) == list(schema.CELLS)
    assert set(tables.cells["attention"]) == {"sdpa"}  # the CPU's attention
    assert sorted(cells_doc) == sorted(schema.CELLS), (set(cells_doc) ^ set(schema.CELLS))

    metrics = schema.metric_columns(tables.summary.columns)
    assert list(tables.summary.columns) == [*schema.IDENTITY, *schema.COST_COLUMNS, *schema.COST_KINDS, *metrics,
                                            "reference_run_id", "units"]
    summary_doc = DOCS.split("**summary**", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`(\w+)`", summary_doc))
    assert set(schema.IDENTITY) | set(schema.COST_COLUMNS) | set(schema.COST_KINDS) | {"reference_run_id", "units"} <= named
    metric_rows = set(re.findall(r"^\| `(\w+)` \|", DOCS, flags=re.M))
    assert set(metrics) == metric_rows, set(metrics) ^ metric_rows


def test_a_cells_row_needs_its_identity():
    with pytest.raises(KeyError, match="run_id"):
        schema.new_cell_row({})
