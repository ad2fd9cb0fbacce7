r"""Herding: iCaRL's prioritised exemplar selection (Rebuffi et al., CVPR 2017, Sec. 2.2, Algorithm 4).

Given the features of every training sample of one class, herding picks, one at a time, the sample
whose addition brings the mean of the picked features closest to the class mean:

$$\mu = \frac{1}{n} \sum_{i=1}^{n} \varphi(x_i), \qquad
p_k = \operatorname*{argmin}_{x \in X \setminus \{p_1, \dots, p_{k-1}\}}
\Bigl\lVert \mu - \frac{1}{k} \Bigl[\varphi(x) + \sum_{j=1}^{k-1} \varphi(p_j)\Bigr] \Bigr\rVert$$

with $\varphi$ the L2-normalised feature (Sec. 2.1: "all feature vectors are L2-normalized").
The class mean and the running mean are not re-normalised here, as in the authors' code
(``srebuffi/iCaRL``, ``main_cifar_100_theano.py``: ``mu = np.mean(D, axis=1)`` over the
normalised ``D``). With unit-norm features the criterion is, up to terms equal for every
candidate, $\operatorname{argmax}_x \langle k\mu - \sum_{j<k} \varphi(p_j), \varphi(x)\rangle$, the
update rule of that code; it differs in one point: that code may pick a sample again (it keeps
the first pick, and its running sum counts every pick), while Algorithm 4 and this function pick
each sample at most once. (Mammoth's ``models/icarl.py`` herds on the raw, unnormalised features.)

The result is an order of priority: the first $m$ picks are the exemplar set of size $m$, so a set
is reduced by keeping its first elements (Algorithm 5), and the first $k$ of a longer selection are
the selection of $k$ (the choice is greedy). Each step scores every candidate at once (one
``[n, D]`` tensor operation); the loop runs over the $k$ picks. Ties go to the lowest index
(``argmin`` returns the first minimum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def herding_selection(features: Tensor, k: int) -> Tensor:
    """Indices of the first ``min(k, n)`` exemplars of one class, in herding (priority) order.

    Args:
        features: ``[n, D]`` features of the class's samples; L2-normalised here (the paper's
            $\\varphi$), so raw backbone outputs may be given.
        k: exemplars wanted, $\\ge 0$.

    Returns:
        ``[min(k, n)]`` int64 indices into ``features``, distinct, on ``features.device``.
    """
    if features.dim() != 2:
        raise ValueError(f"herding_selection: features must be [n, D], got {tuple(features.shape)}")
    if k < 0:
        raise ValueError(f"herding_selection: k must be >= 0, got {k}")
    n = features.shape[0]
    k = min(k, n)
    phi = F.normalize(features, dim=1)
    mean = phi.mean(dim=0)
    picked_sum = torch.zeros_like(mean)
    available = torch.ones(n, dtype=torch.bool, device=features.device)
    picks = torch.empty(k, dtype=torch.int64, device=features.device)
    for step in range(k):
        # squared distance of each candidate's running mean to the class mean (same argmin as the norm)
        cost = (mean - (phi + picked_sum) / (step + 1)).pow(2).sum(dim=1)
        index = cost.masked_fill(~available, float("inf")).argmin()
        picks[step] = index
        picked_sum = picked_sum + phi[index]
        available[index] = False
    return picks
