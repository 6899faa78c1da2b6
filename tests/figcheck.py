"""What a reader of a figure would see wrong with its text, from matplotlib's own extents (the
renderer's ``get_window_extent``): two pieces of text drawn over each other (tick labels, axis
labels, titles, legends, annotations, every axes and secondary axes included), text that leaves
the figure, axis text or a legend drawn over another axes' plotting area."""

from __future__ import annotations


def _drawn_ticks(axis):
    """The tick labels matplotlib draws for ``axis`` (ticks inside the view, labels switched on)."""
    out = []
    for tick in axis._update_ticks():  # the ticks within the view interval, as draw() takes them
        for label in (tick.label1, tick.label2):
            if label.get_visible() and label.get_text():
                out.append(label)
    return out


def _all_axes(fig):
    seen, out = set(), []

    def add(ax):
        if id(ax) not in seen:
            seen.add(id(ax))
            out.append(ax)
            for child in ax.child_axes:
                add(child)

    for ax in fig.axes:
        add(ax)
    return out


def texts(fig) -> list[tuple[str, object, object]]:
    """(what, Text, the axes it belongs to or None) for every piece of text ``fig`` draws."""
    out = [("figure text", t, None) for t in fig.texts]
    for legend in fig.legends:
        out += [("legend", t, None) for t in legend.get_texts()]
    for ax in _all_axes(fig):
        if not ax.get_visible() or not ax.axison and not ax.texts:
            continue
        for t in (ax.title, ax._left_title, ax._right_title):
            out.append(("title", t, ax))
        if ax.axison:
            out += [("x label", ax.xaxis.label, ax), ("y label", ax.yaxis.label, ax)]
            out += [("x tick", t, ax) for t in _drawn_ticks(ax.xaxis)]
            out += [("y tick", t, ax) for t in _drawn_ticks(ax.yaxis)]
        out += [("annotation", t, ax) for t in ax.texts]
        if ax.get_legend() is not None:
            out += [("legend", t, ax) for t in ax.get_legend().get_texts()]
    return [(w, t, ax) for w, t, ax in out if t.get_visible() and t.get_text().strip()]


def _overlap(a, b, pad: float = 1.0) -> bool:
    return a.x0 < b.x1 - pad and b.x0 < a.x1 - pad and a.y0 < b.y1 - pad and b.y0 < a.y1 - pad


def _related(a, b) -> bool:
    """Whether axes ``a`` and ``b`` are one axes and its secondary axes (which share its area)."""
    return a is b or b in a.child_axes or a in b.child_axes


def problems(fig) -> list[str]:
    """Every overlap of two texts, text outside the figure, and text or legend over another
    axes' plotting area, as one line each (empty: nothing to see)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    items = [(w, t, ax, t.get_window_extent(renderer)) for w, t, ax in texts(fig)]
    out = []
    for w, t, _ax, b in items:
        if b.x0 < box.x0 - 1 or b.y0 < box.y0 - 1 or b.x1 > box.x1 + 1 or b.y1 > box.y1 + 1:
            out.append(f"{w} {t.get_text()!r} leaves the figure ({b.x0:.0f}..{b.x1:.0f} × {b.y0:.0f}..{b.y1:.0f} in {box.width:.0f} × {box.height:.0f})")
    for i, (w1, t1, _a1, b1) in enumerate(items):
        for w2, t2, _a2, b2 in items[i + 1:]:
            if _overlap(b1, b2):
                out.append(f"{w1} {t1.get_text()!r} overlaps {w2} {t2.get_text()!r}")
    areas = [(ax, ax.get_window_extent(renderer)) for ax in _all_axes(fig) if ax.get_visible() and ax.axison]
    for w, t, ax, b in items:
        if w in ("figure text", "legend"):
            continue
        for other, area in areas:
            if ax is not None and not _related(ax, other) and _overlap(b, area):
                out.append(f"{w} {t.get_text()!r} is drawn over another axes")
                break
    legends = list(fig.legends) + [ax.get_legend() for ax in _all_axes(fig) if ax.get_legend() is not None]
    for legend in legends:
        lb = legend.get_window_extent(renderer)
        if any(_overlap(lb, area) for _ax, area in areas):
            out.append(f"the legend ({', '.join(t.get_text() for t in legend.get_texts())}) covers a plotting area")
    return out
