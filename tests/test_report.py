"""Reports: leaderboard numbers, per-task views, the Markdown and self-contained HTML files, and
the comparison of two result sets. The tables are built from accuracy matrices chosen by hand."""

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from clbench.cli import main
from clbench.errors import UserError
from clbench.results import Tables, load, summarize
from clbench.results.analysis import accuracy_curves, compare, forgetting_per_task, leaderboard
from clbench.results.report import write_html, write_markdown
from clbench.results.store import MEASUREMENT_COLUMNS, prepare_out, write_cell
from clbench.loop import cell_row
from clbench.suite import parse_suite
from conftest import make_suite

PNG = b"\x89PNG\r\n\x1a\n"


def naive_R(last: float) -> np.ndarray:
    """Forgets: task 0 (0.9 → 0.0), task 1 (0.8 → 0.1)."""
    return np.array([[0.9, 0.0, 0.0], [0.1, 0.8, 0.0], [0.0, 0.1, last]])


def flat_R(v: float) -> np.ndarray:
    return np.array([[0.8, 0.1, 0.1], [0.8, 0.8, 0.1], [v, v, v]])


def build(host, matrices: dict, failed=(), seconds=None, stream_params=None) -> list[tuple[dict, list[dict]]]:
    """Cells rows and measurements as the runner writes them: ``matrices[(strategy, seed)] = R``
    (accuracy before training 0.1 everywhere); ``failed``: (strategy, seed) that failed."""
    strategies = sorted({s for s, _ in matrices} | {s for s, _ in failed})
    seeds = sorted({d for _, d in matrices} | {d for _, d in failed})
    stream_params = {"patch_size": 4, "n_tasks": 3, **(stream_params or {})}
    suite = parse_suite(make_suite(strategies, seeds=seeds, stream_params=stream_params), "t.toml")
    out = []
    for cell in suite.cells:
        key = (cell.strategy.label, cell.seed)
        if key not in matrices and key not in failed:
            continue
        row = cell_row(cell)
        row.update(tasks='["0-1", "2-3", "4-5"]', n_tasks=3, memory_kind="process-rss", peak_memory_mb=100.0,
                   trainable_params=1000, train_seconds=(seconds or {}).get(key, 1.0))
        meas = []
        if key in failed:
            row.update(status="failed", error="RuntimeError: boom")
        else:
            row["status"] = "ok"
            base = {k: row[k] for k in ("run_id", "suite", "stream", "order", "strategy", "params", "seed")}
            R = matrices[key]
            for j in range(3):
                meas.append({**base, "train_task": -1, "eval_task": j, "metric": "acc", "value": 0.1})
            for i in range(3):
                for j in range(3):
                    meas.append({**base, "train_task": i, "eval_task": j, "metric": "acc", "value": R[i, j]})
        out.append((row, meas))
    return out


def tables_of(rows) -> Tables:
    cells = pd.DataFrame([r for r, _ in rows])
    meas = pd.DataFrame([m for _, ms in rows for m in ms], columns=MEASUREMENT_COLUMNS)
    return Tables(meas, cells, summarize(meas, cells))


@pytest.fixture
def tables(host):
    m = {("naive", s): naive_R(last) for s, last in [(0, 0.9), (1, 0.8), (2, 0.7)]}
    m.update({("cumulative", 0): flat_R(0.8), ("cumulative", 1): flat_R(0.8)})
    return tables_of(build(host, m, failed=[("cumulative", 2)], seconds={("naive", 0): 1.0, ("naive", 1): 2.0, ("naive", 2): 3.0}))


def test_leaderboard_mean_sd_standard_error_and_rank(tables):
    board = leaderboard(tables.summary).set_index("strategy")
    n = board.loc["naive"]
    acc = np.array([0.9 + 0.1, 0.8 + 0.1, 0.7 + 0.1]) / 3  # final rows' means
    assert n["acc_mean"] == pytest.approx(acc.mean())
    assert n["acc_std"] == pytest.approx(1 / 30)
    assert n["acc_sem"] == pytest.approx(1 / 30 / np.sqrt(3))
    assert n["forgetting_mean"] == pytest.approx((0.9 + 0.7) / 2)
    assert n["bwt_mean"] == pytest.approx(((0.0 - 0.9) + (0.1 - 0.8)) / 2)
    assert n["train_seconds_mean"] == pytest.approx(2.0) and n["train_seconds_std"] == pytest.approx(1.0)
    assert n["peak_memory_mb_mean"] == 100.0 and n["trainable_params_mean"] == 1000
    c = board.loc["cumulative"]
    assert (c["seeds"], c["not_ok"], c["acc_mean"], c["rank"]) == (2, 1, pytest.approx(0.8), 1)
    assert n["rank"] == 2
    assert list(leaderboard(tables.summary)["strategy"]) == ["cumulative", "naive"]  # by rank


def test_forgetting_per_task_and_accuracy_over_tasks(tables):
    f = forgetting_per_task(tables)
    naive = f[f["strategy"] == "naive"].groupby("task")["forgetting"].mean()
    assert naive.to_dict() == pytest.approx({0: 0.9, 1: 0.7})
    # the metric is the mean of the per-task terms
    per_cell = f.groupby(["strategy", "seed"])["forgetting"].mean()
    s = tables.summary.set_index(["strategy", "seed"])["forgetting"].dropna()
    assert per_cell.sort_index().to_numpy() == pytest.approx(s.sort_index().to_numpy())
    c = accuracy_curves(tables)
    n0 = c[(c["strategy"] == "naive") & (c["seed"] == 0)].set_index("after_task")
    assert n0["acc_seen"].to_dict() == pytest.approx({1: 0.9, 2: 0.45, 3: 1.0 / 3})
    assert n0["acc_all"].to_dict() == pytest.approx({1: 0.3, 2: 0.3, 3: 1.0 / 3})


def _two_variants(host):
    """split-digits twice: class-incremental (naive ACC 0.2, 0.4; cumulative 0.5) and
    task-incremental (naive ACC 0.8, 1.0; cumulative 0.6)."""
    cil = build(host, {("naive", 0): flat_R(0.2), ("naive", 1): flat_R(0.4), ("cumulative", 0): flat_R(0.5)},
                stream_params={"scenario": "class-incremental"})
    til = build(host, {("naive", 0): flat_R(0.8), ("naive", 1): flat_R(1.0), ("cumulative", 0): flat_R(0.6)},
                stream_params={"scenario": "task-incremental"})
    return cil, til


def test_stream_variants_are_aggregated_and_ranked_separately(host, tmp_path, capsys):
    from rich.console import Console

    cil, til = _two_variants(host)
    tables = tables_of(cil + til)
    assert len(leaderboard(tables.summary)) == 4  # naive and cumulative, on each variant
    board = leaderboard(tables.summary).set_index(["variant", "strategy"])
    cil_label, til_label = "scenario=class-incremental", "scenario=task-incremental"
    assert set(board.index.get_level_values("variant")) == {cil_label, til_label}
    assert board.loc[(cil_label, "naive"), "acc_mean"] == pytest.approx(0.3)
    assert board.loc[(til_label, "naive"), "acc_mean"] == pytest.approx(0.9)
    assert board.loc[(cil_label, "naive"), "seeds"] == 2 and board.loc[(til_label, "naive"), "seeds"] == 2
    # ranked within each variant: cumulative first in class-IL, naive first in task-IL
    assert board.loc[(cil_label, "cumulative"), "rank"] == 1 and board.loc[(cil_label, "naive"), "rank"] == 2
    assert board.loc[(til_label, "naive"), "rank"] == 1 and board.loc[(til_label, "cumulative"), "rank"] == 2

    text = write_markdown(tables, tmp_path / "rep").read_text(encoding="utf-8")
    assert f"## split-digits ({cil_label}) · order default" in text
    assert f"## split-digits ({til_label}) · order default" in text
    assert "| 1 | naive | 2 | 90.0 ± 14.1 [10.0] |" in text and "| 2 | naive | 2 | 30.0 ± 14.1 [10.0] |" in text
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert len(links) == 8 and len(set(links)) == 8  # a figure per variant, none overwritten

    console = Console(width=200, record=True)
    host.get("reporters", "console").obj(tables, None, console)
    out = console.export_text()
    assert f"split-digits ({cil_label}) · order default" in out and f"split-digits ({til_label})" in out

    # one variant alone looks as before: no label
    one = tables_of(cil)
    assert set(leaderboard(one.summary)["variant"]) == {""}
    assert "## split-digits · order default" in write_markdown(one, tmp_path / "one").read_text(encoding="utf-8")

    # compare matches variants, and says which is which
    df = compare(tables, tables, ("acc",)).set_index(["variant", "strategy"])
    assert len(df) == 4 and df.loc[(til_label, "naive"), "a_mean"] == pytest.approx(0.9)
    for name, rows in (("a", cil + til), ("b", til)):
        prepare_out(tmp_path / name)
        for row, meas in rows:
            write_cell(tmp_path / name, row, meas)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "acc"]) == 0
    out = capsys.readouterr().out
    assert f"split-digits ({til_label})" in out and "class-incremental" not in out


class Page(HTMLParser):
    """Collects what the tests check, and that every element is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.refs, self.imgs, self.tags = [], [], [], [], []
        self.tables = []  # (class, rows of cell texts)
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)
        for k in ("src", "href"):
            if k in attrs:
                self.refs.append(attrs[k])
        if tag == "img":
            self.imgs.append(attrs)
        if tag == "table":
            self.tables.append((attrs.get("class"), []))
        if tag == "tr":
            self.tables[-1][1].append([])
        if tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if tag in ("td", "th"):
            self.tables[-1][1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_html_report_is_self_contained_with_leaderboard_and_images(tables, tmp_path):
    path = write_html(tables, tmp_path / "rep")
    assert path == tmp_path / "rep" / "report.html" and list((tmp_path / "rep").iterdir()) == [path]
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.errors == [] and page.stack == []
    assert "script" not in page.tags and "link" not in page.tags  # nothing loaded from elsewhere
    # every reference is an embedded image: no broken link possible
    assert page.refs and all(r.startswith("data:image/png;base64,") for r in page.refs)
    assert len(page.imgs) == 4  # matrices, curves, forgetting, cost for the one (stream, order)
    for img in page.imgs:
        assert base64.b64decode(img["src"].split(",", 1)[1], validate=True).startswith(PNG)
        assert img["alt"]
    boards = [rows for cls, rows in page.tables if cls == "leaderboard"]
    assert len(boards) == 1
    header, *rows = boards[0]
    assert header == ["rank", "strategy", "seeds", "ACC", "AIA", "BWT", "FWT", "forgetting", "plasticity",
                      "train s", "peak MB", "trainable params"]
    assert [r[:3] for r in rows] == [["1", "cumulative", "2 (+1 failed)"], ["2", "naive", "3"]]
    assert rows[1][3] == "30.0 ± 3.3 [1.9]"  # ACC: mean ± sd [standard error], in %
    assert rows[1][8].startswith("83.3")  # plasticity: mean diagonal, (0.9 + 0.8 + (0.9, 0.8, 0.7)) / 3
    assert rows[1][9] == "2.0 ± 1.0" and rows[1][11] == "1,000"
    others = [rows for cls, rows in page.tables if cls is None]
    assert ["split-digits", "default", "cumulative", "2", "failed", "RuntimeError: boom"] in others[-1]
    # provenance: which suite, model, training settings and versions produced the numbers
    prov = dict(r for r in others[0][1:])
    assert prov["suites"] == "test" and '"d_model": 32' in prov["model"] and '"epochs": 1' in prov["training"]
    assert '"clbench"' in prov["versions"] and '"torch"' in prov["versions"]


def test_markdown_report_links_its_figures(tables, tmp_path):
    path = write_markdown(tables, tmp_path / "rep")
    text = path.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert len(links) == 4
    for link in links:
        assert (tmp_path / "rep" / link).read_bytes().startswith(PNG)
    assert "| 2 | naive | 3 | 30.0 ± 3.3 [1.9] |" in text
    assert "| rank | strategy | seeds | ACC | AIA | BWT | FWT | forgetting | plasticity | train s | peak MB | trainable params |" in text
    # a section says which scenario and tasks it is about; one word for cells that did not finish
    assert "tasks in order: 0-1, 2-3, 4-5; stream parameters:" in text
    assert "6 cells (5 ok, 1 failed)" in text and "## Failed cells" in text
    assert "not ok" not in text and "diverged," not in text


def _welch_sets(host):
    """A: naive's ACC over seeds 0.2, 0.3, 0.4; B: 0.6, 0.7, 0.8 (flat final rows)."""
    a = build(host, {("naive", s): flat_R(v) for s, v in enumerate([0.2, 0.3, 0.4])})
    b = build(host, {("naive", s): flat_R(v) for s, v in enumerate([0.6, 0.7, 0.8])})
    return a, b


def test_compare_uses_welchs_t_test_over_seeds(host):
    a, b = map(tables_of, _welch_sets(host))
    df = compare(a, b, ("acc",), test="welch").iloc[0]
    assert (df["strategy"], df["a_n"], df["b_n"], df["test"]) == ("naive", 3, 3, "welch")
    assert df["diff"] == pytest.approx(0.4)
    # t = 0.4 / sqrt(0.01/3 + 0.01/3); Welch-Satterthwaite df = 4; two-sided p from t(4)
    assert df["t"] == pytest.approx(4.898979, rel=1e-6)
    assert df["p"] == pytest.approx(0.0080499, rel=1e-4)
    same = compare(a, a, ("acc",), test="welch").iloc[0]
    assert same["diff"] == 0 and same["p"] == pytest.approx(1.0)
    with pytest.raises(UserError, match="no finished cells of strategy 'ewc'"):
        compare(a, b, strategy_a="naive", strategy_b="ewc")
    with pytest.raises(UserError, match=r"unknown metric 'accuracy' \(metrics: acc, aia, bwt"):
        compare(a, b, ("accuracy",))
    # any summary metric can be compared: plasticity = mean diagonal, (0.8 + 0.8 + v) / 3
    assert compare(a, b, ("plasticity",)).iloc[0]["diff"] == pytest.approx(0.4 / 3)


def test_compare_pairs_the_seeds_and_adjusts_by_holm(host, capsys):
    a = tables_of(build(host, {("naive", s): flat_R(v) for s, v in enumerate([0.2, 0.3, 0.4])}))
    b = tables_of(build(host, {("naive", s): flat_R(v) for s, v in enumerate([0.6, 0.75, 0.8])}))
    df = compare(a, b, ("acc", "plasticity")).set_index("metric")
    # the same seeds on both sides: the paired t-test. ACC differences 0.40, 0.45, 0.40: mean 5/12,
    # sd 1/(20 sqrt 3), t = (5/12) / (1/60) = 25 on 2 degrees of freedom, p = 1 - t / sqrt(t^2 + 2)
    acc = df.loc["acc"]
    assert acc["test"] == "paired-t" and acc["t"] == pytest.approx(25.0)
    assert acc["p"] == pytest.approx(1 - 25 / np.sqrt(627))
    # plasticity differs by a third of ACC's differences: the same t and p
    assert df.loc["plasticity", "p"] == pytest.approx(acc["p"])
    # Holm over the two tests: both p doubled, then made non-decreasing
    assert df["p_holm"].to_numpy() == pytest.approx([2 * acc["p"]] * 2)
    # Wilcoxon's signed-rank test: three positive differences, exact two-sided p = 2 / 2^3
    w = compare(a, b, ("acc",), test="wilcoxon").iloc[0]
    assert w["test"] == "wilcoxon" and w["p"] == pytest.approx(0.25) and np.isnan(w["t"])
    # seeds that do not pair up: Welch's test (auto), nothing (asked for a paired test)
    b2 = tables_of(build(host, {("naive", s): flat_R(v) for s, v in [(0, 0.6), (1, 0.75), (5, 0.8)]}))
    assert compare(a, b2, ("acc",)).iloc[0]["test"] == "welch"
    assert np.isnan(compare(a, b2, ("acc",), test="paired-t").iloc[0]["p"])
    with pytest.raises(UserError, match="unknown test 'sign'"):
        compare(a, b, ("acc",), test="sign")
    # a seed read twice (the same configuration and seed under another run id) is counted once
    rows = build(host, {("naive", s): flat_R(v) for s, v in enumerate([0.2, 0.3, 0.4])})
    row, meas = rows[0]
    rows.append(({**row, "run_id": "other"}, [{**m, "run_id": "other", "value": 0.9} for m in meas]))
    twice = tables_of(rows)
    got = compare(twice, b, ("acc",)).iloc[0]
    assert got["a_n"] == 3 and got["a_mean"] == pytest.approx(0.3) and got["test"] == "paired-t"
    assert "repeat a configuration and seed already counted" in capsys.readouterr().err


def test_holm_adjustment_by_hand():
    from clbench.results.analysis import holm

    # sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04 -> non-decreasing 0.03, 0.06, 0.06
    got = holm(np.array([0.01, 0.04, 0.03, np.nan]))
    assert got[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(got[3])
    assert holm(np.array([0.5, 0.9])) == pytest.approx([1.0, 1.0])  # at most 1


def test_seeds_and_the_values_behind_each_mean(host):
    from clbench.results.summary import aggregate, fewer_values

    t = tables_of(build(host, {("naive", s): naive_R(last) for s, last in [(0, 0.9), (1, 0.8), (2, 0.7)]}))
    summary = t.summary.copy()
    summary.loc[summary["seed"] == 2, "bwt"] = np.nan  # a metric undefined for one cell
    row = aggregate(summary).iloc[0]
    assert (row["seeds"], row["acc_n"], row["bwt_n"]) == (3, 3, 2)
    assert fewer_values(row, "bwt") == " (n=2)" and fewer_values(row, "acc") == ""


def test_report_and_compare_commands(host, tmp_path, capsys):
    a, b = _welch_sets(host)
    for name, rows in (("a", a), ("b", b)):
        prepare_out(tmp_path / name)
        for row, meas in rows:
            write_cell(tmp_path / name, row, meas)
    # the same configs in both folders: load takes each cell from the first folder that has it
    both = load(tmp_path / "a", tmp_path / "b")
    assert len(both.cells) == 3 and both.sources == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert both.summary["acc"].sort_values().to_numpy() == pytest.approx([0.2, 0.3, 0.4])

    assert main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "report.html").exists()
    assert len(list((tmp_path / "rep" / "figures").glob("*.png"))) == 4
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "acc"]) == 0
    out = capsys.readouterr().out
    assert "naive" in out and "+40.0" in out and "paired-t" in out  # the same seeds on both sides
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "acc", "--test", "welch"]) == 0
    out = capsys.readouterr().out
    assert "welch" in out and "0.00805 *" in out  # one test: Holm leaves p as it is
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"clbench: error: results folder not found: {tmp_path / 'missing'}"


def test_file_reporters_need_an_output_folder(host):
    from rich.console import Console

    with pytest.raises(UserError, match="the html reporter writes files"):
        host.get("reporters", "html").obj(None, None, Console())


def test_cost_error_bars_stop_at_zero(tables, monkeypatch):
    from clbench.results import figures

    figs = []
    monkeypatch.setattr(figures, "png", lambda fig: figs.append(fig) or b"")
    board = leaderboard(tables.summary).assign(train_seconds_mean=[1.0, 2.0], train_seconds_std=[5.0, 1.0])
    figures.cost_bars("split-digits", "default", board)
    ax = figs[0].axes[0]
    lows = [seg[:, 0].min() for coll in ax.collections for seg in coll.get_segments()]
    assert lows and min(lows) >= 0  # mean 1 ± sd 5: the bar starts at 0, not at -4
    assert max(seg[:, 0].max() for coll in ax.collections for seg in coll.get_segments()) == pytest.approx(6.0)


def test_training_loss_is_plotted(host, tmp_path, run_suite_dict):
    from clbench.results.analysis import train_losses

    _, t = run_suite_dict(make_suite(["naive", "ewc"], stream_params={"patch_size": 4, "n_tasks": 2},
                                     training={"epochs": 2}))
    df = train_losses(t)
    assert set(df["strategy"]) == {"naive", "ewc"} and sorted(df["step"].unique()) == [1, 2, 3, 4]
    text = write_markdown(t, tmp_path / "rep").read_text(encoding="utf-8")
    assert "### Training loss" in text
    link = re.search(r"!\[training loss per epoch of [^\]]+\]\(([^)]+)\)", text).group(1)
    assert (tmp_path / "rep" / link).read_bytes().startswith(PNG)


def _folder(rows, path):
    prepare_out(path)
    for row, meas in rows:
        write_cell(path, row, meas)
    return path


def test_show_formats_and_filters(host, tmp_path, capsys):
    m = {("naive", s): naive_R(last) for s, last in [(0, 0.9), (1, 0.8), (2, 0.7)]}
    m.update({("cumulative", 0): flat_R(0.8), ("cumulative", 1): flat_R(0.8)})
    d = _folder(build(host, m, failed=[("cumulative", 2)]), tmp_path / "res")
    capsys.readouterr()
    assert main(["show", str(d), "--format", "markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0] == "| stream | order | rank | strategy | seeds | ACC | AIA | BWT | FWT | forgetting | plasticity | train s | peak MB | trainable params |"
    assert md[3].startswith("| split-digits | default | 2 | naive | 3 | 30.0 ± 3.3 [1.9] |")
    assert main(["show", str(d), "--format", "csv", "--strategy", "naive"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(df["strategy"]) == ["naive"] and df["acc_mean"].iloc[0] == pytest.approx(0.3)
    assert main(["show", str(d), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert tex.startswith(r"\begin{tabular}{llrlr") and tex.rstrip().endswith(r"\end{tabular}")
    assert r"30.0 $\pm$ 3.3 [1.9]" in tex and r"2 (+1 failed)" in tex
    assert main(["show", str(d), "--stream", "split-digits", "--strategy", "cumulative"]) == 0
    out = capsys.readouterr().out
    assert "cumulative" in out and "naive" not in out and "failed (failed): cumulative seed 2" in out
    for flag, name in (("--strategy", "replay"), ("--stream", "mnist")):
        assert main(["show", str(d), flag, name]) == 2
        err = capsys.readouterr().err
        assert err.startswith("clbench: error: no cells of") and repr(name) in err and err.count("\n") == 1


def test_show_fits_100_columns(host, tmp_path, capsys, monkeypatch):
    m = {("naive", s): naive_R(last) for s, last in [(0, 0.9), (1, 0.8), (2, 0.7)]}
    m.update({("cumulative", s): flat_R(0.8 - s / 10) for s in range(3)})
    d = _folder(build(host, m), tmp_path / "res")
    monkeypatch.setenv("COLUMNS", "100")
    capsys.readouterr()
    assert main(["show", str(d)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 100
    # nothing cut: every strategy name and number whole (the sd under its mean)
    assert "…" not in "".join(lines)
    assert any("cumulative" in ln and " 70.0 │" in ln for ln in lines)
    assert any("│ ± 10.0 │" in ln for ln in lines) and any("│  -80.0 │" in ln for ln in lines)


def test_matrix_axes_show_task_names(tables, monkeypatch):
    from clbench.results import analysis, figures

    figs = []
    monkeypatch.setattr(figures, "png", lambda fig: figs.append(fig) or b"")
    tables.cells = tables.cells.assign(tasks='["positive-negative", "2-3", "4-5"]')
    figures.heatmaps(tables, "split-digits", "default", analysis.mean_matrices(tables)[("split-digits", "", "default")])
    ax = figs[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["positive-ne…", "2-3", "4-5"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["positive-ne…", "2-3", "4-5"]


def test_the_report_says_where_a_number_stands_in_for_a_papers(tables):
    from clbench.results.report import blocks, stand_ins

    assert stand_ins(tables) == []  # split-digits: nothing stands in
    cells = tables.cells.copy()
    cells.loc[cells.index[0], ["stream", "stream_params"]] = ["trace", '{"metrics": {"20Minuten": "trace_rouge_l", "FOMC": "strict_match"}}']
    meas = pd.concat([tables.measurements, pd.DataFrame([{**tables.measurements.iloc[0].to_dict(), "eval_task": -1,
                                                          "metric": "general_ppl", "value": 12.0}])])
    lines = stand_ins(Tables(meas, cells, tables.summary))
    assert len(lines) == 2 and "stand-in for the benchmarks (MMLU" in lines[0]
    assert lines[1] == "TRACE's 20Minuten is scored by trace_rouge_l here, not by TRACE's sari."  # FOMC's is TRACE's
    assert ("p", lines[1]) in blocks(Tables(meas, cells, tables.summary))
