"""Lightning callbacks: everything a user might switch off is one of these."""

from clcore.callbacks.attributions import Attributions
from clcore.callbacks.base import CLCallback
from clcore.callbacks.best_weights import RestoreBestWeights
from clcore.callbacks.hat_masks import HATMaskPlots
from clcore.callbacks.hyperparameters import LogHyperparameters
from clcore.callbacks.learning_curves import LearningCurves
from clcore.callbacks.min_lr_stop import StopBelowLearningRate
from clcore.callbacks.progress import TaskProgressBar, task_progress_bar
from clcore.callbacks.result_plots import ResultPlots
from clcore.callbacks.rich_summary import RichSummary
from clcore.callbacks.weight_mask_plots import WeightMaskPlots

__all__ = [
    "Attributions",
    "CLCallback",
    "HATMaskPlots",
    "LearningCurves",
    "LogHyperparameters",
    "RestoreBestWeights",
    "ResultPlots",
    "RichSummary",
    "StopBelowLearningRate",
    "TaskProgressBar",
    "WeightMaskPlots",
    "task_progress_bar",
]
