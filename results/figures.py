"""The report's figures, drawn with matplotlib from :mod:`clbench.results.analysis`'s tables:
accuracy-matrix heatmaps, accuracy over tasks, forgetting per task, training loss, the change of
general ability, and cost. Each is a :class:`Figure` (PNG bytes, a title and alt text) that
:mod:`clbench.results.render` places in a page.

Every figure is laid out by matplotlib's constrained layout, with its legend outside the plotting
area, and its crowded tick labels turned (45°, then 90°) or thinned until none overlaps
(:func:`declutter`); tests/test_figures.py draws every figure of real reports and checks that no
two pieces of text overlap and that none leaves the figure. Percentages are drawn as percentages
(0 to 100), as the tables print them; error bars and bands stop at the ends of the metric's range.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .analysis import BOARD_COST, task_names
from .store import Tables
from .summary import stream_title

#: Widest figure, in inches: a report page is about 72rem (1150 px) wide, and PNGs are drawn at
#: :data:`DPI` dots per inch, so a figure this wide is shown at its own size.
MAX_WIDTH = 12.5
DPI = 90
#: Longest task name on an axis; longer names end in "…" (the section's text lists them whole).
NAME_CHARS = 12


@dataclass
class Figure:
    """A rendered plot: ``name`` (a file stem), ``title``, ``alt`` text and PNG bytes."""

    name: str
    title: str
    alt: str
    png: bytes


def png(fig) -> bytes:
    """``fig`` (a matplotlib figure) as PNG bytes; the figure is closed."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pyplot():
    """``matplotlib.pyplot``, drawing to PNG only (no display). Imported here, not at the top:
    importing matplotlib takes a second, and only reports draw."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to PNG only
    import matplotlib.pyplot as plt

    return plt


def slug(*parts) -> str:
    """A file stem from ``parts``: letters, digits, ``-`` and ``_``."""
    s = "-".join(str(p) for p in parts)
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in s).strip("-")


def short(name, chars: int = NAME_CHARS) -> str:
    """``name`` cut to ``chars`` characters, the last an ellipsis when it was cut."""
    name = str(name)
    return name if len(name) <= chars else name[: chars - 1] + "…"


def compact(v: float, _pos=None) -> str:
    """A tick label for a count or size: 950, 12k, 1.3M."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:g}"


def _names(what: str, stream: str, order: str, variant: str) -> tuple[str, str]:
    """A figure's file stem and the words naming its group in the alt text."""
    stem = slug(what, stream, variant, order) if variant else slug(what, stream, order)
    return stem, f"{stream_title(stream, variant)}, order {order}"


def _task_labels(tables: Tables | None, stream: str, order: str, variant: str, n: int) -> list[str]:
    """The names of a group's ``n`` tasks for an axis (shortened), or their positions."""
    names = task_names(tables, stream, order, variant) if tables is not None else None
    if names and len(names) >= n:
        return [short(x) for x in names[:n]]
    return [str(j) for j in range(n)]


def _clipped_err(mean: np.ndarray, sd: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Asymmetric error bars ``mean ± sd`` that stop at ``lo`` and ``hi`` (the metric's range)."""
    sd = np.nan_to_num(sd)
    return np.vstack([np.clip(np.minimum(sd, mean - lo), 0, None), np.clip(np.minimum(sd, hi - mean), 0, None)])


def _legend(fig, axes, **kw) -> None:
    """One legend for the figure, outside the plotting area (right of it), from ``axes``' artists."""
    handles, labels, seen = [], [], set()
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in seen and not lab.startswith("_"):
                seen.add(lab)
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, **kw)


# -- keeping text apart ---------------------------------------------------------------------------


def _overlap(a, b, pad: float = 0.5) -> bool:
    return a.x0 < b.x1 - pad and b.x0 < a.x1 - pad and a.y0 < b.y1 - pad and b.y0 < a.y1 - pad


def _labels(axis) -> list:
    """The tick labels of ``axis`` that are drawn (visible, with text)."""
    return [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]


def _crowded(labels, renderer) -> bool:
    boxes = [t.get_window_extent(renderer) for t in labels]
    return any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def declutter(fig) -> None:
    """Turn the tick labels of every x axis of ``fig`` (secondary axes too) whose labels overlap
    by 45°, then 90°, and at last show only every k-th one, until none overlaps."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [a for ax in fig.axes for a in (ax, *ax.child_axes)]
    for ax in axes:
        axis = ax.xaxis
        top = axis.get_ticks_position() == "top" or ax.xaxis.label_position == "top"
        if not _crowded(_labels(axis), renderer):
            continue
        for angle in (45, 90):
            for t in _labels(axis):
                t.set_rotation(angle)
                t.set_rotation_mode("anchor" if angle == 45 else "default")
                t.set_ha(("left" if top else "right") if angle == 45 else "center")
                if angle == 90:
                    t.set_va("bottom" if top else "top")
            fig.canvas.draw()
            if not _crowded(_labels(axis), renderer):
                break
        else:
            labels = _labels(axis)
            for k in range(2, len(labels) + 1):
                for i, t in enumerate(labels):
                    t.set_visible(i % k == 0)
                fig.canvas.draw()
                if not _crowded(_labels(axis), renderer):
                    break


def _fit_titles(fig, axes) -> None:
    """Shrink (down to 6 pt) the title of each of ``axes`` that is wider than its axes."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        t = ax.title
        while t.get_text() and t.get_fontsize() > 6 and t.get_window_extent(renderer).width > ax.get_window_extent(renderer).width:
            t.set_fontsize(t.get_fontsize() - 0.5)


# -- the figures ----------------------------------------------------------------------------------


def heatmaps(tables: Tables, stream: str, order: str, means: dict[str, tuple[np.ndarray, int]], variant: str = "",
             percent: bool = True) -> Figure:
    """One heatmap per strategy of the mean accuracy matrix (rows: after training task i), the
    value of each cell printed in it (up to 12 tasks), task names on the axes of the first column
    and the bottom row only; with ``percent`` False, the scores as they are (perplexities, bits
    per byte; docs/cpt.md)."""
    plt = pyplot()
    n = len(means)
    T = next(iter(means.values()))[0].shape[0]
    cell = 0.45 if T <= 6 else 0.34 if T <= 10 else 0.24  # inches per matrix cell
    side = max(T * cell, 1.9)
    cols = max(1, min(n, int((MAX_WIDTH - 2.5) // (side + 0.3))))
    rows = math.ceil(n / cols)
    labels = _task_labels(tables, stream, order, variant, T)
    room = 0.2 + 0.055 * max(len(x) for x in labels)  # inches the task names take
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (side + 0.3) + room + 1.0, rows * (side + 0.45) + room + 0.3),
                             squeeze=False, layout="constrained")
    size = min(9.0, side / T * 72 * 0.32)  # points: "100" fills about 2/3 of a cell
    im = None
    flat = list(axes.flat)
    for k, (ax, (strategy, (R, seeds))) in enumerate(zip(flat, means.items())):
        if percent:
            im = ax.imshow(R * 100, vmin=0, vmax=100, cmap="viridis")
        else:  # lower is better: the colours reversed, so that brighter is better as for accuracies
            im = ax.imshow(R, vmin=np.nanmin([m[0] for m in means.values()]), vmax=np.nanmax([m[0] for m in means.values()]),
                           cmap="viridis_r")
        ax.set_title(f"{strategy} ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=9)
        ax.set_xticks(range(T), labels, fontsize=7, rotation=45 if room > 0.45 else 0,
                      ha="right" if room > 0.45 else "center", rotation_mode="anchor")
        ax.set_yticks(range(T), labels, fontsize=7)
        below = k + cols < n  # a matrix under this one: its x labels would be drawn over it
        ax.tick_params(labelbottom=not below, labelleft=k % cols == 0)
        if not below:
            ax.set_xlabel("evaluated on task", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("after training task", fontsize=8)
        if T <= 12:
            for i in range(T):
                for j in range(T):
                    ax.text(j, i, f"{R[i, j] * 100:.0f}" if percent else f"{R[i, j]:.3g}", ha="center", va="center",
                            fontsize=size, color="white" if (R[i, j] < 0.6 if percent else im.norm(R[i, j]) > 0.4) else "black")
    for ax in flat[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy %" if percent else "score (lower is better)")
    declutter(fig)
    _fit_titles(fig, flat[:n])
    name, on = _names("matrices", stream, order, variant)
    alt = f"accuracy matrices of {', '.join(means)} on {on}"
    return Figure(name, f"Accuracy matrices (mean over seeds, {'%' if percent else 'in their unit'})", alt, png(fig))


def _task_axis(ax, labels: list[str], first: int = 1) -> None:
    """x ticks at 1..T labelled with the tasks' names (turned by :func:`declutter` if crowded)."""
    ax.set_xticks(range(first, first + len(labels)), labels, fontsize=7)


def curves(stream: str, order: str, df: pd.DataFrame, variant: str = "", tables: Tables | None = None) -> Figure:
    """Mean accuracy on the tasks seen so far after each task, ± sd over seeds (the band stops at
    0 and 100)."""
    plt = pyplot()
    T = int(df["after_task"].max())
    fig, ax = plt.subplots(figsize=(min(MAX_WIDTH, max(6.5, 0.5 * T + 3.5)), 3.8), layout="constrained")
    for strategy, g in df.groupby("strategy", sort=False):
        s = g.groupby("after_task")["acc_seen"].agg(["mean", "std"]).fillna({"std": 0.0}) * 100
        ax.plot(s.index, s["mean"], marker="o", label=strategy)
        ax.fill_between(s.index, (s["mean"] - s["std"]).clip(0, 100), (s["mean"] + s["std"]).clip(0, 100), alpha=0.2)
    ax.set_xlabel("after training task")
    ax.set_ylabel("accuracy on tasks seen so far %")
    ax.set_ylim(0, 100)
    _task_axis(ax, _task_labels(tables, stream, order, variant, T))
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    declutter(fig)
    name, on = _names("curves", stream, order, variant)
    alt = f"accuracy over tasks of {', '.join(df['strategy'].unique())} on {on}"
    return Figure(name, "Accuracy over tasks (mean ± sd over seeds)", alt, png(fig))


def forgetting_bars(stream: str, order: str, df: pd.DataFrame, variant: str = "", tables: Tables | None = None) -> Figure:
    """Forgetting of each task but the last, one bar per strategy, mean ± sd over seeds. A term
    lies in [−100, 100] %, and so do the error bars; a bar of height zero is marked by a diamond
    on the zero line (it would be invisible)."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    strategies = list(df["strategy"].unique())
    tasks = sorted(df["task"].unique())
    width = min(MAX_WIDTH, max(6.5, 0.22 * len(tasks) * len(strategies) + 3.0))
    fig, ax = plt.subplots(figsize=(width, 3.8), layout="constrained")
    bar = 0.8 / len(strategies)
    zeros = False
    for k, strategy in enumerate(strategies):
        s = df[df["strategy"] == strategy].groupby("task")["forgetting"].agg(["mean", "std"]).reindex(tasks) * 100
        x = np.arange(len(tasks)) + (k - (len(strategies) - 1) / 2) * bar
        mean = s["mean"].to_numpy(float)
        bars = ax.bar(x, mean, bar, yerr=_clipped_err(mean, s["std"].to_numpy(float), -100, 100), label=strategy,
                      capsize=2, error_kw={"elinewidth": 0.8})
        flat = np.abs(mean) < 0.05
        if flat.any():
            zeros = True
            ax.plot(x[flat], np.zeros(flat.sum()), linestyle="", marker="D", markersize=4,
                    color=bars.patches[0].get_facecolor(), markeredgecolor="black", markeredgewidth=0.5, zorder=3)
    names = _task_labels(tables, stream, order, variant, max(tasks) + 1)
    ax.set_xticks(range(len(tasks)), [names[t] for t in tasks], fontsize=7)
    lo, hi = ax.get_ylim()
    if hi - lo < 10:  # all (near) zero: a scale of hundredths of a percent would magnify nothing
        ax.set_ylim(min(lo, -5.0), max(hi, 5.0))
    ax.set_xlabel("task (all but the last)")
    ax.set_ylabel("forgetting %")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(alpha=0.3, axis="y")
    if zeros:
        ax.add_line(Line2D([], [], linestyle="", marker="D", markersize=4, color="white", markeredgecolor="black",
                           markeredgewidth=0.5, label="zero (bar of height 0)"))
    _legend(fig, ax)
    declutter(fig)
    name, on = _names("forgetting", stream, order, variant)
    alt = f"forgetting per task of {', '.join(strategies)} on {on}"
    return Figure(name, "Forgetting per task (mean ± sd over seeds)", alt, png(fig))


def cost_bars(stream: str, order: str, board: pd.DataFrame, variant: str = "") -> Figure:
    """Training time, peak memory and trainable parameters per strategy (mean ± sd over seeds),
    side by side with the strategies named once, on the left."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    cols = [(c.column, c.heading_in(board)) for c in BOARD_COST if f"{c.column}_mean" in board]
    fig, axes = plt.subplots(1, len(cols), figsize=(min(MAX_WIDTH, 2.9 * len(cols) + 1.4), 0.32 * len(board) + 1.3),
                             squeeze=False, sharey=True, layout="constrained")
    y = np.arange(len(board))
    for k, (ax, (c, heading)) in enumerate(zip(axes[0], cols)):
        mean, std = board[f"{c}_mean"].to_numpy(float), board[f"{c}_std"].fillna(0).to_numpy(float)
        # asymmetric bars: a cost is never below zero
        ax.barh(y, mean, xerr=[np.minimum(std, mean), std], capsize=2, color="tab:gray")
        ax.set_yticks(y, board["strategy"], fontsize=8)
        ax.tick_params(labelleft=k == 0)
        ax.set_title(heading, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.xaxis.set_major_formatter(FuncFormatter(compact))
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].invert_yaxis()
    name, on = _names("cost", stream, order, variant)
    alt = f"training time, peak memory and trainable parameters of {', '.join(board['strategy'])} on {on}"
    return Figure(name, "Cost (mean ± sd over seeds)", alt, png(fig))


def _task_spans(df: pd.DataFrame) -> pd.DataFrame:
    """Per task: its first and last epoch across the stream (``step``)."""
    return df.groupby("task")["step"].agg(["min", "max"])


def loss_curves(stream: str, order: str, df: pd.DataFrame, variant: str = "", tables: Tables | None = None) -> Figure:
    """The mean training loss of each epoch across the stream, ± sd over seeds: one panel per
    strategy, each on its own y axis. The loss a strategy trains on includes its own terms (EWC's
    and SI's penalties, LwF's distillation), which can be a hundred times the task loss: on a
    shared axis they would flatten every other curve. Vertical lines mark where a task starts; its
    name is written above its epochs."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    strategies = list(df["strategy"].unique())
    cols = min(len(strategies), 3)
    rows = math.ceil(len(strategies) / cols)
    spans = _task_spans(df)
    names = _task_labels(tables, stream, order, variant, int(spans.index.max()) + 1)
    fig, axes = plt.subplots(rows, cols, figsize=(min(MAX_WIDTH, 3.9 * cols + 0.6), 2.5 * rows + 1.2),
                             squeeze=False, sharex=True, layout="constrained")
    flat = list(axes.flat)
    for k, (ax, strategy) in enumerate(zip(flat, strategies)):
        g = df[df["strategy"] == strategy]
        s = g.groupby("step")["train_loss"].agg(["mean", "std"]).fillna({"std": 0.0})
        ax.plot(s.index, s["mean"], marker=".", color=f"C{k % 10}")
        ax.fill_between(s.index, (s["mean"] - s["std"]).clip(lower=0), s["mean"] + s["std"], alpha=0.2, color=f"C{k % 10}")
        for start in spans["min"].iloc[1:]:
            ax.axvline(start - 0.5, color="gray", linewidth=0.6)
        ax.set_title(strategy, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if k < cols:  # the tasks' names above the top row
            top = ax.secondary_xaxis("top")
            top.set_xticks(((spans["min"] + spans["max"]) / 2).to_list(), [names[t] for t in spans.index], fontsize=6)
            top.tick_params(length=0)
        if k + cols >= len(strategies):
            ax.set_xlabel("epoch across the stream", fontsize=8)
            ax.tick_params(labelbottom=True)
        if k % cols == 0:
            ax.set_ylabel("training loss", fontsize=8)
    for ax in flat[len(strategies):]:
        ax.axis("off")
    declutter(fig)
    _fit_titles(fig, flat[: len(strategies)])
    name, on = _names("loss", stream, order, variant)
    alt = f"training loss per epoch of {', '.join(strategies)} on {on}"
    return Figure(name, "Training loss per epoch (mean ± sd over seeds; each strategy on its own y axis)", alt, png(fig))


def general_curves(stream: str, order: str, df: pd.DataFrame, variant: str = "", tables: Tables | None = None) -> Figure:
    """The perplexity of the general text after each task divided by its perplexity before
    training, ± sd over seeds, on a log scale (a strategy may multiply it by a thousand while
    another leaves it unchanged): above 1, the model lost general ability (TRACE's point)."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    T = int(df["after_task"].max())
    fig, ax = plt.subplots(figsize=(min(MAX_WIDTH, max(6.5, 0.5 * T + 3.5)), 3.8), layout="constrained")
    lo = 1.0
    for strategy, g in df.groupby("strategy", sort=False):
        s = (g.assign(ratio=1 + g["change"])).groupby("after_task")["ratio"].agg(["mean", "std"]).fillna({"std": 0.0})
        band_lo = (s["mean"] - s["std"]).clip(lower=s["mean"] / 10)  # a log axis has no zero
        lo = min(lo, float(band_lo.min()))
        ax.plot(s.index, s["mean"], marker="o", label=strategy)
        ax.fill_between(s.index, band_lo, s["mean"] + s["std"], alpha=0.2)
    ax.axhline(1, color="black", linewidth=0.6)
    ax.set_yscale("log")
    bottom, top = ax.get_ylim()
    if top / bottom < 10:  # no decade but ×1 inside (a real model's +20%): ticks at round values instead
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"×{v:.3g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _p: ""))
    ax.set_xlabel("after training task")
    ax.set_ylabel("general text perplexity ÷ before training")
    _task_axis(ax, ["before", *_task_labels(tables, stream, order, variant, T)], first=0)
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    declutter(fig)
    name, on = _names("general", stream, order, variant)
    alt = f"the general text's perplexity after each task, relative to before training, of {', '.join(df['strategy'].unique())} on {on}"
    return Figure(name, "General ability: the held-out general text's perplexity after each task ÷ before training (mean ± sd over seeds, log scale)",
                  alt, png(fig))
