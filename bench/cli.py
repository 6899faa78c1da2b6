"""The ``clbench`` command line.

Each command imports what it runs inside its function, not at the top of this module: ``clbench
--help`` and a mistyped command answer in a tenth of a second instead of the seconds that
importing torch and pandas takes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import tomllib
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import UserError
from .host import get_host  # light: pluggy and the hook specs

DEFAULT_SUITE = "quick"


def _results_table(console: Console, tables, reporter: str = "console") -> None:
    get_host().get("reporters", reporter).obj(tables, None, console)


def cmd_run(args, console: Console) -> int:
    return _with_data_dir(args, console, _run)


def _with_data_dir(args, console: Console, fn) -> int:
    # --data-dir is the default data folder of text streams, which read it from CLBENCH_DATA
    # (docs/streams.md); set for this command only.
    if not getattr(args, "data_dir", None):
        return fn(args, console)
    old = os.environ.get("CLBENCH_DATA")
    os.environ["CLBENCH_DATA"] = args.data_dir
    try:
        return fn(args, console)
    finally:
        if old is None:
            os.environ.pop("CLBENCH_DATA", None)
        else:
            os.environ["CLBENCH_DATA"] = old


def _executor_args(args) -> tuple[str, dict]:
    """The executor and its options: ``--workers`` alone means ``pool``, ``--address`` alone ``ray``."""
    name = args.executor or ("ray" if args.address else "pool" if args.workers is not None else "local")
    options = {k: v for k, v in (("workers", args.workers), ("address", args.address)) if v is not None}
    return name, options


def _run(args, console: Console) -> int:
    from .suite import load_suite
    from .suiterun import run_suite
    from clbench.results import load

    suite = load_suite(args.suite or DEFAULT_SUITE, args.set)
    out = Path(args.out) if args.out else Path("clbench-results") / suite.name
    err = Console(stderr=True)
    executor, options = _executor_args(args)
    run = run_suite(
        suite,
        out,
        executor=executor,
        executor_options=options,
        force=args.force,
        console=err,
        progress=not args.no_progress,
    )
    tables = load(out)
    mine = set(c.run_id for c in suite.cells)
    tables.summary = tables.summary[tables.summary["run_id"].isin(mine)]
    _results_table(console, tables)
    for r in run.not_ok:
        err.print(f"[red]failed[/red] ({r.status}) {escape(str(r.row['strategy']))} seed {r.row['seed']} on "
                  f"{escape(str(r.row['stream']))}: {escape(str(r.row['error']))}")
    console.print(f"results: {out} (measurements.parquet, cells.parquet, summary.parquet)", soft_wrap=True)
    return 1 if run.not_ok else 0


def cmd_tune(args, console: Console) -> int:
    return _with_data_dir(args, console, _tune)


def _tune(args, console: Console) -> int:
    from .suite import parse_suite, read_suite
    from .tune import Protocol, tune_suite
    from clbench.results.tuning import tuned_vs_default

    data, where = read_suite(args.suite)
    suite = parse_suite(data, where)
    out = Path(args.out) if args.out else Path("clbench-tune") / suite.name
    protocol = Protocol(args.protocol, args.validation_fraction, args.first_tasks, args.seed)
    run = tune_suite(suite, data, out, trials=args.trials, protocol=protocol, metric=args.metric, mode=args.mode,
                     searcher=args.searcher, scheduler=args.scheduler, seed=args.seed, address=args.address,
                     workers=args.workers, console=Console(stderr=True))
    board = tuned_vs_default(run.trials)
    table = Table(title=f"{suite.name}: {args.metric} on the validation matrix (%), protocol {args.protocol}")
    for col in ("stream", "strategy", "trials", "default", "tuned", "best configuration"):
        table.add_column(col, justify="right" if col in ("trials", "default", "tuned") else "left")

    def pct(v):
        return "–" if v != v else f"{v * 100:.1f}"

    for _, r in board.iterrows():
        table.add_row(escape(r["stream"]), escape(r["strategy"]), str(r["trials"]), pct(r["default"]), pct(r["tuned"]),
                      escape(r["best"] or "no trial finished"))
    console.print(table)
    console.print(f"{run.ran} trials run, {len(run.trials) - run.ran} from an earlier run; trials: {out / 'trials.parquet'}",
                  soft_wrap=True)
    for path in run.suites:
        console.print(f"tuned suite: {path}  (clbench run {path})", soft_wrap=True)
    if run.report:
        console.print(f"report: {run.report}", soft_wrap=True)
    return 1 if board.empty or board["tuned"].isna().any() else 0


def _only(tables, column: str, names: list[str] | None):
    """``tables`` with the cells whose ``column`` is one of ``names`` (all when None)."""
    if not names:
        return tables
    known = sorted(set(tables.cells[column]))
    for name in names:
        if name not in known:
            raise UserError(f"no cells of {column} {name!r} in the results (known: {', '.join(known)})")
    keep = set(tables.cells.loc[tables.cells[column].isin(names), "run_id"])
    tables.cells = tables.cells[tables.cells["run_id"].isin(keep)]
    tables.summary = tables.summary[tables.summary["run_id"].isin(keep)]
    tables.measurements = tables.measurements[tables.measurements["run_id"].isin(keep)]
    return tables


def _latex(header: list[str], rows: list[list[str]]) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--"}

    def esc(x: str) -> str:
        return "".join(special.get(ch, ch) for ch in x)

    left = ("stream", "order", "strategy")
    lines = [r"\begin{tabular}{" + "".join("l" if h in left else "r" for h in header) + "}", r"\hline",
             " & ".join(map(esc, header)) + r" \\", r"\hline"]
    lines += [" & ".join(map(esc, r)) + r" \\" for r in rows]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines)


def cmd_show(args, console: Console) -> int:
    from clbench.results import load

    tables = _only(_only(load(args.dir), "strategy", args.strategy), "stream", args.stream)
    if args.samples:
        return _show_samples(tables, console)
    if args.format != "console":
        from clbench.results.analysis import leaderboard
        from clbench.results.render import leaderboard_rows, render_markdown
        from clbench.results.summary import stream_title

        board = leaderboard(tables.summary)
        if args.format == "csv":
            print(board.drop(columns=["stream_params"], errors="ignore").to_csv(index=False), end="")
            return 0
        header, rows = None, []
        for (stream, _p, variant, order), b in board.groupby(["stream", "stream_params", "variant", "order"], sort=False):
            h, rs = leaderboard_rows(b)
            header = ["stream", "order", *h]
            rows += [[stream_title(stream, variant), str(order), *r] for r in rs]
        if header is None:
            print("no results")
        elif args.format == "markdown":
            print(render_markdown([("table", header, rows)])[0].rstrip())
        else:
            print(_latex(header, rows))
        return 0
    _results_table(console, tables)
    bad = tables.cells[tables.cells["status"] != "ok"]
    for _, r in bad.iterrows():
        console.print(f"failed ({r['status']}): {escape(str(r['strategy']))} seed {r['seed']} on {escape(str(r['stream']))}: "
                      f"{escape(str(r['error']))}")
    return 0


def _show_samples(tables, console: Console) -> int:
    """The rehearsal examples strategies wrote (the ``samples`` column of ``cells``)."""
    import json

    shown = 0
    cells = tables.cells
    for _, c in cells.iterrows():
        records = json.loads(c["samples"]) if "samples" in cells and isinstance(c["samples"], str) else []
        if not records:
            continue
        tasks = json.loads(c["tasks"])
        table = Table(title=f"{escape(str(c['strategy']))} seed {c['seed']} on {escape(str(c['stream']))}: examples it wrote",
                      show_lines=True)
        for col in ("for task", "of task", "generated", "kept", "examples (prompt → answer)"):
            table.add_column(col)
        for r in records:
            examples = "\n".join(f"{e['prompt']!r} → {e['answer']!r}" for e in r["examples"])
            table.add_row(escape(tasks[r["train_task"]]), escape(r["task_name"]), str(r["generated"]), str(r["kept"]),
                          escape(examples))
        console.print(table)
        shown += 1
    if not shown:
        console.print("no written examples in these results (only lamol and ssr write them)")
    return 0


def cmd_check(args, console: Console) -> int:
    from .suite import load_suite
    from .suiterun import preflight

    suite = load_suite(args.suite, args.set)
    preflight(suite)
    table = Table(title=f"suite {suite.name}: {len(suite.cells)} cells (checked, not run)")
    for col in ("stream", "order", "strategy", "seed", "run_id (config hash)"):
        table.add_column(col, justify="right" if col == "seed" else "left")
    for c in suite.cells:
        table.add_row(escape(c.stream), escape(str(c.order)), escape(c.strategy.label), str(c.seed), c.run_id)
    console.print(table)
    _describe_strategies(suite, console)
    return 0


def _describe_strategies(suite, console: Console) -> None:
    """What each strategy of the suite will do to its model, where it says (a strategy's
    ``describe(config)``: LoRA names the layers its adapters adapt), once per strategy and model."""
    from .cell import make_strategies

    said = set()
    for c in suite.cells:
        if (c.strategy.label, c.model.init) in said:
            continue
        said.add((c.strategy.label, c.model.init))
        for name, obj in make_strategies(c):
            lines = obj.describe(c) if callable(getattr(obj, "describe", None)) else []
            if lines:
                console.print(f"strategy '{escape(c.strategy.label)}'" + (f" ({escape(name)})" if name != c.strategy.label else "")
                              + f" on {escape(c.model.init)}: {escape(lines[0])}", soft_wrap=True)
                for line in lines[1:]:
                    console.print(escape(line), soft_wrap=True, highlight=False)


def cmd_report(args, console: Console) -> int:
    from clbench.results import load

    tables = load(*args.dirs)
    for name in args.reporter or ["markdown", "html"]:
        get_host().get("reporters", name).obj(tables, Path(args.out), console)
    return 0


def cmd_compare(args, console: Console) -> int:
    from clbench.results import load
    from clbench.results.analysis import METRICS, compare
    from clbench.results.summary import config_differences, stream_title

    a, b = load(args.a), load(args.b)
    df = compare(a, b, tuple(args.metric or METRICS), strategy_a=args.strategy_a, strategy_b=args.strategy_b,
                 test=args.test)
    differ = config_differences(a.cells, b.cells)
    if differ:
        console.print("configurations differ between A and B:")
        for line in differ:
            console.print(f"  {escape(line)}")
    table = Table(title=f"A = {args.a} · B = {args.b} · mean ± sd over seeds (%) · a two-sided test over seeds")
    for col in ("stream", "order", "strategy", "metric", "A", "B", "B − A", "test", "p", "p Holm"):
        table.add_column(col, justify="left" if col in ("stream", "order", "strategy", "metric", "test") else "right")

    def side(mean, std, n):
        return "–" if n == 0 else f"{mean * 100:.1f}" + ("" if n < 2 else f" ± {std * 100:.1f}") + f" (n={n})"

    for _, r in df.iterrows():
        p = "–" if r["p"] != r["p"] else f"{r['p']:.3g}"
        ph = "–" if r["p_holm"] != r["p_holm"] else f"{r['p_holm']:.3g}" + (" *" if r["p_holm"] < 0.05 else "")
        table.add_row(escape(stream_title(r["stream"], r["variant"])), escape(str(r["order"])), escape(str(r["strategy"])), str(r["metric"]),
                      side(r["a_mean"], r["a_std"], r["a_n"]), side(r["b_mean"], r["b_std"], r["b_n"]),
                      "–" if r["diff"] != r["diff"] else f"{r['diff'] * 100:+.1f}", r["test"], p, ph)
    console.print(table)
    console.print("test: paired-t where the two sides have the same seeds (auto), else welch (Welch's t-test); "
                  "p Holm: p adjusted by Holm's method over every row; * p Holm < 0.05; p is – with fewer than two "
                  "seeds on a side, or when no side varies")
    return 0


def cmd_list(args, console: Console) -> int:
    from .suite import builtin_suites

    host = get_host()
    for category in ("streams", "strategies"):
        table = Table(title=category, show_header=True)
        table.add_column("name")
        table.add_column("description")
        table.add_column("plugin")
        for name in host.names(category):
            e = host.get(category, name)
            table.add_row(name, e.description, e.plugin)
        console.print(table)
    table = Table(title="suites")
    table.add_column("name")
    table.add_column("description")
    for name, text in sorted(builtin_suites().items()):
        table.add_row(name, tomllib.loads(text).get("description", ""))
    console.print(table)
    from .models.backbones import init_values

    table = Table(title="model.init (pretrained models)")
    table.add_column("value")
    table.add_column("what")
    for value, what in init_values():
        table.add_row(escape(value), escape(what))
    console.print(table)
    return 0


def cmd_plugins(args, console: Console) -> int:
    for name, what in get_host().plugins():
        console.print(f"[bold]{name}[/bold]")
        for category, names in what.items():
            console.print(f"  {category}: {', '.join(names)}")
    return 0


def _model_overrides(pairs: list[str]):
    """``--set key=value`` pairs as a ModelConfig (values parsed as TOML: 128, true, "post"),
    checked as a suite's [model] table is."""
    from .config import dataclass_from
    from .models.transformer import ModelConfig

    fields = ModelConfig.field_names()
    values = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise UserError(f"--set {pair!r}: expected FIELD=VALUE with a model field ({', '.join(fields)})")
        try:
            values[key] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw.strip()  # a bare word: a string
    return dataclass_from(ModelConfig, values, "--set", "model")


def cmd_pretrain(args, console: Console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .pretrain import PretrainConfig, pretrain

    model = _model_overrides(args.set)
    if args.init:
        model.init = args.init
    if args.causal:
        model.causal = True
    cfg = PretrainConfig(
        **{k: getattr(args, k) for k in ("steps", "batch_size", "seq_len", "lr", "save_every", "keep", "seed")}
    )
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(), console=err, disable=args.no_progress,
    )
    bar = progress.add_task("steps", total=cfg.steps, loss=float("nan"))

    def on_step(step: int, steps: int, loss: float) -> None:
        progress.update(bar, completed=step, loss=loss)

    with progress:
        last = pretrain(
            args.out, args.text, model=model, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
            config=cfg, device=args.device, on_step=on_step, log=lambda s: err.print(f"pretrain: {s}"),
        )
    console.print(f"checkpoint: {last}  (use it as model.init = \"{args.out}\")", soft_wrap=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="clbench", description="Benchmark continual learning of Transformers.")
    p.add_argument("--version", action="version", version=f"clbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a suite (the built-in 'quick' suite when none is given)")
    r.add_argument("suite", nargs="?", help="a suite file (.toml) or the name of a built-in suite")
    r.add_argument("--out", help="results folder (default: clbench-results/<suite name>)")
    r.add_argument("--executor", help="how cells run: local (default), pool, ray (see docs/executors.md)")
    r.add_argument("--workers", type=int, help="cells at a time (alone: the pool executor with N processes)")
    r.add_argument("--address", help="address of a Ray cluster (alone: the ray executor); default: a local Ray")
    r.add_argument("--force", action="store_true", help="run cells again even if they have results")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--data-dir", help="data folder of text streams that set none (default: $CLBENCH_DATA)")
    r.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="change the suite: model.init=hf:Qwen/Qwen2.5-0.5B, training.epochs=2, streams.max_len=128 (repeatable)")
    r.set_defaults(fn=cmd_run)

    t = sub.add_parser(
        "tune", help="search every strategy's hyper-parameters with the same budget (Ray Tune); write the best as a suite",
        description="Tune every (stream, strategy) of SUITE on Ray Tune; run again on OUT to resume. See docs/tuning.md.",
    )
    t.add_argument("suite", help="a suite file (.toml) or the name of a built-in suite")
    t.add_argument("--out", help="output folder (default: clbench-tune/<suite name>)")
    t.add_argument("--trials", type=int, default=8, help="trials per strategy: the budget, the same for each (default 8)")
    t.add_argument("--protocol", default="validation", help="validation (default) or first-tasks")
    t.add_argument("--validation-fraction", type=float, default=0.2,
                   help="share of each task's training data held out to score trials (default 0.2)")
    t.add_argument("--first-tasks", type=int, default=3, help="first-tasks: tasks tuned on; the rest are reported (default 3)")
    t.add_argument("--metric", default="acc", help="the summary metric to optimise (default acc)")
    t.add_argument("--mode", help="max or min (default: min for forgetting, else max)")
    t.add_argument("--searcher", default="random", help="random (default) or tpe (Optuna, if installed)")
    t.add_argument("--scheduler", default="asha", help="asha (default: stops poor trials by task) or fifo")
    t.add_argument("--seed", type=int, default=0, help="seeds the searchers and the validation split (default 0)")
    t.add_argument("--workers", type=int, help="trials at a time (a local Ray instance with N CPUs)")
    t.add_argument("--address", help="address of a Ray cluster (default: a local Ray instance)")
    t.add_argument("--data-dir", help="data folder of text streams that set none (default: $CLBENCH_DATA)")
    t.set_defaults(fn=cmd_tune)

    s = sub.add_parser("show", help="print the summary of a results folder")
    s.add_argument("dir")
    s.add_argument("--format", choices=("console", "markdown", "csv", "latex"), default="console",
                   help="console table (default), or the leaderboard as Markdown, CSV or a LaTeX tabular")
    s.add_argument("--strategy", action="append", help="only this strategy (repeatable)")
    s.add_argument("--stream", action="append", help="only this stream (repeatable)")
    s.add_argument("--samples", action="store_true",
                   help="print the examples the generative-replay strategies wrote (lamol, ssr) instead of the summary")
    s.set_defaults(fn=cmd_show)

    ck = sub.add_parser("check", help="check a suite and list its cells and config hashes, without running them")
    ck.add_argument("suite", help="a suite file (.toml) or the name of a built-in suite")
    ck.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="change the suite, as for run")
    ck.set_defaults(fn=cmd_check)

    rp = sub.add_parser("report", help="write report.md and a self-contained report.html from results folders")
    rp.add_argument("dirs", nargs="+", metavar="DIR", help="results folders (their cells are put together)")
    rp.add_argument("--out", default="clbench-report", help="report folder (default: clbench-report)")
    rp.add_argument("--reporter", action="append", help="a reporter to run (repeatable; default: markdown and html)")
    rp.set_defaults(fn=cmd_report)

    c = sub.add_parser("compare", help="line up two results folders with a significance test over seeds")
    c.add_argument("a", metavar="A")
    c.add_argument("b", metavar="B")
    c.add_argument("--metric", action="append", help="a summary metric (repeatable; default: acc, bwt, fwt, forgetting)")
    c.add_argument("--strategy-a", help="compare this strategy of A ...")
    c.add_argument("--strategy-b", help="... with this strategy of B (matched on stream, stream params and order)")
    c.add_argument("--test", default="auto", choices=["auto", "welch", "paired-t", "wilcoxon"],
                   help="auto (default): the paired t-test where the seeds pair up, else Welch's t-test; "
                        "or welch, paired-t, wilcoxon (signed-rank)")
    c.set_defaults(fn=cmd_compare)

    pt = sub.add_parser(
        "pretrain",
        help="pre-train the Transformer on text (masked LM; next-token with causal=true) into checkpoints",
        description="Pre-train into OUT (safetensors checkpoints); run again on OUT to resume. See docs/pretrain.md.",
    )
    pt.add_argument("out", metavar="OUT", help="checkpoint folder (resumed from its latest checkpoint if it has one)")
    pt.add_argument("--text", required=True, help=".txt files (a document per line), or a folder of tasks (training splits)")
    pt.add_argument("--tokenizer", default="bytes", help="bytes (default), bpe (trained on the text), or a backbone's: minilm, a checkpoint folder, hf:<name>")
    pt.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary size")
    pt.add_argument("--init", help="start from a backbone: minilm, a checkpoint folder, hf:<name> (default: random)")
    pt.add_argument("--causal", action="store_true", help="a causal model, trained on next-token prediction")
    pt.add_argument("--set", action="append", metavar="FIELD=VALUE", help="a model field (repeatable), e.g. d_model=128")
    for flag, typ, default, what in (
        ("--steps", int, 1000, "total optimizer steps"),
        ("--batch-size", int, 32, "sequences per step"),
        ("--seq-len", int, 128, "tokens per sequence"),
        ("--lr", float, 5e-4, "peak learning rate"),
        ("--save-every", int, 200, "steps between checkpoints"),
        ("--keep", int, 2, "checkpoints kept"),
        ("--seed", int, 0, "seed of initialisation, batches and masking"),
    ):
        pt.add_argument(flag, type=typ, default=default, help=f"{what} (default {default})")
    pt.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    pt.add_argument("--no-progress", action="store_true", help="no progress bar")
    pt.set_defaults(fn=cmd_pretrain)

    sub.add_parser("list", help="list streams, strategies, built-in suites and model.init values").set_defaults(fn=cmd_list)
    sub.add_parser("plugins", help="list loaded plugins and what each registers").set_defaults(fn=cmd_plugins)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=200)  # piped: don't squeeze tables into 80 columns

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None  # a kill says what Ctrl-C says
    try:
        return args.fn(args, console)
    except UserError as exc:
        print(f"clbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        done = "trials" if args.command == "tune" else "cells"
        print(f"clbench: interrupted; finished {done} are saved, run again to resume", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
