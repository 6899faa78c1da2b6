"""The report's figures, drawn with matplotlib from :mod:`clbench.results.analysis`'s tables:
accuracy-matrix heatmaps, accuracy over tasks, forgetting per task, cost, training loss. Each is a
:class:`Figure` (PNG bytes, a title and alt text) that :mod:`clbench.results.render` places in a
page."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .analysis import BOARD_COST, task_names
from .store import Tables
from .summary import stream_title

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
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
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


def _names(what: str, stream: str, order: str, variant: str) -> tuple[str, str]:
    """A figure's file stem and the words naming its group in the alt text."""
    stem = slug(what, stream, variant, order) if variant else slug(what, stream, order)
    return stem, f"{stream_title(stream, variant)}, order {order}"


def heatmaps(tables: Tables, stream: str, order: str, means: dict[str, tuple[np.ndarray, int]], variant: str = "") -> Figure:
    """One heatmap per strategy of the mean accuracy matrix (rows: after training task i)."""
    plt = pyplot()
    n = len(means)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    T = next(iter(means.values()))[0].shape[0]
    size = 1.2 + 0.45 * T
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size + 0.8, rows * size + 0.4), squeeze=False)
    names = task_names(tables, stream, order, variant)
    labels = ([n if len(n) <= 12 else n[:11] + "…" for n in names] if names and len(names) == T
              else [str(j) for j in range(T)])
    im = None
    for k, (ax, (strategy, (R, seeds))) in enumerate(zip(axes.flat, means.items())):
        im = ax.imshow(R * 100, vmin=0, vmax=100, cmap="viridis")
        ax.set_title(f"{strategy} ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=9)
        ax.set_xticks(range(T), labels, fontsize=7, rotation=45 if T > 6 else 0)
        ax.set_yticks(range(T), labels, fontsize=7)
        ax.set_xlabel("evaluated on task", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("after training task", fontsize=8)
        if T <= 10:
            for i in range(T):
                for j in range(T):
                    ax.text(j, i, f"{R[i, j] * 100:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if R[i, j] < 0.6 else "black")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy %")
    name, on = _names("matrices", stream, order, variant)
    alt = f"accuracy matrices of {', '.join(means)} on {on}"
    return Figure(name, "Accuracy matrices (mean over seeds, %)", alt, png(fig))


def curves(stream: str, order: str, df: pd.DataFrame, variant: str = "") -> Figure:
    """Mean accuracy on the tasks seen so far after each task, ± sd over seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for strategy, g in df.groupby("strategy", sort=False):
        s = g.groupby("after_task")["acc_seen"].agg(["mean", "std"]).fillna({"std": 0.0})
        ax.plot(s.index, s["mean"] * 100, marker="o", label=strategy)
        ax.fill_between(s.index, (s["mean"] - s["std"]) * 100, (s["mean"] + s["std"]) * 100, alpha=0.2)
    ax.set_xlabel("tasks trained")
    ax.set_ylabel("accuracy on tasks seen so far %")
    ax.set_ylim(0, 100)
    ax.set_xticks(sorted(df["after_task"].unique()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name, on = _names("curves", stream, order, variant)
    alt = f"accuracy over tasks of {', '.join(df['strategy'].unique())} on {on}"
    return Figure(name, "Accuracy over tasks (mean ± sd over seeds)", alt, png(fig))


def forgetting_bars(stream: str, order: str, df: pd.DataFrame, variant: str = "") -> Figure:
    """Forgetting of each task but the last, one bar per strategy, mean ± sd over seeds."""
    plt = pyplot()
    strategies = list(df["strategy"].unique())
    tasks = sorted(df["task"].unique())
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(tasks) * len(strategies) + 2), 3.6))
    width = 0.8 / len(strategies)
    for k, strategy in enumerate(strategies):
        s = df[df["strategy"] == strategy].groupby("task")["forgetting"].agg(["mean", "std"]).reindex(tasks)
        x = np.arange(len(tasks)) + (k - (len(strategies) - 1) / 2) * width
        ax.bar(x, s["mean"] * 100, width, yerr=s["std"].fillna(0) * 100, label=strategy, capsize=2)
    ax.set_xticks(range(len(tasks)), [str(t) for t in tasks])
    ax.set_xlabel("task")
    ax.set_ylabel("forgetting %")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    name, on = _names("forgetting", stream, order, variant)
    alt = f"forgetting per task of {', '.join(strategies)} on {on}"
    return Figure(name, "Forgetting per task (mean ± sd over seeds)", alt, png(fig))


def cost_bars(stream: str, order: str, board: pd.DataFrame, variant: str = "") -> Figure:
    """Training time, peak memory and trainable parameters per strategy (mean ± sd over seeds)."""
    plt = pyplot()
    cols = [(c.column, c.heading) for c in BOARD_COST if f"{c.column}_mean" in board]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.4 * len(cols), 0.4 * len(board) + 1.4), squeeze=False)
    y = np.arange(len(board))
    for ax, (c, heading) in zip(axes[0], cols):
        mean, std = board[f"{c}_mean"].to_numpy(float), board[f"{c}_std"].fillna(0).to_numpy(float)
        # asymmetric bars: a cost is never below zero
        ax.barh(y, mean, xerr=[np.minimum(std, mean), std], capsize=2, color="tab:gray")
        ax.set_yticks(y, board["strategy"], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(heading, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    name, on = _names("cost", stream, order, variant)
    alt = f"training time, peak memory and trainable parameters of {', '.join(board['strategy'])} on {on}"
    return Figure(name, "Cost (mean ± sd over seeds)", alt, png(fig))


def loss_curves(stream: str, order: str, df: pd.DataFrame, variant: str = "") -> Figure:
    """Mean training loss of each epoch across the stream, one line per strategy, ± sd over seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for strategy, g in df.groupby("strategy", sort=False):
        s = g.groupby("step")["train_loss"].agg(["mean", "std"]).fillna({"std": 0.0})
        ax.plot(s.index, s["mean"], marker=".", label=strategy)
        ax.fill_between(s.index, (s["mean"] - s["std"]).clip(lower=0), s["mean"] + s["std"], alpha=0.2)
    per_task = df.groupby("task")["step"].min()
    for x in per_task.iloc[1:]:
        ax.axvline(x - 0.5, color="gray", linewidth=0.5)
    ax.set_xlabel("epoch across the stream (lines: a new task)")
    ax.set_ylabel("mean training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name, on = _names("loss", stream, order, variant)
    alt = f"training loss per epoch of {', '.join(df['strategy'].unique())} on {on}"
    return Figure(name, "Training loss per epoch (mean ± sd over seeds)", alt, png(fig))
