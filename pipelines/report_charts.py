"""The report's charts, drawn by matplotlib to inline SVG: score histograms and the kept-captions curve.

Every chart has its axes at the same place in its figure (`AXES`), so the page can draw a moved threshold over it
in CSS percentages of the figure, without knowing anything of matplotlib.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: the report is written by jobs, often without a screen
import matplotlib.pyplot as plt  # noqa: E402

AXES = (0.11, 0.2, 0.85, 0.68)  # left, bottom, width, height: fractions of the figure
SIZE = (5.0, 2.6)  # inches; the SVG scales to its column
COLOURS = {"web": "#1f77b4", "synthetic": "#ff7f0e", "both": "#2ca02c"}
THRESHOLD_COLOUR = "#d62728"
matplotlib.rcParams["svg.hashsalt"] = "capfilt"  # the same run gives the same SVG ids, so the same report


def histogram_svg(series: dict[str, tuple[list[float], list[int]]], lo: float, hi: float, xlabel: str,
                  threshold: float | None = None) -> str:
    """Histograms over one shared x range: {label: (bin edges, counts)}, the threshold drawn when given."""
    fig = plt.figure(figsize=SIZE)
    ax = fig.add_axes(AXES)
    for label, (edges, counts) in series.items():
        ax.stairs(counts, edges, fill=True, alpha=0.45, color=COLOURS.get(label), label=label)
        ax.stairs(counts, edges, color=COLOURS.get(label))
    if threshold is not None:
        ax.axvline(threshold, color=THRESHOLD_COLOUR, linewidth=1.5, label=f"threshold {threshold:g}")
    _finish(ax, lo, hi, xlabel, "captions")
    return _svg(fig)


def kept_curve_svg(thresholds: list[float], kept: dict[str, list[int]], threshold: float | None) -> str:
    """Captions kept against the ITM threshold, one line per source."""
    fig = plt.figure(figsize=SIZE)
    ax = fig.add_axes(AXES)
    for label, counts in kept.items():
        ax.plot(thresholds, counts, color=COLOURS.get(label), label=label, linewidth=1.5)
    if threshold is not None:
        ax.axvline(threshold, color=THRESHOLD_COLOUR, linewidth=1.5, label=f"threshold {threshold:g}")
    _finish(ax, 0.0, 1.0, "ITM threshold (keep itm >= threshold)", "captions kept")
    return _svg(fig)


def _finish(ax, lo: float, hi: float, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(lo, hi)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog or DOCTYPE inside the page
