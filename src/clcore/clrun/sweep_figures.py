"""The figure of a sweep (``aggregate.png``): a grid's configurations, mean ± std over seeds, or
an Optuna search's trials. Drawn from the aggregate that ``clcore.clrun.sweeps`` writes, with
matplotlib's object API (no pyplot), and imported only when a sweep draws it."""

from __future__ import annotations

from pathlib import Path

from clcore.clrun.sweeps import _is_number, _short, _trial_parameters, varying_parameters


def plot_aggregate(aggregate: dict, path: Path) -> Path:
    """``aggregate.png``: ``aggregate_figure`` as a PNG."""
    from clcore.callbacks.figures import save_png

    return save_png(aggregate_figure(aggregate), path, dpi=110)


def aggregate_figure(aggregate: dict):
    """The sweep's figure (a ``matplotlib.figure.Figure``, no pyplot): a grid's configurations
    (``grid_figure``) or an Optuna search's trials (``trials_figure``). Its caption names the
    sweep and the overrides every job shares; every legend and label stays on the figure."""
    if aggregate.get("sweeper", {}).get("kind") == "optuna":
        return trials_figure(aggregate)
    return grid_figure(aggregate)


def _shared_overrides(aggregate: dict, varying: list[str]) -> list[str]:
    """The overrides every job of the sweep has, with the same value (a data path, the task count)."""
    jobs = [job for job in aggregate.get("jobs", []) if job.get("overrides")]
    if not jobs:
        return []
    common = set(jobs[0]["overrides"]).intersection(*(set(job["overrides"]) for job in jobs[1:]))
    ignored = set(aggregate.get("ignored_overrides", []))
    return [
        o
        for o in jobs[0]["overrides"]
        if o in common and o.split("=", 1)[0].lstrip("+~") not in {*varying, *ignored}
    ]


def _caption(parts: list[str], width: float) -> tuple[str, float]:
    """The caption wrapped to ``width`` inches, and the inches it needs."""
    from clcore.callbacks.figures import CAPTION_LINE, wrap_caption

    caption = wrap_caption(" · ".join(p for p in parts if p), width)
    return caption, len(caption.splitlines()) * CAPTION_LINE + 0.1


def _legend_height(labels: list[str], fontsize: float, title: bool) -> float:
    """Inches a one-column legend of ``labels`` (with their line breaks) needs, generously."""
    lines = sum(label.count("\n") + 1 for label in labels)
    return (
        lines * 1.25 * fontsize + len(labels) * 0.5 * fontsize + (1.6 * fontsize if title else 0)
    ) / 72 + 0.2


def grid_figure(aggregate: dict):
    """Average accuracy after each task (mean, band = ± std) and final AA / BWT per configuration,
    mean ± std over its jobs (the seeds); the legend below the panels, its lines wrapped to the figure."""
    import textwrap

    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from clcore.callbacks.figures import add_caption

    rows = [r for r in aggregate["configurations"] if r["completed"]]
    # what tells the configurations apart; the overrides they share (a data path) go to the caption
    varying = varying_parameters(aggregate)
    shared = _shared_overrides(aggregate, varying)
    failed = sum(r["failed"] + r["incomplete"] for r in aggregate["configurations"])
    width, panel_height, fontsize = 11.0, 2.9, 7
    chars = int((width - 1.0) * 72 / (0.65 * fontsize))  # a legend line beside its marker; wide letters
    labels = []
    for index, row in enumerate(rows):
        named = " ".join(f"{k}={row['parameters'][k]}" for k in varying if k in row.get("parameters", {}))
        label = f"{index + 1}: {named or row['configuration']}  (n={row['completed']})"
        labels.append("\n".join(textwrap.wrap(label, chars, break_on_hyphens=False)) or label)
    caption, caption_height = _caption(
        [
            f"sweep {aggregate.get('sweep_dir', '')}",
            f"{len(rows)} configuration(s), mean ± std over their jobs (seeds)",
            "every job: " + " ".join(shared) if shared else "",
        ],
        width,
    )
    legend_height = _legend_height(labels, fontsize, title=True)
    top, gap_below, bottom = caption_height + 0.35, 0.6, 0.1
    height = top + panel_height + gap_below + legend_height + bottom
    figure = Figure(figsize=(width, height))
    grid = figure.add_gridspec(
        1,
        2,
        width_ratios=[3, 2],
        left=0.7 / width,
        right=1 - 0.2 / width,
        top=1 - top / height,
        bottom=(bottom + legend_height + gap_below) / height,
        wspace=0.25,
    )
    left, right = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
    add_caption(figure, caption, height)
    for index, (row, label) in enumerate(zip(rows, labels)):
        colour = colormaps["tab10"](index % 10)
        means = row.get("average_accuracy_per_task_mean")
        if means:
            tasks = range(1, len(means) + 1)
            mean = [100 * m for m in means]
            std = [100 * (s or 0.0) for s in row["average_accuracy_per_task_std"]]
            left.plot(tasks, mean, marker="o", color=colour, label=label)
            left.fill_between(
                tasks,
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                color=colour,
                alpha=0.2,
            )
        for offset, metric, marker in ((-0.12, "average_accuracy", "o"), (0.12, "bwt", "s")):
            if row[f"{metric}_mean"] is not None:
                std = 100 * (row[f"{metric}_std"] or 0.0)
                right.errorbar(
                    index + offset, 100 * row[f"{metric}_mean"], yerr=std, fmt=marker, color=colour, capsize=4
                )
    left.set_xlabel("after training task")
    left.set_ylabel("average accuracy (%)")
    left.set_ylim(0, 100)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.grid(alpha=0.3)
    left.set_title("average accuracy, mean ± std over the jobs of a configuration", fontsize=9)
    right.axhline(0, color="gray", lw=0.8)
    right.set_xticks(range(len(rows)), [str(i + 1) for i in range(len(rows))])
    right.set_xlim(-0.6, len(rows) - 0.4)
    right.set_xlabel("configuration")
    right.set_ylabel("AA (%) / BWT (points)")
    right.set_title("final average accuracy (●) and BWT (■), mean ± std", fontsize=9)
    right.grid(alpha=0.3)
    note = f"; {failed} failed or incomplete job(s) not included" if failed else ""
    figure.legend(
        loc="upper left",
        bbox_to_anchor=(0.1 / width, (bottom + legend_height) / height),
        fontsize=fontsize,
        frameon=False,
        title=f"configurations (n = completed jobs{note})",
        title_fontsize=fontsize,
        alignment="left",
    )
    return figure


def _room_below(ax) -> None:
    """A band under the lowest objective, where the failed trials' crosses sit (at 4% of the axis),
    and headroom above the best one's star."""
    low, high = ax.get_ylim()
    span = max(high - low, 1e-9)
    ax.set_ylim(low - 0.12 * span, high + 0.05 * span)


def trials_figure(aggregate: dict):
    """An Optuna search: the objective (final average accuracy, %) of each trial by trial number
    with the best so far as a step line and the best trial starred (failed or incomplete trials
    as grey crosses on the axis); below, the objective against each sampled parameter (up to 4;
    log axis for positive values spanning 20x or more), points coloured by trial number."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    from clcore.callbacks.figures import add_caption

    trials = aggregate.get("trials", [])
    direction = aggregate["sweeper"].get("direction", "maximize")
    parameters = _trial_parameters(aggregate)
    shown_parameters = parameters[:4]
    scored = [t for t in trials if t["objective"] is not None]
    unscored = [t for t in trials if t["objective"] is None]
    best = next((t for t in trials if t["best"]), None)
    shared = _shared_overrides(aggregate, parameters)
    width = 11.0
    caption, caption_height = _caption(
        [
            f"Optuna search · sweep {aggregate.get('sweep_dir', '')}",
            f"{len(trials)} trials: {len(scored)} completed, {len(unscored)} failed or incomplete",
            f"objective: final average accuracy ({direction})",
            (
                f"best: trial {best['trial']}, {100 * best['objective']:.2f}%"
                + "".join(f", {k}={_short(v)}" for k, v in best["parameters"].items())
                if best
                else "no trial completed"
            ),
            "every trial: " + " ".join(shared) if shared else "",
        ],
        width,
    )
    history_height, parameter_height = 2.7, 2.3
    top, between, bottom = caption_height + 0.35, 0.85, 0.55
    height = top + history_height + bottom + ((between + parameter_height) if shown_parameters else 0.0)
    figure = Figure(figsize=(width, height))
    add_caption(figure, caption, height)
    history = figure.add_axes(
        (0.7 / width, 1 - (top + history_height) / height, (width - 0.9) / width, history_height / height)
    )
    numbers = [t["trial"] for t in trials]
    history.plot(
        [t["trial"] for t in scored],
        [100 * t["objective"] for t in scored],
        "o",
        color="tab:blue",
        label="trial's objective",
    )
    steps = [(t["trial"], 100 * t["best_so_far"]) for t in trials if t["best_so_far"] is not None]
    if steps:
        history.step(
            [x for x, _ in steps],
            [y for _, y in steps],
            where="post",
            color="tab:orange",
            lw=1.5,
            label="best so far",
        )
    bottom_edge = blended_transform_factory(history.transData, history.transAxes)
    if unscored:
        history.plot(
            [t["trial"] for t in unscored],
            [0.04] * len(unscored),
            "x",
            color="0.5",
            transform=bottom_edge,
            label="failed / incomplete",
            clip_on=False,
        )
    if best is not None:
        history.plot(
            [best["trial"]],
            [100 * best["objective"]],
            "*",
            markersize=15,
            color="gold",
            markeredgecolor="black",
            label=f"best: trial {best['trial']} ({100 * best['objective']:.2f}%)",
        )
    history.set_xlabel("trial number")
    history.set_ylabel("final average accuracy (%)")
    history.set_title(f"objective per trial ({direction}) and the best so far", fontsize=9, loc="left")
    history.xaxis.set_major_locator(MaxNLocator(integer=True))
    if numbers:
        history.set_xlim(min(numbers) - 0.5, max(numbers) + 0.5)
    _room_below(history)
    history.grid(alpha=0.3)
    # above the panel, right of its title: never over a trial
    history.legend(
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncol=4,
        fontsize=7,
        frameon=False,
        borderaxespad=0.2,
    )

    if shown_parameters:
        colour_norm = Normalize(min(numbers), max(max(numbers), min(numbers) + 1))
        colours = colormaps["viridis"]
        count = len(shown_parameters)
        bar_room = 1.1
        panel_width = (width - 0.7 - bar_room - (count - 1) * 0.6) / count
        y0 = bottom / height
        for index, key in enumerate(shown_parameters):
            ax = figure.add_axes(
                (
                    (0.7 + index * (panel_width + 0.6)) / width,
                    y0,
                    panel_width / width,
                    parameter_height / height,
                )
            )
            values = [t["parameters"].get(key) for t in trials]
            numeric = all(v is not None and _is_number(v) for v in values)
            if numeric:
                position = {t["trial"]: float(t["parameters"][key]) for t in trials}
                positive = [v for v in position.values() if v > 0]
                if positive and len(positive) == len(position) and max(positive) >= 20 * min(positive):
                    ax.set_xscale("log")
            else:
                categories = list(dict.fromkeys(str(v) for v in values))
                position = {t["trial"]: categories.index(str(t["parameters"].get(key))) for t in trials}
                ax.set_xticks(range(len(categories)), [_short(c) for c in categories], fontsize=7)
                ax.set_xlim(-0.5, len(categories) - 0.5)
            ax.scatter(
                [position[t["trial"]] for t in scored],
                [100 * t["objective"] for t in scored],
                c=[t["trial"] for t in scored],
                cmap=colours,
                norm=colour_norm,
                s=22,
                edgecolors="none",
            )
            if unscored:
                ax.plot(
                    [position[t["trial"]] for t in unscored],
                    [0.04] * len(unscored),
                    "x",
                    color="0.5",
                    transform=blended_transform_factory(ax.transData, ax.transAxes),
                    clip_on=False,
                )
            if best is not None:
                ax.plot(
                    [position[best["trial"]]],
                    [100 * best["objective"]],
                    "*",
                    markersize=13,
                    color="gold",
                    markeredgecolor="black",
                )
            ax.set_xlabel(key, fontsize=8)
            _room_below(ax)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if index == 0:
                ax.set_ylabel("final average accuracy (%)", fontsize=8)
        bar = figure.add_axes(
            ((width - bar_room + 0.25) / width, y0, 0.12 / width, parameter_height / height)
        )
        colourbar = figure.colorbar(ScalarMappable(colour_norm, cmap=colours), cax=bar)
        colourbar.set_label("trial number", fontsize=7)
        colourbar.ax.tick_params(labelsize=7)
        colourbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        more = f" (the first 4 of {len(parameters)} shown)" if len(parameters) > 4 else ""
        figure.text(
            0.7 / width,
            (bottom + parameter_height + 0.12) / height,
            f"objective against each sampled parameter{more}; ★ best trial, × failed / incomplete",
            fontsize=8,
            ha="left",
            va="bottom",
        )
    return figure
