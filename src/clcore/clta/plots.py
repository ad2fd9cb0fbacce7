"""The protocol's results as figures, beside the JSON and the markdown tables in ``results/``.

Drawn from the results dict alone (``results/task_arithmetic.json``), after each evaluation mode
as the tables are, or again by hand: ``python -m clcore.clta.plots <output folder or results JSON>``.

- ``task_addition.png``: task addition per mode, one bar per merging method (and aTLAS), test
  accuracy averaged over the tasks, absolute and normalised, with the zero-shot and fine-tuned
  references;
- ``per_task_accuracy.png``: test accuracy on every task of every method, one heat map per mode;
- ``alpha_selection.png``: the validation curve of each merging method over its alpha grid, per
  mode, with the alpha the protocol chose;
- ``task_negation.png`` (with a control task): target and control accuracy, pre-trained and negated.

Every figure says which run it shows (experiment, model, tasks, seed, output folder) in a caption
across the top, and its units (%). Matplotlib without pyplot (``clcore.callbacks.figures``): the
caller's backend is left alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from clcore.callbacks.figures import CAPTION_LINE, add_caption, new_figure, save_png, wrap_caption

DPI = 110


def _mean(values) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _pct(value: float | None) -> float:
    return math.nan if value is None else 100 * value


def describe_model(model: Mapping) -> str:
    """The pre-trained model in a few words: ``CLIP ViT-B-32 (openai)``, ``small MLP 64-32-16 (pre-trained on digits)``."""
    kind = model.get("kind", "")
    if kind == "clip_zero_shot":
        weights = model.get("pretrained") or "random weights"
        return f"CLIP {model.get('model_name')} ({weights})"
    if kind == "small_pretrained_mlp":
        dims = "-".join(str(d) for d in [*(model.get("hidden_dims") or []), model.get("output_dim")] if d)
        source = (model.get("base_data") or {}).get("source", "")
        return f"small MLP {dims} (pre-trained on {source})".replace(" (pre-trained on )", "")
    return str(kind or "model")


def caption_of(results: Mapping) -> str:
    """Which run a figure shows: ``clta small_digits · small MLP 32-16 (pre-trained on digits) ·
    tasks rot90, rot180; control upright · seed 0 · <output folder>``."""
    config = results.get("config") or {}
    tasks = ", ".join(results.get("tasks", {}))
    control = results.get("control")
    parts = [
        f"clta {config.get('name', '')}".strip(),
        describe_model(results.get("model") or {}),
        f"tasks {tasks}" + (f"; control {control['name']}" if control else ""),
        f"seed {config.get('seed')}",
        str((config.get("paths") or {}).get("output_dir", "")),
    ]
    return " · ".join(part for part in parts if part)


def _methods(modes: Mapping) -> list[str]:
    """Merging methods in the order the config lists them, then aTLAS where it ran."""
    names = list(dict.fromkeys(m for outcome in modes.values() for m in outcome.get("addition", {})))
    if any("atlas" in outcome for outcome in modes.values()):
        names.append("atlas")
    return names


def _merged(outcome: Mapping, method: str) -> Mapping | None:
    return outcome.get("atlas") if method == "atlas" else outcome.get("addition", {}).get(method)


def _colours(count: int) -> list:
    from matplotlib import colormaps

    return [colormaps["tab10"](index % 10) for index in range(count)]


def _start(width: float, panel_height: float, rows: int, columns: int, results, below: float, **gaps):
    """A figure of ``rows`` x ``columns`` panels with the run's caption on top and ``below`` inches
    of room under the panels (x labels, a legend)."""
    caption = wrap_caption(caption_of(results), width)
    top = len(caption.splitlines()) * CAPTION_LINE + 0.45
    row_gap = gaps.get("row_gap", 0.7)
    height = top + rows * panel_height + (rows - 1) * row_gap + below
    figure, axes = new_figure(
        width,
        height,
        rows,
        columns,
        margins=(gaps.get("left", 0.75), gaps.get("right", 0.2), below, top),
        gaps=(gaps.get("column_gap", 0.8), row_gap),
    )
    add_caption(figure, caption, height)
    return figure, axes, height


def _bar_value(ax, x: float, value: float) -> None:
    """``value`` (%) written upright inside the top of its bar, above a bar too short for it."""
    if math.isnan(value):
        return
    inside = value > 14
    ax.text(
        x,
        value - 1.5 if inside else value + 1.5,
        f"{value:.0f}",
        ha="center",
        va="top" if inside else "bottom",
        fontsize=6,
        rotation=90,
        color="white" if inside else "black",
    )


def task_addition_figure(results: Mapping):
    """Grouped bars per mode, one per method: test accuracy averaged over the tasks (%), absolute
    (left) and normalised by the mode's fine-tuned accuracy (right), with the zero-shot model
    (dashed) and the fine-tuned single-task models (black bar across the group) as references."""
    modes = results["modes"]
    methods = _methods(modes)
    colours = _colours(len(methods))
    per_group = max(len(methods), 1)
    width = max(9.0, 1.8 + 2 * len(modes) * (0.2 * per_group + 0.3))
    figure, axes, height = _start(width, 3.0, 1, 2, results, below=1.05, column_gap=0.9)
    absolute, normalised = axes[0]
    zero_shot = results["zero_shot"]
    bar = 0.8 / per_group
    for group, outcome in enumerate(modes.values()):
        single = outcome["single_task"]
        # the zero-shot model normalised by this mode's fine-tuned accuracy, as the methods are
        zero_norm = _mean(
            zero_shot["test"][t] / single["test"][t] if single["test"][t] > 0 else None
            for t in single["test"]
        )
        for index, method in enumerate(methods):
            merged = _merged(outcome, method)
            if merged is None:
                continue
            x = group - 0.4 + bar * (index + 0.5)
            label = method if group == 0 else None
            for ax, key in ((absolute, "absolute"), (normalised, "normalized")):
                value = _pct(merged[key])
                ax.bar(x, value, bar * 0.9, color=colours[index], label=label)
                _bar_value(ax, x, value)
        span = (group - 0.45, group + 0.45)
        absolute.hlines(
            _pct(single["average_test"]),
            *span,
            color="black",
            lw=2,
            label="fine-tuned, single task" if group == 0 else None,
        )
        normalised.hlines(
            _pct(zero_norm),
            *span,
            color="0.35",
            lw=1.5,
            linestyle="--",
            label="zero-shot (pre-trained)" if group == 0 else None,
        )
    absolute.axhline(_pct(zero_shot["average_test"]), color="0.35", lw=1.5, linestyle="--")
    normalised.axhline(100, color="black", lw=2)
    names = list(modes)
    for ax in (absolute, normalised):
        ax.set_xticks(
            range(len(names)), [f"{m}\n(trained {modes[m]['trained_as']})" for m in names], fontsize=8
        )
        ax.set_xlim(-0.55, len(names) - 0.45)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, max(105, ax.get_ylim()[1] + 8))
    absolute.set_ylabel("test accuracy, mean over tasks (%)")
    absolute.set_title("task addition: absolute accuracy", fontsize=9)
    normalised.set_ylabel("normalised accuracy (%)")
    normalised.set_title(
        "normalised: merged / fine-tuned accuracy per task, averaged (100% = fine-tuned)", fontsize=8
    )
    # one legend for both panels: the methods, then the references
    handles, labels = absolute.get_legend_handles_labels()
    more, more_labels = normalised.get_legend_handles_labels()
    for handle, label in zip(more, more_labels):
        if label not in labels:
            handles.append(handle)
            labels.append(label)
    figure.legend(
        handles,
        labels,
        loc="lower left",
        bbox_to_anchor=(0.75 / width, 0.05 / height),
        ncol=min(len(labels), 9),
        fontsize=7,
        frameon=False,
        title="alpha chosen on validation data; numbers on the bars in %",
        title_fontsize=7,
        alignment="left",
    )
    return figure


def per_task_accuracy_figure(results: Mapping):
    """One heat map per mode: rows zero-shot, fine-tuned and each method, columns the tasks and
    their mean; cells: test accuracy (%)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    modes = results["modes"]
    tasks = list(results["tasks"])
    methods = _methods(modes)
    row_names = ["zero-shot", "fine-tuned", *methods]
    columns = [*tasks, "mean"]
    # a cell 0.62 inch wide at least; a panel 3.4 inches at least, for its title
    panel_width = max(3.4, 0.62 * len(columns))
    width = 1.0 + panel_width + 1.2
    panel_height = 0.24 * len(row_names)
    figure, axes, height = _start(
        width,
        panel_height,
        len(modes),
        1,
        results,
        below=0.75,
        left=1.0,
        right=width - 1.0 - panel_width,
        row_gap=0.55,
    )
    norm = Normalize(0, 100)
    for ax, (mode, outcome) in zip(axes[:, 0], modes.items()):
        rows = {"zero-shot": results["zero_shot"]["test"], "fine-tuned": outcome["single_task"]["test"]}
        for method in methods:
            merged = _merged(outcome, method)
            if merged is not None:
                rows[method] = merged["test"]
        grid = [
            [_pct(rows[name][t]) if name in rows else math.nan for t in tasks]
            + [_pct(_mean(rows[name][t] for t in tasks)) if name in rows else math.nan]
            for name in row_names
        ]
        ax.imshow(grid, cmap="viridis", norm=norm, aspect="auto")
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                if not math.isnan(value):
                    ax.text(
                        j,
                        i,
                        f"{value:.1f}",
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="white" if value < 60 else "black",
                        fontweight="bold" if j == len(tasks) else "normal",
                    )
        ax.axvline(len(tasks) - 0.5, color="white", lw=2)  # the mean apart from the tasks
        ax.set_yticks(range(len(row_names)), row_names, fontsize=7)
        ax.set_xticks(range(len(columns)), columns, fontsize=7)
        ax.tick_params(length=0)
        ax.set_title(f"{mode} (task vectors trained {outcome['trained_as']})", fontsize=8)
    axes[-1, 0].set_xlabel("test accuracy per task (%)", fontsize=8)
    top_ax, bottom_ax = axes[0, 0].get_position(), axes[-1, 0].get_position()
    bar = figure.add_axes((top_ax.x1 + 0.3 / width, bottom_ax.y0, 0.12 / width, top_ax.y1 - bottom_ax.y0))
    colour_bar = figure.colorbar(ScalarMappable(norm, cmap="viridis"), cax=bar)
    colour_bar.set_label("test accuracy (%)", fontsize=7)
    colour_bar.ax.tick_params(labelsize=7)
    return figure


def alpha_selection_figure(results: Mapping):
    """One panel per merging method: validation accuracy (%) over its alpha grid, one colour per
    mode; solid the score alpha was chosen by, dotted the other (absolute / normalised); the
    chosen alpha starred. None when no method has a grid."""
    modes = results["modes"]
    methods = [m for m in _methods(modes) if m != "atlas"]
    if not methods:
        return None
    columns = min(3, len(methods))
    rows = math.ceil(len(methods) / columns)
    width = max(9.0, 3.3 * columns)
    figure, axes, height = _start(width, 2.4, rows, columns, results, below=1.2, column_gap=0.75, row_gap=0.8)
    colours = _colours(len(modes))
    for index, method in enumerate(methods):
        ax = axes[index // columns, index % columns]
        for colour, (mode, outcome) in zip(colours, modes.items()):
            merged = outcome.get("addition", {}).get(method)
            if merged is None:
                continue
            curve = merged["val_curve"]
            alphas = [float(a) for a in curve]
            chosen_by = "absolute" if "absolute" in merged.get("selected_by", "") else "normalized"
            other = "normalized" if chosen_by == "absolute" else "absolute"
            ax.plot(
                alphas, [_pct(curve[a][chosen_by]) for a in curve], marker="o", ms=3, color=colour, label=mode
            )
            ax.plot(alphas, [_pct(curve[a][other]) for a in curve], linestyle=":", color=colour, lw=1)
            chosen = f"{float(merged['alpha']):g}"
            if chosen in curve:
                ax.plot(
                    [float(merged["alpha"])],
                    [_pct(curve[chosen][chosen_by])],
                    "*",
                    ms=11,
                    color=colour,
                    markeredgecolor="black",
                )
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("alpha", fontsize=8)
        ax.set_ylabel("validation accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for index in range(len(methods), rows * columns):
        axes[index // columns, index % columns].set_visible(False)
    first = next(iter(modes.values()))
    chosen_by = next(iter(first.get("addition", {}).values()), {}).get("selected_by", "validation accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        loc="lower left",
        bbox_to_anchor=(0.75 / width, 0.05 / height),
        ncol=len(labels),
        fontsize=7,
        frameon=False,
        title=(
            f"mode; solid: {chosen_by} (what alpha is chosen by), dotted: the other score; ★ the chosen alpha\n"
            "absolute: merged accuracy averaged over tasks; normalised: merged / fine-tuned accuracy per task, averaged"
        ),
        title_fontsize=7,
        alignment="left",
    )
    return figure


def task_negation_figure(results: Mapping):
    """Per mode: target and control test accuracy (%), averaged over the negated tasks, of the
    pre-trained model and after negation. None without a control task."""
    negations = {m: o["negation"] for m, o in results["modes"].items() if "negation" in o}
    if not negations:
        return None
    first = next(iter(negations.values()))
    width = max(7.0, 2.0 + 1.6 * len(negations))
    figure, axes, height = _start(width, 2.8, 1, 1, results, below=1.0)
    ax = axes[0, 0]
    bars = [
        ("target, pre-trained", "pretrained_average_target_test", "tab:red", 0.35),
        ("target, negated", "average_target_test", "tab:red", 1.0),
        ("control, pre-trained", "pretrained_control_test", "tab:blue", 0.35),
        ("control, negated", "average_control_test", "tab:blue", 1.0),
    ]
    step = 0.8 / len(bars)
    for group, negation in enumerate(negations.values()):
        for index, (label, key, colour, alpha) in enumerate(bars):
            x = group - 0.4 + step * (index + 0.5)
            value = _pct(negation[key])
            ax.bar(x, value, step * 0.9, color=colour, alpha=alpha, label=label if group == 0 else None)
            if not math.isnan(value):
                ax.text(x, value + 1, f"{value:.0f}", ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(range(len(negations)), list(negations), fontsize=8)
    ax.set_xlim(-0.55, len(negations) - 0.45)
    ax.set_ylim(0, 110)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(
        f"task negation: targets (mean over tasks) and control {first['control']}; alpha keeps control "
        f"val >= {first['control_threshold']:g} x pre-trained",
        fontsize=8,
    )
    figure.legend(
        loc="lower left",
        bbox_to_anchor=(0.75 / width, 0.05 / height),
        ncol=4,
        fontsize=7,
        frameon=False,
    )
    return figure


FIGURES = {
    "task_addition.png": task_addition_figure,
    "per_task_accuracy.png": per_task_accuracy_figure,
    "alpha_selection.png": alpha_selection_figure,
    "task_negation.png": task_negation_figure,
}


def write_plots(results: Mapping, folder: str | Path) -> list[Path]:
    """Every figure the results allow (``FIGURES``), as PNGs in ``folder`` (the run's
    ``results/``); the paths written."""
    folder = Path(folder)
    if not results.get("modes"):
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in FIGURES.items():
        figure = build(results)
        if figure is not None:
            written.append(save_png(figure, folder / name, DPI))
    return written


def main(argv: list[str] | None = None) -> None:
    """``python -m clcore.clta.plots <output folder | results JSON>``: (re)draw the figures in ``results/``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("path", type=Path, help="a clta output folder, or its results/task_arithmetic.json")
    args = parser.parse_args(argv)
    source = args.path if args.path.is_file() else args.path / "results" / "task_arithmetic.json"
    for path in write_plots(json.loads(source.read_text()), source.parent):
        print(path)


if __name__ == "__main__":
    main()
