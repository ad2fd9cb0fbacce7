"""The task-arithmetic protocol (``clta``): fine-tune per task, merge, negate, learn aTLAS coefficients.

Built on the pure-tensor library one level up (task vectors, ``LinearizedModel``, ``merge``,
``ATLASModel``). ``run_protocol(cfg)`` runs a composed ``ta/task_arithmetic.yaml`` config.
"""

from clcore.clta.protocol import RESULTS_JSON, RESULTS_TABLE, run_protocol

__all__ = ["RESULTS_JSON", "RESULTS_TABLE", "run_protocol"]
