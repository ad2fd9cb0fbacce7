"""The task-arithmetic protocol end to end: what ``clta`` runs.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023; Ortiz-Jimenez et al., "Task
Arithmetic in the Tangent Space", NeurIPS 2023; merging methods in ``merging.py``; aTLAS (Zhang et
al., NeurIPS 2024) in ``atlas.py``.

1. Check that every data set is on disk (one error listing all that is missing), then build the
   pre-trained model (CLIP weights, or the small model clcore pre-trains) and each task's frozen head.
2. Zero-shot accuracy of theta_0 on every task (and on the negation control).
3. Per task, fine-tune the encoder in ``standard`` and/or ``linear`` mode -> task vectors (saved,
   and reused by a re-run of the same configuration in the same output folder).
4. Per evaluation mode (``standard``, ``linear``, ``posthoc`` = standard vectors on the linearised
   model): single-task accuracy; task addition with each merging method, alpha chosen on validation
   from a grid, test accuracy absolute and normalised; aTLAS coefficients learned on a few-shot
   validation subset; task negation of each task against the control task.
5. ``results/task_arithmetic.json`` and ``results/table.md``, rewritten atomically after each mode;
   the figures (``clcore.clta.plots``: task addition, per-task accuracy, alpha selection, task
   negation) in ``results/*.png`` at the end, and after each mode that took a minute or more.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Subset

from clcore.benchmarks.errors import DataNotFoundError
from clcore.clta.evaluation import EVALUATION_MODES, TRAINED_AS, EncoderEditor, accuracy
from clcore.clta.fine_tuning import FinetuneSettings, finetune
from clcore.clta.report import markdown_tables
from clcore.clta.selection import select_addition_alpha, select_negation_alpha
from clcore.clta.task_data import TaskData, few_shot_indices
from clcore.task_arithmetic import ATLASModel, LinearTaskVector, TaskVector, fit_atlas, merge
from clcore.utils.atomic import torch_save_atomic, write_json_atomic, write_text_atomic
from clcore.utils.safe_load import load_tensors_safely

RESULTS_JSON = "results/task_arithmetic.json"
RESULTS_TABLE = "results/table.md"
# Figures after a mode only when it took this long (drawing them takes about a second), and at the end.
PLOTS_AFTER_MODES_OF_S = 60.0


def resolve_device(device: str) -> torch.device:
    return (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device == "auto"
        else torch.device(device)
    )


def _key(alpha: float) -> str:
    return f"{float(alpha):g}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _mean(values) -> float | None:
    """Mean of the values that are defined (not None); None when none is."""
    defined = [value for value in values if value is not None]
    return sum(defined) / len(defined) if defined else None


# -- 1. data and model ------------------------------------------------------------------------
def check_data(sources: Mapping[str, object], model_cfg: Mapping) -> None:
    """Raise ``DataNotFoundError`` naming every missing file of every data set, before any model is built."""
    problems = [message for source in sources.values() if (message := source.missing_message())]
    if not problems:
        return
    lines = ["Data sets are missing (nothing was trained):", *problems]
    if model_cfg.get("pretrained") not in (None, ""):
        lines.append(
            f"The model will also need pretrained weights {model_cfg.get('model_name')!r} / {model_cfg.get('pretrained')!r}: "
            "open_clip downloads them on first use (internet), or set model.pretrained=/path/to/checkpoint."
        )
    raise DataNotFoundError("\n".join(lines))


def _build_tasks(sources: Mapping[str, object], preprocess) -> list[TaskData]:
    tasks = [task for source in sources.values() for task in source.build(preprocess)]
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    return tasks


def _finetune_settings(cfg: DictConfig, task: TaskData, task_index: int) -> FinetuneSettings:
    settings = cfg.finetune
    if settings.steps is not None:
        steps = int(settings.steps)
    else:  # the task's own epochs, as Ilharco et al. set per data set
        steps = max(1, round(task.finetune_epochs * len(task.train) / settings.batch_size))
    return FinetuneSettings(
        steps=steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_steps,
        max_grad_norm=settings.max_grad_norm,
        num_workers=cfg.loader.num_workers,
        seed=cfg.seed + task_index,
    )


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# -- 2-3. zero-shot and fine-tuning ------------------------------------------------------------
def _task_vectors(cfg, pretrained_encoder, tasks, heads, device, vector_dir: Path, log) -> tuple[dict, dict]:
    """{trained_mode: {task: tau}} for the modes the evaluation needs, and the fine-tuning records."""
    trained_modes = sorted({TRAINED_AS[mode] for mode in cfg.modes})
    vectors: dict[str, dict[str, TaskVector]] = {mode: {} for mode in trained_modes}
    records: dict[str, dict[str, dict]] = {mode: {} for mode in trained_modes}
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for mode in trained_modes:
        for index, task in enumerate(tasks):
            settings = _finetune_settings(cfg, task, index)
            # What the vector depends on: the model, the task (its data, and the head its names and
            # templates build), the mode and the recipe; not how many loader workers read the data.
            recipe = {key: value for key, value in vars(settings).items() if key != "num_workers"}
            task_identity = (task.name, task.description, task.classnames, task.templates)
            fingerprint = _fingerprint(model_cfg, task_identity, mode, recipe)
            path = vector_dir / mode / f"{task.name}.pt"
            saved = load_tensors_safely(path, "task vector cache") if path.exists() else None
            if cfg.reuse_task_vectors and saved is not None and saved.get("fingerprint") == fingerprint:
                vectors[mode][task.name] = _vector_from_saved(saved)
                records[mode][task.name] = {
                    "steps": settings.steps,
                    "final_loss": saved["final_loss"],
                    "reused": True,
                }
                log(f"[{mode}] {task.name}: reusing the task vector in {path}")
                continue
            started = time.perf_counter()
            vector, losses = finetune(
                pretrained_encoder, heads[task.name], task.train, mode, settings, device
            )
            seconds = time.perf_counter() - started
            torch_save_atomic(
                path,
                {
                    "kind": vector.kind,
                    "vector": vector.vector,
                    "fingerprint": fingerprint,
                    "final_loss": losses[-1],
                },
            )
            vectors[mode][task.name] = vector
            records[mode][task.name] = {
                "steps": settings.steps,
                "first_loss": losses[0],
                "final_loss": losses[-1],
                "seconds": seconds,
                "reused": False,
            }
            log(
                f"[{mode}] {task.name}: {settings.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} ({seconds:.0f}s)"
            )
    return vectors, records


def _vector_from_saved(saved: Mapping) -> TaskVector:
    kinds = {TaskVector.kind: TaskVector, LinearTaskVector.kind: LinearTaskVector}
    return kinds[saved["kind"]](saved["vector"])


# -- 4. per mode -------------------------------------------------------------------------------
class Evaluator:
    """Accuracy of an encoder on one split of every task, each with its own head."""

    def __init__(
        self,
        heads: Mapping[str, nn.Module],
        device: torch.device,
        batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        self.heads, self.device = heads, device
        self.batch_size, self.num_workers = batch_size, num_workers

    def on(self, encoder: nn.Module, task: TaskData, split: str) -> float:
        return accuracy(
            encoder,
            self.heads[task.name],
            getattr(task, split),
            self.device,
            self.batch_size,
            self.num_workers,
        )

    def all(self, encoder: nn.Module, tasks: list[TaskData], split: str) -> dict[str, float]:
        return {task.name: self.on(encoder, task, split) for task in tasks}


def normalized_accuracy(merged: Mapping[str, float], single: Mapping[str, float]) -> dict[str, float | None]:
    """Per task: merged accuracy / fine-tuned single-task accuracy (Ortiz-Jimenez et al., Sec. 6).

    None where the fine-tuned accuracy is 0 (undefined); averages skip those tasks.
    """
    return {name: merged[name] / single[name] if single[name] > 0 else None for name in merged}


def task_addition(cfg, editor, vectors, tasks, evaluate, single_task, device) -> dict:
    """Every configured merging method: alpha on validation, then test accuracy absolute and normalised."""
    stacked = [vectors[task.name].to(device) for task in tasks]
    select_by = cfg.addition.select_by
    if select_by not in ("normalized", "absolute"):
        raise ValueError(f"addition.select_by must be 'normalized' or 'absolute', got {select_by!r}")
    outcome = {}
    for method, method_cfg in cfg.addition.methods.items():
        knobs = {name: value for name, value in method_cfg.items() if name != "alpha_grid"}
        # Every method folds alpha in linearly (merge(..., alpha=a) = a * merge(..., alpha=1)):
        # merge once and scale, instead of one merge (and SVD) per grid point.
        unit = merge(stacked, method, alpha=1.0, **knobs)
        val_curve = {}
        for alpha in method_cfg.alpha_grid:
            encoder = editor.at(unit, alpha)
            val = evaluate.all(encoder, tasks, "val")
            val_curve[_key(alpha)] = {
                "absolute": _mean(val.values()),
                "normalized": _mean(normalized_accuracy(val, single_task["val"]).values()),
            }
        selected_by = select_by
        if any(scores[select_by] is None for scores in val_curve.values()):
            selected_by = "absolute"  # every fine-tuned validation accuracy is 0: no normalised score
        best = select_addition_alpha({float(a): scores[selected_by] for a, scores in val_curve.items()})
        test = evaluate.all(editor.at(unit, best), tasks, "test")
        normalized = normalized_accuracy(test, single_task["test"])
        outcome[method] = {
            "alpha": best,
            "knobs": knobs,
            "selected_by": f"validation {selected_by} accuracy",
            "val_curve": val_curve,
            "test": test,
            "normalized_test": normalized,
            "absolute": _mean(test.values()),
            "normalized": _mean(normalized.values()),
        }
    return outcome


def atlas_addition(cfg, editor, vectors, tasks, heads, evaluate, single_task, device) -> dict:
    """aTLAS task addition: per-block coefficients learned on k-shot validation subsets of all tasks (Zhang et al. 2024, Sec. 4)."""
    settings = cfg.atlas
    model = ATLASModel(
        editor.base().to(device), [editor.cast(vectors[task.name]).to(device) for task in tasks]
    ).to(device)
    optimizer = torch.optim.AdamW([model.coefficients], lr=settings.lr, weight_decay=settings.weight_decay)
    shots = {}
    for task in tasks:
        shots[task.name] = few_shot_indices(task.val_labels, settings.shots_per_class, cfg.seed).tolist()

    def batches(task: TaskData, epoch: int):
        loader = DataLoader(
            Subset(task.val, shots[task.name]),
            batch_size=settings.batch_size,
            shuffle=True,
            num_workers=cfg.loader.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
        )
        return ((images.to(device), labels.to(device)) for images, labels in loader)

    losses = []
    for epoch in range(settings.epochs):
        for task in tasks:  # one shared optimiser: the coefficients see every task's shots each epoch
            losses += fit_atlas(
                model, batches(task, epoch), head=heads[task.name], optimizer=optimizer, epochs=1
            )
    model.eval()
    test = evaluate.all(model, tasks, "test")
    normalized = normalized_accuracy(test, single_task["test"])
    coefficients = model.coefficients.detach().cpu()
    return {
        "shots_per_class": settings.shots_per_class,
        "shots_per_task": {name: len(indices) for name, indices in shots.items()},
        "epochs": settings.epochs,
        "final_loss": losses[-1],
        "coefficient_mean_per_task": {
            task.name: coefficients[i].mean().item() for i, task in enumerate(tasks)
        },
        "num_blocks": coefficients.shape[1],
        "test": test,
        "normalized_test": normalized,
        "absolute": _mean(test.values()),
        "normalized": _mean(normalized.values()),
    }


def task_negation(
    editor: EncoderEditor,
    vectors: Mapping[str, TaskVector],
    tasks: list[TaskData],
    control: TaskData,
    evaluate: Evaluator,
    zero_shot: Mapping,
    alpha_grid,
    control_threshold: float,
) -> dict:
    """Per target task: theta_0 - alpha tau_t, alpha = strongest forgetting keeping the control at >= threshold x pre-trained.

    ``zero_shot`` holds the pre-trained accuracies: ``test[task]``, ``average_test``, ``control.val``, ``control.test``.
    """
    floor = control_threshold * zero_shot["control"]["val"]
    per_task = {}
    for task in tasks:
        negated = editor.cast(-vectors[task.name]).to(editor.device)
        target_val, control_val = {}, {}
        for alpha in alpha_grid:
            encoder = editor.at(negated, alpha)
            target_val[float(alpha)] = evaluate.on(encoder, task, "val")
            control_val[float(alpha)] = evaluate.on(encoder, control, "val")
        best = select_negation_alpha(target_val, control_val, floor)
        constraint_met = best is not None
        alpha = best if constraint_met else 0.0  # no admissible alpha: leave the model as it is
        encoder = editor.at(negated, alpha)
        per_task[task.name] = {
            "alpha": alpha,
            "constraint_met": constraint_met,
            "target_test": evaluate.on(encoder, task, "test"),
            "control_test": evaluate.on(encoder, control, "test"),
            "pretrained_target_test": zero_shot["test"][task.name],
            "val_curve": {_key(a): {"target": target_val[a], "control": control_val[a]} for a in target_val},
        }
    return {
        "control": control.name,
        "control_threshold": control_threshold,
        "control_floor_val": floor,
        "per_task": per_task,
        "average_target_test": _mean(entry["target_test"] for entry in per_task.values()),
        "average_control_test": _mean(entry["control_test"] for entry in per_task.values()),
        "pretrained_average_target_test": _mean(zero_shot["test"][task.name] for task in tasks),
        "pretrained_control_test": zero_shot["control"]["test"],
    }


# -- the whole protocol ------------------------------------------------------------------------
def run_protocol(cfg: DictConfig, log=print) -> dict:
    """Run the protocol ``cfg`` describes (a composed ``task_arithmetic`` config); returns the results dict."""
    from clcore.utils.quiet import silence_known_noise

    silence_known_noise()
    started = time.perf_counter()
    timing: dict[str, float] = {}
    modes = list(cfg.modes)
    unknown = [mode for mode in modes if mode not in EVALUATION_MODES]
    if not modes or unknown:
        raise ValueError(f"modes must be a non-empty subset of {EVALUATION_MODES}, got {modes}")
    if not cfg.get("dataset"):
        raise ValueError("no tasks: select at least one dataset (dataset=[...])")
    output_dir = Path(cfg.paths.output_dir)
    device = resolve_device(cfg.device)
    if cfg.get("cpu_threads") is not None:
        torch.set_num_threads(int(cfg.cpu_threads))
    torch.manual_seed(cfg.seed)

    sources = {key: instantiate(entry) for key, entry in cfg.dataset.items()}
    control_sources = {key: instantiate(entry) for key, entry in (cfg.get("control") or {}).items()}
    if len(control_sources) > 1:
        raise ValueError(f"at most one negation control data set, got {sorted(control_sources)}")
    check_data({**sources, **control_sources}, cfg.model)

    pretrained = instantiate(cfg.model)
    pretrained.to(device)
    tasks = _build_tasks(sources, pretrained.preprocess)
    control_tasks = _build_tasks(control_sources, pretrained.preprocess)
    control = control_tasks[0] if control_tasks else None
    if control is not None and control.name in {task.name for task in tasks}:
        raise ValueError(f"the control task {control.name!r} is also a task to fine-tune")
    heads = {task.name: pretrained.head(task).to(device) for task in [*tasks, *control_tasks]}
    if hasattr(pretrained, "release_text_tower"):
        pretrained.release_text_tower()
    encoder = pretrained.encoder.to(device).eval().requires_grad_(False)
    timing["setup"] = time.perf_counter() - started
    # what ran, beside its results (as clrun's config.yaml); written once the data and model are there
    write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    results: dict = {
        "protocol": "task arithmetic (Ilharco et al. 2023; Ortiz-Jimenez et al. 2023)",
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model": pretrained.describe(),
        "device": str(device),
        "tasks": {task.name: dict(task.description) for task in tasks},
        "control": None if control is None else {"name": control.name, **control.description},
        "modes": {},
        "timing_seconds": timing,
    }

    def save(plots: bool = False) -> None:
        write_json_atomic(output_dir / RESULTS_JSON, results)
        write_text_atomic(output_dir / RESULTS_TABLE, markdown_tables(results))
        if plots:
            from clcore.clta.plots import write_plots

            write_plots(results, (output_dir / RESULTS_JSON).parent)

    evaluate = Evaluator(heads, device, cfg.eval.batch_size, cfg.loader.num_workers)
    phase = time.perf_counter()
    zero_shot = {"val": evaluate.all(encoder, tasks, "val"), "test": evaluate.all(encoder, tasks, "test")}
    zero_shot["average_test"] = _mean(zero_shot["test"].values())
    if control is not None:
        zero_shot["control"] = {
            "val": evaluate.on(encoder, control, "val"),
            "test": evaluate.on(encoder, control, "test"),
        }
    results["zero_shot"] = zero_shot
    timing["zero_shot"] = time.perf_counter() - phase
    log(f"zero-shot test accuracy: {zero_shot['test']}")

    phase = time.perf_counter()
    vectors, finetuning = _task_vectors(cfg, encoder, tasks, heads, device, output_dir / "task_vectors", log)
    for mode, records in finetuning.items():
        for name, record in records.items():
            results["tasks"][name].setdefault("finetuning", {})[mode] = record
    timing["finetuning"] = time.perf_counter() - phase

    for mode in modes:
        phase = time.perf_counter()
        editor = EncoderEditor(encoder, mode)
        mode_vectors = vectors[TRAINED_AS[mode]]
        single = {
            split: {task.name: evaluate.on(editor.at(mode_vectors[task.name]), task, split) for task in tasks}
            for split in ("val", "test")
        }
        outcome: dict = {
            "trained_as": TRAINED_AS[mode],
            "single_task": {**single, "average_test": _mean(single["test"].values())},
        }
        results["modes"][mode] = outcome
        outcome["addition"] = task_addition(cfg, editor, mode_vectors, tasks, evaluate, single, device)
        if cfg.atlas.enabled:
            outcome["atlas"] = atlas_addition(
                cfg, editor, mode_vectors, tasks, heads, evaluate, single, device
            )
        if cfg.negation.enabled and control is not None:
            outcome["negation"] = task_negation(
                editor,
                mode_vectors,
                tasks,
                control,
                evaluate,
                zero_shot,
                cfg.negation.alpha_grid,
                cfg.negation.control_threshold,
            )
        timing[mode] = time.perf_counter() - phase
        timing["total"] = time.perf_counter() - started
        save(plots=timing[mode] >= PLOTS_AFTER_MODES_OF_S)
        summary = ", ".join(
            f"{method} {_percent(merged['absolute'])}/{_percent(merged['normalized'])}"
            for method, merged in outcome["addition"].items()
        )
        log(
            f"[{mode}] single-task {_percent(outcome['single_task']['average_test'])}; addition abs/norm: {summary}"
        )
    save(plots=True)
    log(
        f"results: {output_dir / RESULTS_JSON}, {output_dir / RESULTS_TABLE}, figures {output_dir / 'results'}/*.png"
    )
    return results
