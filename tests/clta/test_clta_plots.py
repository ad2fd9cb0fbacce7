"""``clta`` writes its results as figures too: task addition, per-task accuracy, alpha selection and
task negation in ``results/``, each naming its run (experiment, model, tasks, seed) and its units,
drawn from the same numbers as ``results/task_arithmetic.json``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clcore.callbacks.figures import off_figure
from clcore.clta import RESULTS_JSON, RESULTS_TABLE, run_protocol
from clcore.clta.plots import DPI, FIGURES, caption_of, main, task_addition_figure, write_plots
from tests.clta.test_protocol import TINY_SMALL, compose_ta

NAMES = ["task_addition.png", "per_task_accuracy.png", "alpha_selection.png", "task_negation.png"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny protocol of ``test_protocol`` (two rotated-digit tasks, every mode, method, aTLAS
    and the negation control), run once for this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    output_dir = tmp_path_factory.mktemp("clta_plots")
    try:
        run_protocol(compose_ta(TINY_SMALL, output_dir), log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return output_dir, json.loads((output_dir / RESULTS_JSON).read_text())


def test_the_protocol_writes_its_figures_beside_the_results(tiny_run):
    output_dir, _ = tiny_run
    results = output_dir / "results"
    for name in NAMES:
        assert (results / name).stat().st_size > 10_000, name
    assert sorted(p.name for p in results.glob("*.png")) == sorted(NAMES)
    assert all(name in (output_dir / RESULTS_TABLE).read_text() for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_figure_names_its_run_and_units_and_stays_on_the_page(tiny_run, name):
    output_dir, results = tiny_run
    figure = FIGURES[name](results)
    caption = caption_of(results)
    for identity in (
        "clta small_digits",
        "small MLP 32-16",
        "tasks rot90, rot180; control upright",
        "seed 0",
    ):
        assert identity in caption, (name, caption)
    assert caption.endswith(str(output_dir))

    def letters(text: str) -> str:  # the caption as drawn is wrapped to the figure's width
        return "".join(text.replace("·", " ").split())

    assert letters(figure.texts[0].get_text()) == letters(caption), name
    labels = [ax.get_ylabel() for ax in figure.axes] + [ax.get_xlabel() for ax in figure.axes]
    assert any("(%)" in label for label in labels), (name, labels)
    assert off_figure(figure, dpi=DPI) == [], name


def test_task_addition_bars_are_the_results_numbers(tiny_run):
    _, results = tiny_run
    figure = task_addition_figure(results)
    absolute, normalised = figure.axes[:2]
    methods = ["ta", "ties", "dare", "iso", "tsv", "atlas"]
    for ax, key in ((absolute, "absolute"), (normalised, "normalized")):
        expected = []
        for outcome in results["modes"].values():  # group by mode, one bar per method
            for method in methods:
                merged = outcome["atlas"] if method == "atlas" else outcome["addition"][method]
                expected.append(100 * merged[key])
        assert [bar.get_height() for bar in ax.patches] == pytest.approx(expected), key
    # the references: the zero-shot model (dashed, across) and each mode's fine-tuned models
    assert absolute.lines[0].get_ydata()[0] == pytest.approx(100 * results["zero_shot"]["average_test"])
    fine_tuned = [100 * outcome["single_task"]["average_test"] for outcome in results["modes"].values()]
    heights = [c.get_segments()[0][0][1] for c in absolute.collections]
    assert heights == pytest.approx(fine_tuned)
    assert normalised.lines[0].get_ydata()[0] == 100


def test_figures_are_redrawn_from_the_json_and_follow_what_ran(tiny_run, tmp_path):
    output_dir, results = tiny_run
    without_control = json.loads(json.dumps(results))
    without_control["control"] = None
    for outcome in without_control["modes"].values():
        outcome.pop("negation")
        outcome.pop("atlas")
    written = write_plots(without_control, tmp_path / "results")
    assert [p.name for p in written] == NAMES[:3]  # no control: no negation figure
    assert "control" not in FIGURES["task_addition.png"](without_control).texts[0].get_text()
    assert math.isfinite(without_control["zero_shot"]["average_test"])

    # python -m clcore.clta.plots <output folder>: every figure again, from results/task_arithmetic.json
    for name in NAMES:
        (output_dir / "results" / name).unlink()
    main([str(output_dir)])
    assert all((output_dir / "results" / name).is_file() for name in NAMES)
