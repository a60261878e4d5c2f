"""The report's plots: headline metric vs bit configuration and vs packed size.

    plots/<task>_<metric>_vs_bits.png|.pdf  a line per method (+variant), a panel per model, FP dashed
    plots/<task>_<metric>_vs_size.png|.pdf  a point per cell, a panel per model, Pareto front joined
    plots/<task>_<metric>_vs_latency|vs_deployed_bytes  the same against the `latency` task's
        measured encoder latency and deployed model bytes

Called by `bench.report` (`write_plots`); reads only the cells table that `bench.results.load_cells`
builds. Error bars: the cells' 95% bootstrap intervals. Matplotlib and seaborn are imported on
first use. PNG and PDF carry no creation dates, so a report is byte-identical between runs on
the same records.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.results import (
    CELL_KEY,
    Metric,
    bits_label,
    cell_interval,
    cell_order,
    cell_value,
    expected_cells,
    metric,
    model_order,
    table_columns,
    table_metrics,
)

SIZE = metric("size", "size_bytes")
# the x axes of the scatter plots: (metric, stem suffix, label in titles, axis label)
AXES = (
    (SIZE, "vs_size", "packed model size", f"packed model size ({SIZE.unit}, log scale), smaller is better"),
    (metric("latency", "image_encoder_ms"), "vs_latency", "measured encoder latency (deployed)",
     "deployed image encoder latency (ms, log scale), lower is better"),
    (metric("latency", "deployed_model_bytes"), "vs_deployed_bytes", "deployed model bytes",
     "deployed model (MiB, log scale), smaller is better"),
)


def write_plots(cells: pd.DataFrame, folder: Path) -> list[str]:
    """Every plot of the headline accuracy metrics into `folder`; returns README lines."""
    import matplotlib

    lines = []
    with matplotlib.rc_context({"svg.hashsalt": "bench.report", "pdf.fonttype": 42}):
        for metric in [m for m in table_metrics(cells) if m.headline and m.task not in ("size", "latency")]:
            plot_vs_bits(cells, metric, folder / f"{metric.stem}_vs_bits")
            lines += plot_lines(metric, "vs_bits", "vs bit width")
            for x_metric, kind, what, _ in AXES:
                if plot_vs(cells, metric, folder / f"{metric.stem}_{kind}", x_metric):
                    lines += plot_lines(metric, kind, f"vs {what}")
    return lines


def plot_lines(metric: Metric, kind: str, what: str) -> list[str]:
    title, stem = f"{metric.task}: {metric.label} {what}", f"plots/{metric.stem}_{kind}"
    return [f"### {title}", "", f"![{title}]({stem}.png) ([pdf]({stem}.pdf))", ""]


def series_style(cells: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """A fixed color per method (+variant), shared by every plot; variants dotted, squares."""
    import seaborn as sns

    series = sorted({(m, v) for m, v in zip(cells["method"], cells["variant"]) if m != "fp"},
                    key=lambda s: cell_order("", s[0], s[1], None, None, ""))
    colors = sns.color_palette("colorblind" if len(series) <= 10 else "husl", max(len(series), 1))
    return {s: {"color": colors[i], "ls": ":" if s[1] else "-", "marker": "s" if s[1] else "o",
                "label": f"{s[0]} ({s[1]})" if s[1] else s[0]} for i, s in enumerate(series)}


def new_figure(n_panels: int, height: float = 4.6):
    import seaborn as sns
    from matplotlib.figure import Figure

    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(max(7.5, 1.0 + 4.2 * n_panels), height), layout="constrained")  # room for the legend
        axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def save(fig, stem: Path) -> None:
    """`stem`.png and `stem`.pdf (a stem may contain dots, e.g. a model name)."""
    fig.savefig(stem.parent / f"{stem.name}.png", dpi=150, metadata={"Software": None})
    fig.savefig(stem.parent / f"{stem.name}.pdf", metadata={"CreationDate": None, "Producer": None, "Creator": None})


def axis_label(m: Metric) -> str:
    unit = "" if m.unit == "count" else f" ({m.unit})"
    return f"{m.label}{unit}, {'higher' if m.higher else 'lower'} is better"


def plot_vs_bits(cells: pd.DataFrame, metric: Metric, stem: Path) -> None:
    """Metric vs bit configuration: a line per method (+variant), a panel per model, FP dashed;
    failed or missing cells as crosses (in the series' color) on the x axis."""
    index = {tuple(r[k] for k in CELL_KEY): r for r in cells.to_dict("records")}
    grid = set(expected_cells(cells))
    columns = table_columns(cells, metric.task)
    models = sorted({m for m, _, _ in columns}, key=model_order)
    style = series_style(cells)
    fig, axes = new_figure(len(models))
    for ax, model in zip(axes, models):
        bits = [(w, a) for m, w, a in columns if m == model]
        fp = cell_value(index.get((model, "fp", "", None, None, metric.task)), metric)
        if fp is not None:
            ax.axhline(fp, color="black", ls="--", lw=1.3, label="FP (full precision)", zorder=1)
        for s, st in style.items():
            keys = [(model, *s, w, a, metric.task) for w, a in bits]
            ys = [cell_value(index.get(k), metric) for k in keys]
            if all(k not in grid for k in keys):
                continue
            ax.plot(range(len(bits)), [math.nan if y is None else y for y in ys], color=st["color"], ls=st["ls"],
                    marker=st["marker"], ms=6, lw=1.8, label=st["label"], zorder=3)
            bars = [(x, y, cell_interval(index.get(k), metric)) for x, (k, y) in enumerate(zip(keys, ys))]
            bars = [(x, y, ci) for x, y, ci in bars if y is not None and ci is not None]
            if bars:
                ax.errorbar([x for x, _, _ in bars], [y for _, y, _ in bars], color=st["color"], fmt="none",
                            yerr=[[y - ci[0] for _, y, ci in bars], [ci[1] - y for _, y, ci in bars]], capsize=3,
                            lw=1.0, zorder=2)
            lost = [x for x, (k, y) in enumerate(zip(keys, ys)) if k in grid and y is None]
            if lost:  # on the x axis; left out of the layout (an empty blended line breaks it)
                ax.plot(lost, [0.0] * len(lost), "X", color=st["color"], mec="black", ms=10, zorder=4,
                        transform=ax.get_xaxis_transform(), label="failed or missing cell (on the x axis)",
                        clip_on=False)[0].set_in_layout(False)
        ax.set_xticks(range(len(bits)), [bits_label("q", w, a) for w, a in bits])
        ax.set_xlim(-0.4, len(bits) - 0.6)
        ax.margins(y=0.08)
        ax.set_title(model)
        ax.set_xlabel("bits: Wx = x-bit weights, Ay = y-bit activations")
    axes[0].set_ylabel(axis_label(metric))
    add_legend(fig, axes)
    fig.suptitle(f"{metric.task}: {metric.label} vs bit width (FP = dashed reference)", fontweight="bold")
    save(fig, stem)


def add_legend(fig, axes) -> None:
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", frameon=False,
               ncols=min(len(handles), 2 * len(axes)))  # about two legend columns fit under a panel


def pareto(points: list[tuple[float, float, str]], higher: bool) -> list[tuple[float, float, str]]:
    """The non-dominated (size, value, label) points: no other point is as small and better."""
    front, best = [], -math.inf
    for x, y, label in sorted(points, key=lambda p: (p[0], -p[1] if higher else p[1])):
        score = y if higher else -y
        if score > best:
            front.append((x, y, label))
            best = score
    return front


def plot_vs(cells: pd.DataFrame, metric: Metric, stem: Path, x_metric: Metric = SIZE) -> bool:
    """Metric vs a cost (one of `AXES`: the packed size, the deployed latency or bytes, from
    that task's record of the same model/method/bits), a panel per model, Pareto front joined
    and labelled. False when no point has both numbers."""
    _, _, what, x_label = next(a for a in AXES if a[0] == x_metric)
    index = {tuple(r[k] for k in CELL_KEY): r for r in cells.to_dict("records")}
    models = sorted(set(cells["model"]), key=model_order)
    style = series_style(cells)
    panels = []
    for model in models:
        pts = []
        for k in index:
            if k[0] == model and k[5] == metric.task:
                y, x = cell_value(index[k], metric), cell_value(index.get((*k[:5], x_metric.task)), x_metric)
                if x is not None and y is not None:
                    pts.append((x, y, k))
        if pts:
            panels.append((model, sorted(pts, key=lambda p: cell_order(*p[2]))))
    if not panels:
        return False
    fig, axes = new_figure(len(panels), height=5.0)
    for ax, (model, pts) in zip(axes, panels):
        for x, y, k in pts:
            fp = k[1] == "fp"
            st = {"marker": "*", "color": "black", "ms": 13, "label": "FP (full precision)"} if fp else \
                {**style[(k[1], k[2])], "ms": 7}
            ax.plot(x, y, st["marker"], color=st["color"], ms=st["ms"], label=st["label"], zorder=4 if fp else 3)
            ci = cell_interval(index.get(k), metric)
            if ci is not None:
                ax.errorbar([x], [y], yerr=[[y - ci[0]], [ci[1] - y]], color=st["color"], fmt="none", capsize=3, lw=1.0,
                            zorder=2)
        front = pareto([(x, y, point_label(k)) for x, y, k in pts], metric.higher)
        ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="0.35", lw=1.2, zorder=2,
                label="Pareto front (no point smaller and better)")
        label_front(ax, front)
        ax.set_xscale("log", base=2)
        ax.margins(x=0.15, y=0.12)
        ax.xaxis.set_major_formatter("{x:g}")
        ax.set_title(model)
        ax.set_xlabel(x_label)
    axes[0].set_ylabel(axis_label(metric))
    add_legend(fig, axes)
    fig.suptitle(f"{metric.task}: {metric.label} vs {what} (best: top left)", fontweight="bold")
    save(fig, stem)
    return True


def label_front(ax, front: list[tuple[float, float, str]]) -> None:
    """Name the Pareto points: to the left of the point on the right half of the panel,
    the best one above, then alternately below and above so that neighbours do not collide."""
    xs = [math.log(x) for x, _, _ in front]
    lo, span = min(xs), (max(xs) - min(xs)) or 1.0
    for i, ((x, y, label), lx) in enumerate(zip(front, xs)):
        right, above = (lx - lo) / span > 0.6, (len(front) - i) % 2 == 1
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(-7 if right else 7, 6 if above else -13),
                    ha="right" if right else "left", fontsize=8, color="0.15", zorder=5,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})


def point_label(k: tuple) -> str:
    return "FP" if k[1] == "fp" else f"{k[1]}{'/' + k[2] if k[2] else ''} {bits_label(k[1], k[3], k[4])}"
