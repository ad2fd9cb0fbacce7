"""Lightning callbacks: everything a user might switch off is one of these."""

from clcore.callbacks.base import CLCallback
from clcore.callbacks.result_plots import ResultPlots
from clcore.callbacks.rich_summary import RichSummary

__all__ = ["CLCallback", "ResultPlots", "RichSummary"]
