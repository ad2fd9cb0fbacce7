"""Lightning callbacks: everything a user might switch off is one of these."""

from clcore.callbacks.attributions import Attributions
from clcore.callbacks.base import CLCallback
from clcore.callbacks.hat_masks import HATMaskPlots
from clcore.callbacks.hyperparameters import LogHyperparameters
from clcore.callbacks.learning_curves import LearningCurves
from clcore.callbacks.progress import TaskProgressBar, task_progress_bar
from clcore.callbacks.result_plots import ResultPlots
from clcore.callbacks.rich_summary import RichSummary

__all__ = [
    "Attributions",
    "CLCallback",
    "HATMaskPlots",
    "LearningCurves",
    "LogHyperparameters",
    "ResultPlots",
    "RichSummary",
    "TaskProgressBar",
    "task_progress_bar",
]
