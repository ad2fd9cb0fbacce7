"""TAK: task arithmetic with KFAC regularisation, as a continual-learning algorithm.

Porrello, Bonicelli, Frascaroli, Buzzega, Calderara et al., "Dataless Weight Disentanglement in
Task Arithmetic via Kronecker-Factored Approximate Curvature", ICLR 2026, arXiv 2602.17385.

Each task t fine-tunes an update tau_t of chosen backbone parameters (``tak_parameters``) while the
pre-trained weights theta_0 stay in place (``clcore.algorithms.tak.weight_delta``), in tangent
space by default or non-linearly. The loss is

    CE(head_t(z(x; tau_t)), y) + lambda * R(tau_t),    z = normalised image features,

with R the KFAC approximation of tau^T G tau, G the Gauss-Newton matrix of the OTHER tasks'
features at theta_0 (Sec. 4; ``kfac_penalty``): tr(B dW A dW^T) per linear layer, a full Gram
quadratic form for layer norms and the class token (times ``fisher_norm_scaler``), the output
projection's term times ``fisher_ft_proj_scaler``. Eq. 7 (``fisher_ideal``) keeps one factor pair
per task weighted by N_t / N; Eq. 8 (default) one accumulated pair (sum_t w_t A_t, sum_t B_t).
The penalty is added once per optimiser step, i.e. once per virtual batch of ``virtual_bs_n``
batches, whose cross-entropy gradients are averaged (gradient accumulation).

Tangent space (``tangent_of``): with ``normalised`` (the default, the reference implementation) the
network linearised is g = normalize o f, the L2-normalised features:
z = normalize(g(x; theta_0) + J_theta g(x; theta_0) tau), the outer normalisation being the
reference's classification head's (``ClassificationHead(normalize=True)``). With ``raw`` the raw
features are linearised and then normalised, z = normalize(f(x; theta_0) + J_theta f(x; theta_0) tau),
as tangent task arithmetic does (Ortiz-Jimenez et al., NeurIPS 2023). Non-linearly,
z = normalize(f(x; theta_0 + tau)) either way.

After each task its vector tau_t is stored, all vectors so far are merged (``merging``,
``alpha_merging``) and the task loop's test loop evaluates theta_0 + merge: the accuracy matrix is
the merged model's. The last task ends with an alpha sweep (``alpha_sweep_points``). The algorithm
writes no file: the ``TAKOutputs`` callback (``clcore.algorithms.tak.outputs``) writes the sweep and,
when asked, the task vectors into the run folder.

Options: every rule about them is in ``TAK.config_problems``, which the constructor and ``clrun``'s
pre-flight check both read, so a bad value is reported with all the others before anything trains.

Curvature: where the factors come from (``load_fisher``) ---------------------------------------
The factors of task s are computed once at theta_0 from task s's training data and cached on disk
(``tak_factors``). As in the reference code, a run either

- ``load_fisher: false`` (the reference's default): stores the factors of each task as it comes
  (only of task ``fisher_task_id``, 0-based as the reference's, when set: one task per job on a
  cluster) and trains WITHOUT the penalty; or
- ``load_fisher: true``: trains every task with the penalty of the other tasks' factors. With
  ``fisher_future_tasks: true`` (the reference) "other" means every other task of the sequence,
  later ones included: their factors must be known before they are trained, so factors missing
  from the cache are computed up front from those tasks' training data (the reference requires a
  complete cache from an earlier run instead). Task t's training then reads only factors, never
  another task's data. With ``fisher_future_tasks: false`` only the tasks already seen
  regularise (strictly continual: nothing of a future task is used; task 1 has no penalty).

Heads: with ``frozen_head`` (a class-weights provider: CLIP's zero-shot text head, or a saved
classifier) each task's head is written once and frozen; without it the paradigm's linear head of
the current task trains with tau_t and is frozen afterwards (DIL's shared head keeps training).
Training uses the current task's logits only (as the reference); testing uses the paradigm's.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from clcore.algorithms.base import CLAlgorithm, OptimizerFactory, SchedulerFactory
from clcore.algorithms.tak.alpha_sweep import SweepPoint
from clcore.algorithms.tak.clip_kfac_ready import make_kfac_ready
from clcore.algorithms.tak.evaluation import task_accuracy
from clcore.algorithms.tak.factors import PRECISIONS, TaskFactorStore, combined_curvature, is_train_percent
from clcore.algorithms.tak.fisher_cache import REMOTE_PREFIXES
from clcore.algorithms.tak.heads import task_head, write_frozen_head
from clcore.algorithms.tak.kfac import TOKEN_MODES as KFAC_TOKEN_MODES
from clcore.algorithms.tak.kfac_penalty import kfac_penalty
from clcore.algorithms.tak.merging import CONVENTIONS as MERGE_CONVENTIONS
from clcore.algorithms.tak.merging import merge_task_vectors, sweep_values
from clcore.algorithms.tak.parameters import select_parameters
from clcore.algorithms.tak.task_vector_files import (
    is_mammoth_run,
    mammoth_task_vector_file,
    read_mammoth_task_vector,
    read_task_vector,
    task_vector_file,
)
from clcore.algorithms.tak.weight_delta import WeightDelta, forward_with_delta
from clcore.backbones.base import CLBackbone
from clcore.backbones.clip import CLIPVisualBackbone
from clcore.config_rules import is_int, is_number, is_positive_finite
from clcore.heads.base import CLHeads
from clcore.heads.dil import HeadDIL
from clcore.metrics.names import task_metric
from clcore.task_arithmetic.linearize import normalize_features
from clcore.task_arithmetic.merging import MERGE_METHODS
from clcore.utils.lr_schedules import SCHEDULES, lr_multiplier
from clcore.utils.safe_load import load_tensors_safely

log = logging.getLogger(__name__)

ClassWeights = Callable[[list[str]], tuple[Tensor, Tensor]]

# The values of TAK's own choice options (``configs/algorithm/tak.yaml`` says what each means).
TANGENT_OF = ("normalised", "raw")  # what the tangent model linearises: normalize o f, or f


class TAK(CLAlgorithm):
    """Task arithmetic with KFAC regularisation (Porrello et al., ICLR 2026); options in ``configs/algorithm/tak.yaml``."""

    supported_paradigms = ("til", "cil", "dil")

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        *,
        ft_linears: bool = True,
        ft_attention: bool = True,
        ft_layer_norms: bool = True,
        ft_class_embedding: bool = True,
        ft_projection: bool = True,
        ft_positional_embedding: bool = False,
        ft_conv_stem: bool = False,
        tangent: bool = True,
        tangent_of: str = "normalised",
        use_lora: bool = False,
        lora_rank: int = 16,
        lora_rank_attention: int = 48,
        reg_lambda: float = 500.0,
        fisher_ft_proj_scaler: float = 0.1,
        fisher_norm_scaler: float = 10.0,
        fisher_ideal: bool = False,
        load_fisher: bool = False,
        fisher_cache: str | None = "fisher_cache",
        fisher_task_id: int | None = None,
        fisher_future_tasks: bool = True,
        train_percent: float | int = 1.0,
        fisher_num_samples_expectation: int = 1,
        kfac_token_mode: str = "expand",
        fp_precision: str = "fp32",
        fisher_seed: int = 0,
        virtual_bs_n: int = 1,
        scheduler: str = "cosine",
        warmup_steps: int = 500,
        clip_grad_norm: float | None = None,
        merging: str = "ta",
        merge_convention: str = "mammoth",
        seed: int = 0,
        iso_cts_common_fraction: float = 0.8,
        alpha_merging: float | str = "one",
        dare_p: float = 0.7,
        ties_k: float = 0.2,
        alpha_sweep_start: float = 0.1,
        alpha_sweep_end: float = 1.5,
        alpha_sweep_step: float = 0.1,
        load_task_vectors: bool = False,
        load_path: str | None = None,
        frozen_head: ClassWeights | None = None,
        pretrained_backbone: str | None = None,
    ) -> None:
        # Every option as given: CLAlgorithm raises all of config_problems' findings at once.
        options = {"num_tasks": num_tasks, "lr_scheduler": lr_scheduler, **_own_options(TAK, locals())}
        super().__init__(backbone, heads, optimizer, num_tasks, None, lr_scheduler_monitor, options=options)
        self.automatic_optimization = False  # virtual batches: the penalty joins once per optimiser step
        self.sweep_alphas = sweep_values(alpha_sweep_start, alpha_sweep_end, alpha_sweep_step)
        if pretrained_backbone is not None:
            backbone.load_state_dict(load_tensors_safely(pretrained_backbone, "pretrained backbone"))
        if isinstance(backbone, CLIPVisualBackbone):
            make_kfac_ready(backbone)  # qkv and output projection as nn.Linear: KFAC-hookable, jvp-able
        backbone.requires_grad_(False).eval()  # theta_0 never changes; no dropout / batch statistics
        self.selection = select_parameters(
            backbone,
            {
                "linears": ft_linears,
                "attention": ft_attention,
                "layer_norms": ft_layer_norms,
                "class_embedding": ft_class_embedding,
                "projection": ft_projection,
                "positional_embedding": ft_positional_embedding,
                "conv_stem": ft_conv_stem,
            },
            projection_scaler=fisher_ft_proj_scaler,
            norm_scaler=fisher_norm_scaler,
            use_lora=use_lora,
            lora_rank=lora_rank,
            lora_rank_attention=lora_rank_attention,
        )
        self.weight_delta = WeightDelta(self.selection.shapes, self.selection.lora_ranks)
        self.kfac_token_mode = kfac_token_mode
        self.merge_seed = seed
        self.iso_cts_common_fraction = iso_cts_common_fraction
        self.factor_store = TaskFactorStore(
            backbone,
            self.selection,
            fisher_cache,
            train_percent,
            fisher_num_samples_expectation,
            fp_precision,
            fisher_seed,
            token_mode=kfac_token_mode,
        )
        self.tangent = tangent
        self.tangent_of = tangent_of
        self.reg_lambda = float(reg_lambda)
        self.fisher_ideal = fisher_ideal
        self.load_fisher = load_fisher
        self.fisher_task_id = fisher_task_id
        self.fisher_future_tasks = fisher_future_tasks
        self.virtual_bs_n = virtual_bs_n
        self.scheduler = scheduler
        self.warmup_steps = warmup_steps
        self.clip_grad_norm = clip_grad_norm
        self.merging = merging
        self.merge_convention = merge_convention
        self.alpha_merging = alpha_merging
        self.dare_p = dare_p
        self.ties_k = ties_k
        self.load_task_vectors = load_task_vectors
        self.load_path = load_path
        self.frozen_head = frozen_head

        # State across tasks (checkpointed by cl_state_dict).
        self.task_vectors: list[dict[str, Tensor]] = []  # tau_t on the CPU, by parameter name
        self.single_task_accuracy: list[float] = []  # task t with tau_t alone, right after training
        self.fisher_seconds: list[float] = []  # time spent computing (not loading) factors per task
        self.task_vector_loaded: list[bool] = []
        self.alpha_sweep_points: list[SweepPoint] = []  # the final sweep, once the last task ended
        # Per-task state.
        self.curvature: list | None = None  # [(weight, KFACFactors)] for kfac_penalty, or None: no penalty
        self.evaluate_merged = False  # test with theta_0 + merge (True after a task ends)
        self._merged: dict[str, Tensor] | None = None
        self._loaded_vector: dict[str, Tensor] | None = None
        self._benchmark = None
        self._heads_written: set[int] = set()
        self._batches_since_step = 0

    # ---- the rules: one place, read by the constructor and by clrun's pre-flight check ---------
    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        """The setting's rules (``CLAlgorithm``) and every rule of TAK's own options, each with its fix.

        ``options`` are the ``algorithm.*`` keys as plain data (an absent key takes the constructor's
        default); ``num_tasks`` and ``lr_scheduler`` are read where given (the constructor gives them).
        What can only be known from the built backbone (whether the ``ft_*`` flags select any of its
        parameters) is checked when it is built.
        """
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        given = {**_option_defaults(TAK), **options}
        num_tasks = given.get("num_tasks")

        if given.get("lr_scheduler") is not None:
            problems.append(
                "lr_scheduler is set, but TAK schedules the learning rate itself (algorithm.scheduler: "
                f"{' | '.join(SCHEDULES)}): set lr_scheduler=null"
            )
        # The penalty lambda * R(tau) (Sec. 4): 0 switches it off.
        reg_lambda = given["reg_lambda"]
        if not (is_number(reg_lambda) and math.isfinite(reg_lambda) and reg_lambda >= 0):
            problems.append(
                f"algorithm.reg_lambda={reg_lambda!r}: must be a finite number >= 0 (0: no penalty)"
            )

        # The KFAC factors at theta_0: where they are cached, which task, how many examples.
        fisher_cache = given["fisher_cache"]
        if isinstance(fisher_cache, str) and fisher_cache.startswith(REMOTE_PREFIXES):
            problems.append(
                f"algorithm.fisher_cache={fisher_cache!r} is remote; only local folders work offline: download "
                "the factor files (kfac-*.pt) into a local folder and set algorithm.fisher_cache to it"
            )
        fisher_task_id = given["fisher_task_id"]
        highest = num_tasks if is_int(num_tasks) else None  # the pre-flight check may not know T
        in_range = (
            is_int(fisher_task_id) and fisher_task_id >= 0 and (highest is None or fisher_task_id < highest)
        )
        if fisher_task_id is not None and not in_range:
            last = highest - 1 if highest is not None else "T-1"
            problems.append(
                f"algorithm.fisher_task_id={fisher_task_id!r}: must be a task index in 0..{last} "
                "(0-based, as the reference's --fisher_task_id: 0 is the first task), or null to store "
                "every task's factors"
            )
        train_percent = given["train_percent"]
        if not is_train_percent(train_percent):
            problems.append(
                f"algorithm.train_percent={train_percent!r}: must be a fraction of the training loader's batches "
                "in (0, 1] (a float, 1.0 = all) or a number of batches of the training batch size >= 1 (an integer)"
            )
        fisher_seed = given["fisher_seed"]
        if not (is_int(fisher_seed) and 0 <= fisher_seed < 2**32):
            problems.append(
                f"algorithm.fisher_seed={fisher_seed!r}: must be an integer in [0, 2**32) (as seed)"
            )
        samples = given["fisher_num_samples_expectation"]
        if not (is_int(samples) and samples >= 0):
            problems.append(
                f"algorithm.fisher_num_samples_expectation={samples!r}: must be an integer >= 0 "
                "(Monte Carlo projections per example; 0 = exact)"
            )
        # How the update is parametrised, and the penalty's per-kind multipliers (Sec. 4).
        for key in ("lora_rank", "lora_rank_attention"):
            if not (is_int(given[key]) and given[key] >= 1):
                problems.append(f"algorithm.{key}={given[key]!r}: a LoRA rank must be an integer >= 1")
        for key in ("fisher_ft_proj_scaler", "fisher_norm_scaler"):
            if not (is_number(given[key]) and math.isfinite(given[key]) and given[key] >= 0):
                problems.append(
                    f"algorithm.{key}={given[key]!r}: must be a finite number >= 0 (0: not penalised)"
                )
        if not (isinstance(given["fp_precision"], str) and given["fp_precision"] in PRECISIONS):
            problems.append(
                f"algorithm.fp_precision={given['fp_precision']!r}: must be one of {', '.join(PRECISIONS)}"
            )
        _check_choice(
            problems,
            given,
            "kfac_token_mode",
            KFAC_TOKEN_MODES,
            "expand: every token of a linear layer is an example (the reference); reduce: one per input, "
            "tokens averaged",
        )
        _check_choice(
            problems,
            given,
            "tangent_of",
            TANGENT_OF,
            "normalised: linearise the L2-normalised features (the reference); raw: linearise the raw "
            "features, then normalise (tangent task arithmetic)",
        )

        # Optimisation: virtual batches and the per-task learning-rate schedule.
        virtual_bs_n = given["virtual_bs_n"]
        if not (is_int(virtual_bs_n) and virtual_bs_n >= 1):
            problems.append(
                f"algorithm.virtual_bs_n={virtual_bs_n!r}: must be an integer >= 1 (batches per optimiser step)"
            )
        warmup_steps = given["warmup_steps"]
        if not (is_int(warmup_steps) and warmup_steps >= 0):
            problems.append(
                f"algorithm.warmup_steps={warmup_steps!r}: must be an integer >= 0 (optimiser steps of linear warm-up)"
            )
        clip = given["clip_grad_norm"]
        if clip is not None and not (is_number(clip) and math.isfinite(clip) and clip >= 0):
            problems.append(
                f"algorithm.clip_grad_norm={clip!r}: must be a finite number >= 0, or null (null / 0: no clipping)"
            )
        if given["scheduler"] not in SCHEDULES:
            problems.append(
                f"algorithm.scheduler={given['scheduler']!r}: must be one of {', '.join(SCHEDULES)}"
            )

        # Merging after each task and the final alpha sweep (``clcore.algorithms.tak.merging``).
        merging = given["merging"]
        if not (isinstance(merging, str) and merging in MERGE_METHODS):
            problems.append(
                f"algorithm.merging={merging!r} is not a merge method: choose one of {', '.join(sorted(MERGE_METHODS))}"
            )
        _check_choice(
            problems,
            given,
            "merge_convention",
            MERGE_CONVENTIONS,
            "mammoth: each method as the reference codes it; paper: as its paper defines it",
        )
        fraction = given["iso_cts_common_fraction"]
        if merging == "iso_cts" and not (is_number(fraction) and 0 <= fraction <= 1):
            problems.append(
                f"algorithm.iso_cts_common_fraction={fraction!r}: Iso-CTS's share of the common subspace must be in [0, 1]"
            )
        if not (is_int(given["seed"]) and 0 <= given["seed"] < 2**63):
            problems.append(
                f"algorithm.seed={given['seed']!r}: must be an integer >= 0 (the run seed: ${{seed}})"
            )
        alpha = given["alpha_merging"]
        if alpha != "one" and not is_positive_finite(alpha):
            problems.append(
                f"algorithm.alpha_merging={alpha!r}: must be a positive finite number or 'one' "
                "(a coefficient of 1 per task vector)"
            )
        # The library checks these only when it merges, i.e. after the first task trained.
        dare_p, ties_k = given["dare_p"], given["ties_k"]
        if merging == "dare" and not (is_number(dare_p) and 0 <= dare_p < 1):
            problems.append(f"algorithm.dare_p={dare_p!r}: DARE's drop probability must be in [0, 1)")
        if merging == "ties" and not (is_number(ties_k) and 0 < ties_k <= 1):
            problems.append(f"algorithm.ties_k={ties_k!r}: TIES' fraction of entries kept must be in (0, 1]")
        sweep = {key: given[key] for key in ("alpha_sweep_start", "alpha_sweep_end", "alpha_sweep_step")}
        if not (
            all(is_number(value) and math.isfinite(value) for value in sweep.values())
            and sweep["alpha_sweep_step"] > 0
            and sweep["alpha_sweep_end"] >= sweep["alpha_sweep_start"]
        ):
            shown = " ".join(f"algorithm.{key}={value!r}" for key, value in sweep.items())
            problems.append(f"{shown}: the alpha sweep needs finite numbers with step > 0 and end >= start")

        # Task vectors of an earlier run (the reference's --resume / --load_path).
        if given["load_task_vectors"] and not given["load_path"]:
            problems.append(
                "algorithm.load_task_vectors=true needs algorithm.load_path: the task_vectors/ folder of an "
                "earlier run (written by the TAKOutputs callback with save_task_vectors=true), or the "
                "reference's <job>_<dataset>_args.json"
            )
        if given["load_task_vectors"] and is_mammoth_run(given["load_path"]) and given["frozen_head"] is None:
            problems.append(
                f"algorithm.load_path={given['load_path']!r} is a reference (Mammoth) run, whose files hold no "
                "per-task heads: load it with a frozen head (algorithm.frozen_head, e.g. CLIP's zero-shot "
                "text head as in the tak_*_clip experiments)"
            )
        return problems

    # ---- the per-task protocol -------------------------------------------------------------
    def setup_task(self, task_id: int, num_classes: int) -> None:
        super().setup_task(task_id, num_classes)
        task_head(self.heads, task_id).requires_grad_(self.frozen_head is None)
        self.weight_delta.reset()
        self._loaded_vector = None
        self._batches_since_step = 0

    def on_fit_start(self) -> None:
        benchmark = self.trainer.datamodule
        if benchmark is None:
            raise RuntimeError(
                "TAK needs the benchmark as the Trainer's datamodule (factors and evaluations read its tasks)"
            )
        self._benchmark = benchmark
        self.evaluate_merged = False
        self._write_frozen_heads(benchmark)
        if self.load_task_vectors:
            self._loaded_vector = self._load_saved_task_vector(self.task_id)
        computed_before = self.factor_store.computed_seconds
        self.curvature = (
            None if self._loaded_vector is not None else self._prepare_curvature(benchmark, self.task_id)
        )
        _set_at(self.fisher_seconds, self.task_id, self.factor_store.computed_seconds - computed_before)

    def on_test_start(self) -> None:
        # The task loop may test a task before it trains (forward transfer): its head must exist.
        if self.trainer.datamodule is not None:
            self._write_frozen_heads(self.trainer.datamodule)

    def train(self, mode: bool = True) -> TAK:
        super().train(mode)
        self.backbone.eval()  # theta_0 is a fixed function: no dropout, frozen normalisation statistics
        return self

    def on_train_batch_start(self, batch, batch_idx: int):
        if self._loaded_vector is not None:
            return -1  # this task's vector was loaded (algorithm.load_task_vectors): skip its training

    def on_fit_end(self) -> None:
        task = self.task_id
        trained = {
            name: tensor.detach().cpu().clone() for name, tensor in self.weight_delta.materialize().items()
        }
        vector = self._loaded_vector if self._loaded_vector is not None else trained
        _set_at(self.task_vectors, task, vector)
        _set_at(self.task_vector_loaded, task, self._loaded_vector is not None)
        own = {name: tensor.to(self.device) for name, tensor in vector.items()}
        _set_at(self.single_task_accuracy, task, self._accuracy(task, own))
        if self.frozen_head is None and not isinstance(self.heads, HeadDIL):
            task_head(self.heads, task).requires_grad_(False)  # a later task must not move it
        self._merge()

    def on_task_end(self, task_id: int) -> dict[str, float]:
        merged_accuracy = (
            self.last_test_accuracy[: task_id + 1].tolist() if self.last_test_accuracy is not None else []
        )
        ratios = [
            acc / single for acc, single in zip(merged_accuracy, self.single_task_accuracy) if single > 0
        ]
        scalars = {
            "single_task_accuracy": self.single_task_accuracy[task_id],
            # merged / single-task accuracy (Ortiz-Jimenez et al. 2023); 0 where no single accuracy is > 0
            # (summary.json holds no NaN)
            "normalized_accuracy": sum(ratios) / len(ratios) if ratios else 0.0,
            "fisher_seconds": self.fisher_seconds[task_id],
            "task_vector_loaded": float(self.task_vector_loaded[task_id]),
        }
        if task_id == self.num_tasks - 1 and self.trainer.is_global_zero:
            self.alpha_sweep_points = self.alpha_sweep()
        return scalars

    # ---- curvature ---------------------------------------------------------------------------
    def _prepare_curvature(self, benchmark, task: int) -> list | None:
        """The other tasks' factors for task ``task`` (``load_fisher``), or store task ``task``'s own."""
        if not self.load_fisher:
            if self.fisher_task_id is None or self.fisher_task_id == task:  # 0-based, as the reference
                self.factor_store.factors(benchmark, task)
            return None
        if self.reg_lambda == 0:
            return None  # nothing to weigh: do not pay for factors
        others = [
            s for s in range(benchmark.num_tasks) if s != task and (self.fisher_future_tasks or s < task)
        ]
        if not others:
            return None
        curvature = combined_curvature(
            lambda s: self.factor_store.factors(benchmark, s), others, self.fisher_ideal
        )
        return [
            (weight, factors.to(dtype=torch.float32, device=self.device)) for weight, factors in curvature
        ]

    def regularization_loss(self) -> Tensor:
        """lambda * R(tau): the KFAC penalty of the current update against ``curvature`` (0 without)."""
        delta = self.weight_delta.materialize()
        if self.curvature is None:
            return next(iter(delta.values())).new_zeros(())
        penalised = {name: delta[name] for name in self.selection.kfac_params}
        penalised.update(
            {name: delta[name] for names in self.selection.gram_groups.values() for name in names}
        )
        return self.reg_lambda * kfac_penalty(penalised, self.curvature, self.selection.scalers)

    # ---- forward -----------------------------------------------------------------------------
    def features(self, x: Tensor, delta: Mapping[str, Tensor] | None) -> Tensor:
        """L2-normalised features of theta_0 + delta (tangent or not); ``delta=None``: theta_0.

        Tangent with ``tangent_of: normalised``: normalize(g0 + J_g delta), g = normalize o f (the
        reference linearises g, and its classification head normalises what the head sees); with
        ``raw``: normalize(f0 + J_f delta). At delta = 0 both are normalize(f(x; theta_0)).
        """
        if delta is None:
            output = self.backbone(x)
        else:
            linearised = normalize_features if self.tangent and self.tangent_of == "normalised" else None
            output = forward_with_delta(self.backbone, delta, x, self.tangent, output_map=linearised)
        return normalize_features(output)

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        return self.heads(self.features(x, self.weight_delta.materialize()), task_id)

    def eval_logits(self, x: Tensor, task_id: int) -> Tensor:
        if not self.evaluate_merged:
            return self(x, task_id)
        return self.heads(self.features(x, self._merged_on(x.device)), task_id)

    # ---- training ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, labels, task_id = batch
        features = self.features(x, self.weight_delta.materialize())
        loss = self.loss(task_head(self.heads, task_id)(features), labels)  # the current task's classes
        self.manual_backward(loss / self.virtual_bs_n)
        self._batches_since_step += 1
        last_batch = batch_idx + 1 == self.trainer.num_training_batches
        penalty = None
        if self._batches_since_step == self.virtual_bs_n or last_batch:
            penalty = self._optimizer_step()
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
            if penalty is not None and self.curvature is not None:
                self.log(task_metric("train/penalty", task_id), penalty, on_step=True, on_epoch=False)
        return loss.detach()

    def _optimizer_step(self) -> Tensor:
        penalty = self.regularization_loss()
        if self.curvature is not None:
            self.manual_backward(penalty)
        optimizer = self.optimizers()
        if self.clip_grad_norm:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.clip_grad_norm, gradient_clip_algorithm="norm"
            )
        optimizer.step()
        optimizer.zero_grad()
        self.lr_schedulers().step()
        self._batches_since_step = 0
        return penalty.detach()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.trainable_parameters())
        batches = self.trainer.estimated_stepping_batches
        finite = math.isfinite(batches)
        steps = math.ceil(batches / self.virtual_bs_n) if finite else 10**9
        # total_batches: the horizon of the reference's "decay", in batches rather than optimiser steps
        multiplier = lr_multiplier(
            self.scheduler, steps, self.warmup_steps, total_batches=int(batches) if finite else None
        )
        scheduler = LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- task vectors, merging, evaluation ------------------------------------------------------
    @property
    def _merge_conventions(self) -> dict:
        """How every merge is computed: the convention, DARE's mask seed (the run's), Iso-CTS's common share."""
        return {
            "convention": self.merge_convention,
            "seed": self.merge_seed,
            "common_space_fraction": self.iso_cts_common_fraction,
        }

    def _merge(self) -> None:
        device = self.device if self._trainer is not None else None
        self._merged = merge_task_vectors(
            self.task_vectors,
            self.merging,
            self.alpha_merging,
            self.tangent,
            self.dare_p,
            self.ties_k,
            device,
            **self._merge_conventions,
        )
        self.evaluate_merged = True

    def _merged_on(self, device: torch.device) -> dict[str, Tensor] | None:
        if self._merged is None:
            return None  # nothing trained yet: theta_0
        if next(iter(self._merged.values())).device != device:
            self._merged = {name: tensor.to(device) for name, tensor in self._merged.items()}
        return self._merged

    def _accuracy(self, task: int, delta: Mapping[str, Tensor] | None) -> float:
        def logits(x: Tensor, task_id: int) -> Tensor:
            return self.heads(self.features(x, delta), task_id)

        return task_accuracy(self._benchmark, task, logits, self.heads.targets, self.device)

    def alpha_sweep(self) -> list[SweepPoint]:
        """Accuracy of the merge of every task vector per alpha (``TAKOutputs`` writes it as CSV and PNG).

        Alpha a stands for ``alpha_merging = a * T`` (the reference's sweep), i.e. a coefficient of a
        per task vector for ``ta`` / ``dare`` / ``ties``.
        """
        count = len(self.task_vectors)
        points = []
        for alpha in self.sweep_alphas:
            merged = merge_task_vectors(
                self.task_vectors,
                self.merging,
                alpha * count,
                self.tangent,
                self.dare_p,
                self.ties_k,
                self.device,
                **self._merge_conventions,
            )
            accuracies = [self._accuracy(task, merged) for task in range(count)]
            points.append(SweepPoint(alpha, accuracies, list(self.single_task_accuracy[:count])))
        return points

    def _write_frozen_heads(self, benchmark) -> None:
        if self.frozen_head is None:
            return
        if not self._heads_written:
            # Embed every class name of the sequence once, then free the text tower.
            self.frozen_head(
                [name for task in range(benchmark.num_tasks) for name in benchmark.class_names_of(task)]
            )
            getattr(self.frozen_head, "release", lambda: None)()
        for task in range(self.heads.num_tasks_seen):
            if task not in self._heads_written:
                weight, bias = self.frozen_head(benchmark.class_names_of(task))
                head = task_head(self.heads, task)
                write_frozen_head(head, weight.to(head.weight), bias.to(head.weight))
                self._heads_written.add(task)

    def _load_saved_task_vector(self, task: int) -> dict[str, Tensor] | None:
        """Task ``task``'s vector from ``load_path`` (its heads too), or None: no file, the task trains.

        ``load_path`` a reference (Mammoth) run's ``<job>_<dataset>_args.json``: its file of the task
        (``read_mammoth_task_vector``: the reference's names mapped to clcore's; the heads are the
        frozen ones, rebuilt from the class names as the reference's zero-shot head)."""
        if is_mammoth_run(self.load_path):
            path = mammoth_task_vector_file(self.load_path, task)
            if not path.exists():
                log.warning(
                    "TAK load_task_vectors: no reference file for task %d at %s; training it", task + 1, path
                )
                return None
            saved = read_mammoth_task_vector(path, self.tangent, self.selection.shapes)
            log.info("TAK load_task_vectors: task %d's vector loaded from the reference's %s", task + 1, path)
            return saved["vector"]
        path = task_vector_file(self.load_path, task)
        if not path.exists():  # anything else there (a FIFO, a folder) is refused by read_task_vector
            log.warning(
                "TAK load_task_vectors: no task vector for task %d at %s; training it", task + 1, path
            )
            return None
        saved = read_task_vector(path, self.tangent, self.selection.shapes)
        self.heads.load_state_dict(saved["heads"])
        log.info(
            "TAK load_task_vectors: task %d's vector loaded from %s; its training is skipped", task + 1, path
        )
        return saved["vector"]

    # ---- checkpointed state --------------------------------------------------------------------
    def cl_state_dict(self) -> dict:
        return {
            "task_vectors": [dict(vector) for vector in self.task_vectors],
            "single_task_accuracy": list(self.single_task_accuracy),
            "fisher_seconds": list(self.fisher_seconds),
            "task_vector_loaded": [int(flag) for flag in self.task_vector_loaded],
        }

    def load_cl_state_dict(self, state: dict) -> None:
        self.task_vectors = [dict(vector) for vector in state["task_vectors"]]
        self.single_task_accuracy = list(state["single_task_accuracy"])
        self.fisher_seconds = list(state["fisher_seconds"])
        self.task_vector_loaded = [bool(flag) for flag in state["task_vector_loaded"]]
        if self.task_vectors:
            self._merge()


def _set_at(values: list, index: int, value) -> None:
    """values[index] = value, appending when index is the next position (a resumed task is replaced)."""
    if index < len(values):
        values[index] = value
    elif index == len(values):
        values.append(value)
    else:
        raise IndexError(f"task {index + 1} ended before task {len(values) + 1}")


def _check_choice(
    problems: list[str], given: Mapping[str, Any], key: str, choices: tuple[str, ...], meaning: str
) -> None:
    """Append a problem when ``given[key]`` is not one of ``choices`` (``meaning`` says what each does)."""
    value = given[key]
    if not (isinstance(value, str) and value in choices):
        problems.append(f"algorithm.{key}={value!r}: must be one of {', '.join(choices)} ({meaning})")


def _option_defaults(algorithm: type) -> dict[str, Any]:
    """The constructor's default of every option that has one: what an absent config key means."""
    parameters = inspect.signature(algorithm.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _own_options(algorithm: type, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword-only options of ``algorithm``'s constructor, picked from its ``locals()``."""
    parameters = inspect.signature(algorithm.__init__).parameters.values()
    return {p.name: arguments[p.name] for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
