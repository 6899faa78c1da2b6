"""The registry of published results: every row against its schema and provenance, the suite
field that names an entry, and the report that shows the published rows beside the measured
ones, labelled as not run here."""

import copy
import math
import re
import tomllib

import pytest

from clbench.errors import UserError
from clbench.results import registry
from clbench.results.report import write_html, write_markdown
from clbench.suite import builtin_suites, parse_suite
from conftest import make_suite


def test_every_row_of_every_entry_has_its_schema_and_provenance(host):
    entries = registry.entries()
    assert {"olora-standard", "olora-long", "trace", "split-cifar100-class-il"} <= set(entries)
    strategies = set(host.names("strategies"))
    for name, entry in entries.items():
        assert entry.name == name and entry.title and entry.benchmark and entry.note
        assert entry.rows
        for row in entry.rows:
            where = f"{name}: {row['method']}, {row['metric']}"
            for field in registry.ROW_FIELDS:
                assert field in row, where
                if field == "value":
                    assert isinstance(row["value"], float) and math.isfinite(row["value"]), where
                elif field != "strategy":
                    assert isinstance(row[field], str) and row[field].strip(), (where, field)
            assert row["strategy"] == "" or row["strategy"] in strategies, where  # a clbench strategy, or none
            assert row["metric"] in registry.METRICS, where
            assert re.search(r"\b(19|20)\d\d\b", row["paper"]), where  # the year
            assert row["url"].startswith("https://"), where
            assert re.match(r"Table \d", row["table"]), where  # where in the paper the value is printed
            assert row["note"].startswith(entry.note), where  # how the protocol differs, on every row
            if row["metric"] in ("acc", "forgetting"):
                assert 0 <= row["value"] <= 100, where  # percentages as percentages
            if "spread" in row:
                assert row["spread"] >= 0 and row["spread_kind"] in registry.SPREAD_KINDS, where


def test_the_values_the_entries_were_checked_for():
    """A few values as their papers print them (read again in the papers' text)."""
    def value(entry, method, metric="acc"):
        (row,) = [r for r in registry.entry(entry).rows if r["method"] == method and r["metric"] == metric]
        return row["value"], row.get("spread")

    assert value("trace", "SeqFT") == (48.7, None) and value("trace", "SeqFT", "bwt") == (-8.3, None)
    assert value("trace", "Replay", "general_ability_delta") == (-2.31, None)
    assert value("split-cifar100-class-il", "None (lower target)") == (7.71, 0.18)
    assert value("split-cifar100-class-il", "Joint (upper target)") == (49.78, 0.21)
    assert value("olora-standard", "FT∗ (SeqFT)") == (28.5, None) and value("olora-standard", "MTL∗ (multi-task)") == (80.0, None)
    assert value("olora-long", "FT∗ (SeqFT)") == (7.4, None)


GOOD = {
    "name": "x", "title": "t", "benchmark": "b", "paper": "A et al. 2020, T", "url": "https://x", "table": "Table 1",
    "model": "m", "protocol": "p", "note": "n", "checked": "c",
    "rows": [{"method": "M", "strategy": "naive", "metric": "acc", "value": 50.0}],
}


@pytest.mark.parametrize("change, message", [
    (lambda d: d["rows"][0].pop("value"), "field 'value' must be a finite number"),
    (lambda d: d["rows"][0].update(value=float("nan")), "field 'value' must be a finite number"),
    (lambda d: d.pop("paper"), "field 'paper' must be a non-empty string"),
    (lambda d: d["rows"][0].update(table=""), "field 'table' must be a non-empty string"),
    (lambda d: d["rows"][0].update(metric="accuracy"), "unknown metric 'accuracy'"),
    (lambda d: d["rows"][0].update(spread=0.5), "'spread' and 'spread_kind' go together"),
    (lambda d: d["rows"][0].update(spread=-1, spread_kind="sem"), "field 'spread' must be a number >= 0"),
    (lambda d: d["rows"][0].update(colour="red"), "unknown field 'colour'"),
    (lambda d: d.update(name="y"), "field 'name' must be the file's stem"),
    (lambda d: d["rows"].append(dict(d["rows"][0])), "two rows for 'M', 'acc'"),
    (lambda d: d.update(rows=[]), "no [[rows]]"),
])
def test_a_row_against_the_schema_is_refused_with_its_place(change, message):
    data = copy.deepcopy(GOOD)
    registry.parse_entry(copy.deepcopy(data), "published/x.toml", "x")
    change(data)
    with pytest.raises(ValueError, match=re.escape(message)):
        registry.parse_entry(data, "published/x.toml", "x")


def test_the_suite_field_names_an_entry(host):
    for name in ("olora-standard", "olora-long", "trace"):
        assert registry.entry(tomllib.loads(builtin_suites()[name])["published"]).name == name
    suite = parse_suite({**make_suite(["naive"]), "published": "trace"}, "t.toml")
    assert suite.published == "trace" and {c.published for c in suite.cells} == {"trace"}
    plain = parse_suite(make_suite(["naive"]), "t.toml")
    assert [c.run_id for c in suite.cells] == [c.run_id for c in plain.cells]  # not part of the hash
    with pytest.raises(UserError, match=r"^t.toml: no published results named 'nope' \(registry entries: olora-long, olora-standard"):
        parse_suite({**make_suite(["naive"]), "published": "nope"}, "t.toml")
    with pytest.raises(UserError, match="field 'published' must be the name of a registry entry"):
        parse_suite({**make_suite(["naive"]), "published": 3}, "t.toml")


def test_the_report_shows_published_rows_beside_measured_ones(run_suite_dict, tmp_path):
    data = {**make_suite(["naive", "joint"], stream_params={"patch_size": 4, "n_tasks": 2}), "published": "split-cifar100-class-il"}
    _, tables = run_suite_dict(data)
    assert set(tables.cells["published"]) == {"split-cifar100-class-il"}
    text = write_markdown(tables, tmp_path / "rep").read_text(encoding="utf-8")
    assert "## Published results beside measured ones: Split CIFAR-100, class-incremental" in text
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("| strategy | what |"))
    assert header == "| strategy | what | ACC | model | source |"
    rows = [ln for ln in lines if ln.startswith("| naive |") or ln.startswith("| joint |") or ln.startswith("| – |")]
    naive = [ln for ln in rows if ln.startswith("| naive |")]
    assert naive[0].startswith("| naive | measured here (1 cells) |")  # the measured row first ...
    assert naive[1].startswith("| naive | published, not run here: None (lower target) | 7.7 ± 0.2 (s.e.m.) |")  # ... then the paper's
    assert any(ln.startswith("| joint | published, not run here: Joint (upper target) | 49.8 ± 0.2 (s.e.m.) |") for ln in rows)
    assert any("published, not run here: iCaRL" in ln for ln in rows)  # a method clbench does not have, still shown
    assert "van de Ven, Tuytelaars & Tolias 2022, Three types of incremental learning" in text and "Table 3" in text
    html = write_html(tables, tmp_path / "rep").read_text(encoding="utf-8")
    assert "published, not run here: None (lower target)" in html

    # results of a suite that names no entry: no such section; results older than the field: the built-in suite's
    plain = tables.cells.assign(published="")
    assert "Published results" not in write_markdown(type(tables)(tables.measurements, plain, tables.summary), tmp_path / "p").read_text()
    old = tables.cells.drop(columns=["published"]).assign(suite="trace")
    text = write_markdown(type(tables)(tables.measurements, old, tables.summary.assign(suite="trace")), tmp_path / "o").read_text()
    assert "## Published results beside measured ones: TRACE, LLaMA-2-7B-Chat" in text
    assert "general ability Δ (TRACE)" in text and "published, not run here: LoraSeqFT" in text
