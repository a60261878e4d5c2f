"""The report's per-layer plots of a weight re-fit (Q-SAM2's VRC), from the figures a method
reports in `method_info["layers"]` (see `bench.results.LAYER_QUANTILES`):

    plots/layers_<model>_<method>[_<variant>]_<bits>.png|.pdf
        left: each layer's weight distribution before (grey) and after (color) the re-fit,
        boxes from the 25th to the 75th percentile, whiskers 1st..99th, dots 0.1th and 99.9th;
        right: the quantized layer's initial relative output error before and after.

One plot per quantized configuration (the vos and instseg cells of a configuration share one
calibration, so their figures are the same; the first is drawn).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from bench.plots import new_figure, save
from bench.results import LAYER_QUANTILES, bits_label

LAYER_KEYS = ("layer", "q_before", "q_after", "qerr_before", "qerr_after", "norm_before", "norm_after")


def layer_configs(cells: pd.DataFrame) -> dict[tuple, list[dict]]:
    """(model, method, variant, w, a) -> per-layer figures, for the cells that have them."""
    out: dict[tuple, list[dict]] = {}
    for r in cells.to_dict("records"):
        layers = r.get("layers") or []
        if layers and all(all(k in row for k in LAYER_KEYS) for row in layers):
            out.setdefault((r["model"], r["method"], r["variant"], r["w_bits"], r["a_bits"]), layers)
    return out


def write_layer_plots(cells: pd.DataFrame, folder: Path) -> list[str]:
    """Every per-layer plot into `folder`; returns README lines."""
    lines = []
    for key, layers in sorted(layer_configs(cells).items(), key=lambda kv: str(kv[0])):
        model, method, variant, w, a = key
        bits = bits_label(method, w, a)
        name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", "_".join(filter(None, (model, method, variant, bits))))
        stem = folder / f"layers_{name}"
        title = f"{model} {method}{f' ({variant})' if variant else ''} {bits}: per-layer re-fit"
        plot_layers(layers, title, stem)
        lines += [f"### {title}", "", f"![{title}](plots/{stem.name}.png) ([pdf](plots/{stem.name}.pdf))", ""]
    return lines


def plot_layers(layers: list[dict], title: str, stem: Path) -> None:
    i25, i75 = LAYER_QUANTILES.index(0.25), LAYER_QUANTILES.index(0.75)
    i1, i99 = LAYER_QUANTILES.index(0.01), LAYER_QUANTILES.index(0.99)
    lo, hi, mid = LAYER_QUANTILES.index(0.001), LAYER_QUANTILES.index(0.999), LAYER_QUANTILES.index(0.5)
    fig, (ax, ax_err) = new_figure(2, height=5.0)
    xs = range(len(layers))
    for shift, tag, color in ((-0.18, "before", "0.55"), (0.18, "after", "tab:blue")):
        for x, row in zip(xs, layers):
            q = row[f"q_{tag}"]
            ax.vlines(x + shift, q[i1], q[i99], color=color, lw=1.0)
            ax.vlines(x + shift, q[i25], q[i75], color=color, lw=5.0)
            ax.plot([x + shift] * 2, [q[lo], q[hi]], ".", color=color, ms=3)
            ax.plot(x + shift, q[mid], "_", color="white", ms=5)
        ax.plot([], [], color=color, lw=5, label=f"{tag} the re-fit")
        ax_err.plot(xs, [row[f"qerr_{tag}"] for row in layers], "o-", color=color, ms=3, lw=1.2,
                    label=f"{tag} the re-fit")
    ratio = sum(r["norm_after"] / max(r["norm_before"], 1e-30) for r in layers) / len(layers)
    ax.set_title(f"weights per layer (mean ||W'|| / ||W|| = {ratio:.3f})", fontsize=10)
    ax.set_ylabel("weight value")
    ax_err.set_title("quantized layer's initial relative output error", fontsize=10)
    ax_err.set_ylabel("||Q(X) Q(W)^T - X W^T||^2 / ||X W^T||^2")
    ax_err.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    for a in (ax, ax_err):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("layer (image encoder, in order)")
        a.legend(loc="best", fontsize=8)
    fig.suptitle(title, fontweight="bold")
    save(fig, stem)
