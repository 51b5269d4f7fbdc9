r"""The kernelised contrastive losses of Barbano et al.: y-aware, threshold and exp.

All three take ``z`` of shape (N, D), every augmented view of every sample stacked in any
order, and labels ``y`` of shape (N,) (a view carries its sample's label), and return a
scalar. They expect L2-normalised ``z`` (the projection head normalises) and do **not**
normalise it themselves.

Index legend, for one batch:

- ``n``: the anchor; ``m``, ``k``: another row (a positive, weighted by the kernel);
  ``t``: a row in the denominator.
- ``S[n, m] = <z_n, z_m> / tau``: similarities; ``W[n, m] = K(y_n - y_m)``: kernel weights;
- ``P[n, m] = W[n, m]`` for ``m != n`` and ``P[n, n] = 0``: positive weights (the other
  views of a sample are positives with weight ``K(0)``; no sample id is needed).

Two formulations (``formulation=``), see ``shared/spec/losses.md``:

``"reference"`` (default) reproduces the released code (``EIDOSLAB/contrastive-brain-age-prediction``,
``src/losses.py``, ``KernelizedSupCon``), whose numbers the paper reports:

- row shift ``L[n, m] = S[n, m] - M_n`` with ``M_n = max_m S[n, m]`` (``m = n`` included,
  detached from the graph);
- one denominator per anchor ``Den_n`` (sums over ``m != n``);
- ``l_n = -(tau / base_tau) sum_m P[n, m] (L[n, m] - log Den_n) / sum_m P[n, m]``.

``"paper"`` follows the printed equations (Eq. 4-6): no shift, no ``tau / base_tau``, and
each anchor's weights normalised by ``sum_{t != n} P[n, t]``.

The loss is the mean of ``l_n`` over anchors. Anchors without positives
(``sum_m P[n, m] == 0``) are dropped from the mean (the released code returns NaN there);
with no anchor left the loss is exactly 0 with a zero gradient.

All the bodies run with autocast disabled, in float32 (for float32 / float16 / bfloat16
``z``) or float64 (for float64 ``z``). Kernels are evaluated in the dtype of ``y``. The
normalised positive weights ``P[n, m] / sum_t P[n, t]`` are computed in log space (a
softmax of ``log K``, :func:`brainkit.losses.kernels.log_kernel`): when an anchor's weights
are all tiny (float32, sigma 5, ages 20 and 88: ``K = exp(-92.5)``, subnormal) the division
by their sum would overflow in the backward pass and give NaN gradients; the log-space form
keeps value and gradient finite for every finite input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from brainkit.losses._base import (
    autocast_disabled,
    check_choice,
    check_positive,
    label_log_weights,
    label_weights,
    masked_logsumexp,
    mean_over_valid,
    normalised_weights,
    prepare_inputs,
    sort_with_strict_rank,
)
from brainkit.losses.kernels import get_kernel

__all__ = ["ExpLoss", "FORMULATIONS", "ThresholdLoss", "YAwareLoss"]

FORMULATIONS = ("reference", "paper")
"""The two formulations of each kernelised loss."""

KernelArg = str | Callable[[torch.Tensor], torch.Tensor]


class _KernelisedLoss(nn.Module):
    """Common arguments, checks and pieces of the y-aware / threshold / exp losses."""

    def __init__(
        self,
        kernel: KernelArg = "rbf",
        sigma: float = 1.0,
        temperature: float = 0.1,
        formulation: str = "reference",
        base_temperature: float = 0.07,
    ):
        super().__init__()
        self.sigma = check_positive("sigma", sigma)
        self.kernel = kernel
        self.kernel_fn = get_kernel(kernel, self.sigma)
        self.temperature = check_positive("temperature", temperature)
        self.base_temperature = check_positive("base_temperature", base_temperature)
        self.formulation = check_choice("formulation", formulation, FORMULATIONS)

    def extra_repr(self) -> str:
        kernel = self.kernel if isinstance(self.kernel, str) else repr(self.kernel)
        return (
            f"kernel={kernel!s}, sigma={self.sigma}, temperature={self.temperature}, "
            f"formulation={self.formulation!r}, base_temperature={self.base_temperature}"
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Parameters
        ----------
        z : torch.Tensor of shape (N, D)
            L2-normalised embeddings of every view of every sample, in any order.
        y : torch.Tensor of shape (N,)
            The label (age) of each row; use float64 for exact kernel comparisons.

        Returns
        -------
        torch.Tensor, scalar
            float32 (float64 when ``z`` is float64).
        """
        name = type(self).__name__
        z, y = prepare_inputs(z, y, loss=name, temperature=self.temperature)
        with autocast_disabled(z.device):
            w_label = label_weights(self.kernel_fn, y, loss=name)
            log_w = label_log_weights(self.kernel_fn, y, w_label)
            return self._loss(z, w_label, log_w)

    # --- shared pieces -------------------------------------------------------------------
    def _pieces(self, z: torch.Tensor, w_label: torch.Tensor, log_w: torch.Tensor):
        """Return ``off`` (N, N) bool, ``w``, ``pos``, ``logits`` (N, N) and ``valid`` (N,).

        ``pos`` holds the *normalised* positive weights ``P[n, m] / sum_t P[n, t]`` (log
        space, :func:`normalised_weights`); ``valid`` marks anchors with a positive weight
        (in the dtype of ``y``).
        """
        n = z.shape[0]
        off = ~torch.eye(n, dtype=torch.bool, device=z.device)
        w = w_label.to(z.dtype)
        # normalised in the wider of the labels' and the embeddings' dtypes
        pos, valid = normalised_weights(log_w.to(torch.promote_types(log_w.dtype, z.dtype)),
                                        off)
        pos = pos.to(z.dtype)
        sim = z @ z.T / self.temperature
        if self.formulation == "reference":
            logits = sim - sim.max(dim=1, keepdim=True).values.detach()
        else:
            logits = sim
        return off, w, pos, logits, valid

    def _reduce(
        self, pos: torch.Tensor, log_prob: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Per-anchor weighted mean of ``log_prob`` over positives (``pos`` already
        normalised per anchor), then mean over anchors."""
        per_anchor = -(pos * log_prob).sum(dim=1)
        if self.formulation == "reference":
            per_anchor = per_anchor * (self.temperature / self.base_temperature)
        return mean_over_valid(per_anchor, valid)


class YAwareLoss(_KernelisedLoss):
    r"""y-aware InfoNCE (Dufumier et al. 2021; Barbano et al. Eq. 4).

    The positives are weighted by the kernel; every other row repels the anchor uniformly.

    - reference: ``Den_n = sum_{m != n} exp L[n, m]`` and
      ``l_n = -(tau / base_tau) sum_m P[n, m] (L[n, m] - log Den_n) / sum_m P[n, m]``;
    - paper: ``l_n = -sum_{k != n} P[n, k] / sum_t P[n, t] (S[n, k] - log sum_{t != n} exp S[n, t])``.

    The row shift cancels in a log-softmax, so the two formulations differ exactly by the
    factor ``tau / base_tau`` (reference = paper * tau / base_tau).

    Parameters
    ----------
    kernel : {"rbf", "gaussian", "cauchy"} or callable, default "rbf"
        Kernel on label differences (see :mod:`brainkit.losses.kernels`).
    sigma : float, default 1.0
        Kernel width (> 0); not passed to a callable kernel.
    temperature : float, default 0.1
        ``tau`` (> 0).
    formulation : {"reference", "paper"}, default "reference"
        Released code or printed equations (module docstring).
    base_temperature : float, default 0.07
        ``base_tau`` of the reference formulation (> 0); unused by ``"paper"``.

    Examples
    --------
    >>> import torch.nn.functional as F
    >>> z = F.normalize(torch.randn(8, 16), dim=1)
    >>> y = torch.arange(4, dtype=torch.float64).repeat(2)  # 4 samples, 2 views each
    >>> YAwareLoss(sigma=2.0)(z, y).shape
    torch.Size([])
    """

    def _loss(self, z: torch.Tensor, w_label: torch.Tensor, log_w: torch.Tensor
              ) -> torch.Tensor:
        off, _, pos, logits, valid = self._pieces(z, w_label, log_w)
        log_den, has = masked_logsumexp(logits, off)
        return self._reduce(pos, logits - log_den[:, None], valid & has)


class ThresholdLoss(_KernelisedLoss):
    r"""Non-uniform hard thresholding (Barbano et al. 2023, Eq. 5).

    A positive only repels samples less similar (by the kernel) than itself.

    - reference (the released code):
      ``Den_n = sum_{m != n} exp(L[n, m]) C[n, m]`` with
      ``C[n, m] = #{k in 0..N-1 : W[m, n] > W[m, k]}`` (a count over all rows ``k``, strict
      ``>``; with ``count_reduction="mean"`` divided by N, which lowers the loss by
      ``(tau / base_tau) log N`` and leaves the gradient unchanged), then
      ``l_n = -(tau / base_tau) sum_m P[n, m] (L[n, m] - log Den_n) / sum_m P[n, m]``.
      Anchors with ``Den_n = 0`` (every ``C[n, m] = 0``, e.g. all labels equal, where the
      released code returns an infinite loss) are dropped like anchors without positives.
    - paper ("the positive competes only with samples less similar than it"):
      ``l_n = -sum_{k != n} P[n, k] / sum_t P[n, t] (S[n, k] - log(exp S[n, k] +
      sum_{t != n, W[n, t] < W[n, k]} exp S[n, t]))``.

    Neither materialises an (N, N, N) tensor: the reference count sorts each row of W and
    ranks its entries (``C[n, m]`` is the rank of ``W[m, n]`` in row m, ties sharing the
    lowest rank); the paper denominator sorts each anchor's row by W and takes a cumulative
    log-sum-exp of the similarities. Both are O(N^2 log N) time, O(N^2) memory.
    Kernel values are compared in the dtype of ``y`` (weights that underflow to 0 tie).

    Parameters
    ----------
    kernel, sigma, temperature, formulation, base_temperature
        As in :class:`YAwareLoss`.
    count_reduction : {"sum", "mean"}, default "sum"
        Reduction of the reference count ``C`` (the released ``delta_reduction``). Only the
        reference formulation has a count: ``"mean"`` with ``formulation="paper"`` is refused.
    """

    def __init__(
        self,
        kernel: KernelArg = "rbf",
        sigma: float = 1.0,
        temperature: float = 0.1,
        formulation: str = "reference",
        base_temperature: float = 0.07,
        count_reduction: str = "sum",
    ):
        super().__init__(kernel, sigma, temperature, formulation, base_temperature)
        self.count_reduction = check_choice("count_reduction", count_reduction, ("sum", "mean"))
        if self.formulation == "paper" and self.count_reduction != "sum":
            raise ValueError(
                "count_reduction='mean' applies only to formulation='reference' "
                "(the paper formulation has no count); use count_reduction='sum'"
            )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, count_reduction={self.count_reduction!r}"

    def _loss(self, z: torch.Tensor, w_label: torch.Tensor, log_w: torch.Tensor
              ) -> torch.Tensor:
        off, _, pos, logits, valid = self._pieces(z, w_label, log_w)
        if self.formulation == "reference":
            log_den, has = self._reference_log_den(logits, w_label, off)
            return self._reduce(pos, logits - log_den[:, None], valid & has)
        log_den = self._paper_log_den(logits, w_label, off)
        return self._reduce(pos, logits - log_den, valid)

    def _reference_log_den(self, logits, w_label, off):
        # rank[m, n] = #{k : W[m, k] < W[m, n]} (strict), so C[n, m] = rank[m, n]
        count = sort_with_strict_rank(w_label)[2].T
        log_count = count.clamp_min(1).to(logits.dtype).log()
        if self.count_reduction == "mean":
            log_count = log_count - math.log(logits.shape[0])
        return masked_logsumexp(logits + log_count, off & (count > 0))

    @staticmethod
    def _paper_log_den(sim, w_label, off):
        # Per anchor n: sort the rows t by W[n, t] (the anchor itself last, key +inf) and
        # take the cumulative log-sum-exp of S[n, t]; for k != n the rows with
        # W[n, t] < W[n, k] are the first c[n, k] of that order (c = strict rank).
        key = w_label.masked_fill(~off, math.inf)
        _, order, c = sort_with_strict_rank(key)
        cum = torch.logcumsumexp(sim.gather(1, order), dim=1)
        below = cum.gather(1, (c - 1).clamp_min(0))
        return torch.where(c > 0, torch.logaddexp(sim, below), sim)  # (N, N); diagonal unused


class ExpLoss(_KernelisedLoss):
    r"""Non-uniform soft thresholding, the paper's proposed loss (Barbano et al. Eq. 6).

    Each row in the denominator repels the anchor with strength ``1 - W``: similar samples
    (``W`` near 1) barely repel, dissimilar ones repel fully.

    - reference: ``Den_n = sum_{m != n} exp(L[n, m] (1 - W[n, m]))`` with the shifted logits
      ``L`` (the shift changes the value here: it does not cancel), then
      ``l_n = -(tau / base_tau) sum_m P[n, m] (L[n, m] - log Den_n) / sum_m P[n, m]``;
    - paper: ``l_n = -sum_{k != n} P[n, k] / sum_t P[n, t] (S[n, k] -
      log sum_{t != n} exp(S[n, t] (1 - W[n, t])))``.

    Parameters
    ----------
    kernel, sigma, temperature, formulation, base_temperature
        As in :class:`YAwareLoss`.
    """

    def _loss(self, z: torch.Tensor, w_label: torch.Tensor, log_w: torch.Tensor
              ) -> torch.Tensor:
        off, w, pos, logits, valid = self._pieces(z, w_label, log_w)
        log_den, has = masked_logsumexp(logits * (1.0 - w), off)
        return self._reduce(pos, logits - log_den[:, None], valid & has)
