"""Figures for the plotting callbacks, built to be cheap: they are drawn at the end of every run.

Three choices make a figure about 40% cheaper than ``pyplot`` with ``tight_layout`` (0.3 s instead
of 0.5 s for ten tasks' learning curves on one CPU core), with the same panels and sizes:

- ``matplotlib.figure.Figure`` without ``pyplot``: no global figure manager, nothing to close, and
  the caller's backend is left alone (``matplotlib.use("Agg")`` in a notebook would switch off its
  inline plots);
- margins fixed in inches instead of ``tight_layout``, which measures every tick label once more;
- PNG written with zlib level 1: a few kB larger, a fifth of the encoding time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def new_figure(
    width: float,
    height: float,
    rows: int = 1,
    columns: int = 1,
    margins: tuple[float, float, float, float] = (0.8, 0.2, 0.55, 0.35),
    gaps: tuple[float, float] = (0.8, 0.8),
) -> tuple[Any, Any]:
    """A ``width`` x ``height`` inch figure and its ``rows`` x ``columns`` array of axes.

    ``margins``: left, right, bottom, top in inches (room for tick labels, axis labels, titles);
    ``gaps``: horizontal and vertical space between panels, in inches.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    axes = figure.subplots(rows, columns, squeeze=False)
    left, right, bottom, top = margins
    panel_width = (width - left - right - (columns - 1) * gaps[0]) / columns
    panel_height = (height - bottom - top - (rows - 1) * gaps[1]) / rows
    figure.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=gaps[0] / max(panel_width, 1e-3),
        hspace=gaps[1] / max(panel_height, 1e-3),
    )
    return figure, axes


def save_png(figure, path: Path, dpi: int) -> Path:
    """``figure`` as a PNG at ``path``, fast zlib level (see the module docstring)."""
    figure.savefig(path, dpi=dpi, pil_kwargs={"compress_level": 1})
    return path


def run_caption(trainer, algorithm, results=None) -> str:
    """What a figure shows, for a reader who sees only the PNG: algorithm, benchmark (its data and
    task count), paradigm, seed and, once there are results, the final average accuracy and BWT.

    ``HAT · PermutedBenchmark (mnist, 10 tasks) · TIL · seed 1 · final AA 91.5%, BWT -0.4 points``
    """
    parts = [type(algorithm).__name__]
    benchmark = getattr(trainer, "datamodule", None)
    if benchmark is not None:
        parts.append(f"{type(benchmark).__name__} ({benchmark.source}, {benchmark.num_tasks} tasks)")
        parts.append(str(getattr(algorithm, "paradigm", "")).upper())
        parts.append(f"seed {benchmark.seed}")
    if results is not None and results.tasks_done:
        summary = results.summary()
        final = f"after task {results.tasks_done}: AA {100 * summary['average_accuracy']:.1f}%"
        if summary.get("bwt") is not None:
            final += f", BWT {100 * summary['bwt']:+.1f} points"
        parts.append(final)
    return " · ".join(part for part in parts if part)


CAPTION_FONTSIZE = 6.5
# inches per caption line at CAPTION_FONTSIZE (line spacing 1.2)
CAPTION_LINE = 1.2 * CAPTION_FONTSIZE / 72


def wrap_caption(caption: str, width: float, fontsize: float = CAPTION_FONTSIZE) -> str:
    """``caption`` broken at its `` · `` separators (or spaces) into lines that fit ``width``
    inches of small type: a figure narrower than its caption keeps all of it on the page.
    ``len(result.splitlines())`` lines need ``CAPTION_LINE`` inches each."""
    # DejaVu Sans averages about 0.55 em a character, more in paths and digits: reckon 0.6;
    # keep a margin of 0.2 inch
    fits = max(20, int((width - 0.2) * 72 / (0.6 * fontsize)))
    lines: list[str] = []
    for part in caption.split(" · "):
        for word_line in _wrap_words(part, fits):
            if lines and len(lines[-1]) + 3 + len(word_line) <= fits:
                lines[-1] += " · " + word_line
            else:
                lines.append(word_line)
    return "\n".join(lines)


def _wrap_words(text: str, fits: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, fits, break_long_words=True, break_on_hyphens=False) or [""]


def add_caption(figure, caption: str, height: float) -> None:
    """``caption`` in small type across the top of ``figure`` (``height`` inches tall); the
    figures keep 0.3 inch or more free above their panels for it. A caption of several lines
    (``wrap_caption``) hangs from the top edge and needs ``CAPTION_LINE`` inches a line."""
    if not caption:
        return
    if "\n" in caption:
        figure.text(
            0.01, 1 - 0.05 / height, caption, fontsize=CAPTION_FONTSIZE, color="0.25", ha="left", va="top"
        )
    else:
        figure.text(
            0.01, 1 - 0.12 / height, caption, fontsize=CAPTION_FONTSIZE, color="0.25", ha="left", va="center"
        )


def off_figure(figure, dpi: float | None = None, tolerance: float = 1.0) -> list[str]:
    """What of ``figure`` runs off its edges once drawn at ``dpi`` (the one it is saved at: text
    does not scale exactly with it): legends, the figure's own texts (caption, titles) and each
    panel with its drawn labels (title, axis and tick labels), as ``"legend: ..."`` / ``"text:
    ..."`` / ``"axes: ..."``; empty when everything is on the page. The figures promise an empty
    list; the tests check it. ``tolerance`` in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    if dpi is not None:
        figure.set_dpi(dpi)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = figure.bbox

    def outside(extent) -> bool:
        return (
            extent.x0 < box.x0 - tolerance
            or extent.y0 < box.y0 - tolerance
            or extent.x1 > box.x1 + tolerance
            or extent.y1 > box.y1 + tolerance
        )

    found = []
    for legend in [*figure.legends, *(ax.get_legend() for ax in figure.axes)]:
        if legend is not None and outside(legend.get_window_extent(renderer)):
            found.append(f"legend: {[t.get_text() for t in legend.get_texts()][:3]}")
    for text in figure.texts:
        if text.get_visible() and text.get_text().strip() and outside(text.get_window_extent(renderer)):
            found.append(f"text: {text.get_text()[:60]!r}")
    for ax in figure.axes:  # only what is drawn: the tick labels in view, the titles, the labels
        extent = ax.get_tightbbox(renderer)
        if extent is not None and outside(extent):
            name = ax.get_title() or ax.get_title(loc="left") or ax.get_xlabel() or ax.get_ylabel()
            found.append(f"axes: {name[:60]!r} {tuple(round(v) for v in extent.extents)}")
    return found
