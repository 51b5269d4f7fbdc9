r"""Rank-N-Contrast (Zha et al. 2023), as in the official ``kaiwenzha/Rank-N-Contrast``.

Raw (unnormalised) features. With label distances ``d[i, j] = |y_i - y_j|`` (L1 over label
dimensions) and feature similarities ``s[i, j] = -||z_i - z_j||_2 / tau`` (plain, not
squared, Euclidean distance), every anchor ``i`` and every ``k != i`` give

``l[i, k] = -(s[i, k] - log sum_{j != i, d[i, j] >= d[i, k]} exp s[i, j])``

(ties included: the set always contains ``k``), and the loss is
``sum_i sum_{k != i} l[i, k] / (N (N - 1))``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from brainkit.losses._base import (
    autocast_disabled,
    check_positive,
    prepare_inputs,
    sort_with_strict_rank,
)

__all__ = ["RnCLoss"]


class RnCLoss(nn.Module):
    r"""Rank-N-Contrast loss on raw features.

    For an anchor ``i`` and a positive ``k``, the positive competes with every row ``j``
    whose label is at least as far from ``y_i`` as ``y_k`` is (module docstring). Computed
    without any loop: each anchor's rows are sorted by label distance and a reverse
    cumulative log-sum-exp of the similarities gives every ``(i, k)`` denominator, so the
    cost is O(N^2 log N + N^2 D) time and O(N^2) memory. Distances use ``torch.cdist`` in its
    exact (non-Gram) mode; the gradient of a zero distance is taken as 0.

    Parameters
    ----------
    temperature : float, default 2.0
        ``tau`` (> 0); the paper uses 2.0 for RnC.

    Notes
    -----
    Called as ``loss_fn(z, y)`` with ``z`` of shape (N, D) (any number of views per sample,
    stacked in any order, **not** normalised) and ``y`` of shape (N,) or (N, L). With N < 2
    there is no pair and the loss is exactly 0. Returns a float32 scalar (float64 for float64
    ``z``); the body runs with autocast disabled.

    Examples
    --------
    >>> z = torch.randn(8, 16)
    >>> y = torch.arange(4, dtype=torch.float64).repeat(2)
    >>> RnCLoss()(z, y).shape
    torch.Size([])
    """

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Parameters
        ----------
        z : torch.Tensor of shape (N, D)
            Raw features of every view of every sample.
        y : torch.Tensor of shape (N,) or (N, L)
            Labels.

        Returns
        -------
        torch.Tensor, scalar
        """
        z, y = prepare_inputs(z, y, loss="RnCLoss", multidim_labels=True,
                              temperature=self.temperature, distance=True)
        with autocast_disabled(z.device):
            return self._loss(z, y)

    def _loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        if n < 2:
            return (z * 0.0).sum()
        y2 = y[:, None] if y.ndim == 1 else y
        label_dist = (y2[:, None, :] - y2[None, :, :]).abs().sum(dim=-1)  # (N, N), dtype of y
        sim = -torch.cdist(z, z, p=2.0, compute_mode="donot_use_mm_for_euclid_dist") / self.temperature
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        # Sort each anchor's rows by label distance, the anchor itself first (key -inf) so it
        # is never ">= d[i, k]"; for k != i the rows j with d[i, j] >= d[i, k] are the sorted
        # positions c[i, k] .. N-1 (c = strict rank): a suffix, so a reverse cumulative LSE.
        key = label_dist.masked_fill(eye, -math.inf)
        _, order, c = sort_with_strict_rank(key)
        suffix = torch.logcumsumexp(sim.gather(1, order).flip(1), dim=1).flip(1)
        log_den = suffix.gather(1, c)
        pair_loss = (log_den - sim).masked_fill(eye, 0.0)
        return pair_loss.sum() / (n * (n - 1))
