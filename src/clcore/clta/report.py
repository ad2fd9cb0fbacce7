"""The protocol's results as markdown tables (``results/table.md``); the same results as figures:
``clcore.clta.plots``."""

from __future__ import annotations

from collections.abc import Mapping


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _alpha(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def markdown_tables(results: Mapping) -> str:
    """Task addition (absolute and normalised accuracy per mode and method), task negation, per-task accuracy."""
    tasks = list(results["tasks"])
    modes = results["modes"]
    lines = [
        f"Task addition over {len(tasks)} tasks ({', '.join(tasks)}): test accuracy (%) averaged over tasks;",
        "normalised = merged accuracy / the mode's fine-tuned single-task accuracy, per task, then averaged.",
        "alpha chosen on validation data.",
        "",
        "| mode | method | alpha | absolute | normalised |",
        "| --- | --- | --- | --- | --- |",
        f"| pre-trained | zero-shot | - | {_pct(results['zero_shot']['average_test'])} | - |",
    ]
    for mode, outcome in modes.items():
        lines.append(
            f"| {mode} | fine-tuned (single task) | - | {_pct(outcome['single_task']['average_test'])} | 100.0 |"
        )
        for method, merged in outcome.get("addition", {}).items():
            lines.append(
                f"| {mode} | {method} | {_alpha(merged['alpha'])} | {_pct(merged['absolute'])} | {_pct(merged['normalized'])} |"
            )
        if "atlas" in outcome:
            atlas = outcome["atlas"]
            lines.append(
                f"| {mode} | atlas | learned | {_pct(atlas['absolute'])} | {_pct(atlas['normalized'])} |"
            )

    negations = {mode: outcome["negation"] for mode, outcome in modes.items() if "negation" in outcome}
    if negations:
        first = next(iter(negations.values()))
        lines += [
            "",
            f"Task negation, control task {first['control']}: test accuracy (%) averaged over targets; alpha per",
            f"target = the lowest target validation accuracy keeping control accuracy >= {first['control_threshold']:g} x the pre-trained model's.",
            "",
            "| mode | target (negated) | control | target, pre-trained | control, pre-trained |",
            "| --- | --- | --- | --- | --- |",
        ]
        for mode, negation in negations.items():
            lines.append(
                f"| {mode} | {_pct(negation['average_target_test'])} | {_pct(negation['average_control_test'])} | "
                f"{_pct(negation['pretrained_average_target_test'])} | {_pct(negation['pretrained_control_test'])} |"
            )

    lines += [
        "",
        "Test accuracy (%) per task:",
        "",
        "| mode | method | " + " | ".join(tasks) + " |",
        "| --- | --- |" + " --- |" * len(tasks),
    ]
    lines.append(
        "| pre-trained | zero-shot | "
        + " | ".join(_pct(results["zero_shot"]["test"][t]) for t in tasks)
        + " |"
    )
    for mode, outcome in modes.items():
        rows = {"fine-tuned": outcome["single_task"]["test"]}
        rows.update({method: merged["test"] for method, merged in outcome.get("addition", {}).items()})
        if "atlas" in outcome:
            rows["atlas"] = outcome["atlas"]["test"]
        for method, accuracies in rows.items():
            lines.append(f"| {mode} | {method} | " + " | ".join(_pct(accuracies[t]) for t in tasks) + " |")
    figures = ["task_addition.png", "per_task_accuracy.png", "alpha_selection.png"]
    if negations:
        figures.append("task_negation.png")
    lines += [
        "",
        f"Figures beside this table (drawn at the end of the run by `clcore.clta.plots`): {', '.join(figures)}.",
    ]
    return "\n".join(lines) + "\n"
