"""TAK: task arithmetic with KFAC regularisation (Porrello et al., "Dataless Weight Disentanglement
in Task Arithmetic via Kronecker-Factored Approximate Curvature", ICLR 2026, arXiv 2602.17385),
matching the reference implementation in Mammoth. Everything here is used by TAK only; it builds on
the library (``clcore.task_arithmetic`` for task vectors and merging), never the other way round.

The algorithm and its outputs:

- ``algorithm``: ``TAK``, the ``CLAlgorithm``: per-task training of tau_t with the KFAC penalty,
  merging after each task, the final alpha sweep, and ``TAK.config_problems`` (every option rule);
- ``outputs``: ``TAKOutputs``, the callback that writes the alpha sweep and the task vectors;
- ``alpha_sweep``: ``SweepPoint`` and the sweep's CSV / PNG writer;
- ``task_vector_files``: the ``task_<t>.pt`` format, written by ``TAKOutputs``, read by ``TAK``.

What TAK fine-tunes and how it merges:

- ``parameters``: which backbone parameters fine-tune (``ft_*``) and which penalty term covers each;
- ``weight_delta``: the update tau (full or LoRA) and the forward pass of theta_0 + tau, tangent or not;
- ``clip_kfac_ready``: rewrites a CLIP tower's attention and projection as ``nn.Linear`` (hookable);
- ``heads``: the frozen heads (CLIP's zero-shot text head, or a saved classifier);
- ``merging``: the reference's meaning of ``alpha_merging`` on top of ``clcore.task_arithmetic``;
- ``evaluation``: one task's test accuracy for a given model, outside a Trainer.

The curvature (Sec. 4, Eq. 7-8):

- ``kfac``: KFAC factors of the feature Gauss-Newton matrix at theta_0;
- ``kfac_penalty``: the penalty tr(B dW A dW^T) (plus Gram terms) and the Eq. 7 / Eq. 8 accumulation;
- ``factors``: each task's factors from its training data, through the cache;
- ``fisher_cache``: the disk cache of factors (one file per key, loaded with ``weights_only``).
"""

from clcore.algorithms.tak.algorithm import TAK
from clcore.algorithms.tak.outputs import TAKOutputs

__all__ = ["TAK", "TAKOutputs"]
