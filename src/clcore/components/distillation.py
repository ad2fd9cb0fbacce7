"""Knowledge distillation with a temperature (Hinton, Vinyals & Dean 2015; Li & Hoiem, TPAMI 2017).

One function, shared by every method that pulls a network's outputs towards recorded ones: LwF now,
iCaRL and DER later.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0, t_squared: bool = False
) -> Tensor:
    r"""Cross-entropy between temperature-scaled teacher and student probabilities, averaged over the batch.

    LwF's $L_{\text{old}}$ (Li & Hoiem 2017, Sec. 3, Eq. 2), per sample over the $l$ outputs of one head:

    $$L_{\text{old}} = -\sum_j y'^{(j)}_o \log \hat y'^{(j)}_o, \qquad
    y'^{(j)} = \frac{\left(y^{(j)}\right)^{1/T}}{\sum_k \left(y^{(k)}\right)^{1/T}}$$

    where $y$ are the teacher's (recorded) probabilities and $\hat y$ the student's. Raising a
    softmax to $1/T$ and renormalising is $\mathrm{softmax}(\text{logits} / T)$, so both sides are
    computed from logits with ``log_softmax``, which stays finite where a probability underflows.
    LwF uses $T = 2$. This equals Hinton et al.'s soft-target loss $\mathrm{KL}(y' \,\|\, \hat y')$
    up to the teacher's entropy, a constant: the gradients are the same.

    The $T^2$ convention (Hinton et al. 2015, Sec. 2): the gradient of the soft-target term with
    respect to a student logit is $(\hat y' - y') / T$, which shrinks roughly as $1/T^2$ for large
    $T$; multiplying the loss by $T^2$ keeps its weight against the hard-label loss unchanged
    when $T$ is changed. LwF's Eq. 2 does not multiply (``t_squared=False``, the default);
    ``t_squared=True`` gives Hinton's scaling.

    Args:
        student_logits: ``[B, C]`` logits of the network being trained (gradients flow).
        teacher_logits: ``[B, C]`` recorded logits of the same inputs (detached here).
        temperature: $T > 0$; $T = 1$ is the plain cross-entropy to the teacher's softmax.
        t_squared: multiply by $T^2$ (Hinton's convention) instead of LwF's unscaled Eq. 2.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    soft_targets = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    loss = -(soft_targets * log_student).sum(dim=-1).mean()
    return loss * temperature**2 if t_squared else loss
