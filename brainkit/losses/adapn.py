r"""AdapN: the exp loss with adaptive (shrinking) neighbourhoods (Träuble et al. 2024).

Follows the released code (``CoderJacques/BrainAge_DynLocRep``, ``src/losses.py``,
``DynLocRep_loss`` with ``method="expw"``, and ``src/util.py``, ``calculate_dynamic_NN_nb``).
With ``S[n, m] = <z_n, z_m> / tau``, ``L[n, m] = S[n, m] - M_n`` (``M_n = max_m S[n, m]``,
detached) and rbf weights ``W[n, m] = exp(-(y_n - y_m)^2 / (2 sigma^2))``:

- neighbourhood ``Nb_n``: the ``neighbourhood_size`` rows with the highest score for anchor
  ``n``, the anchor itself included (so ``neighbourhood_size - 1`` others); the score is
  ``L[n, m]`` for ``neighbour_metric="cosine"`` or minus the L2 / L1 distance for
  ``"euclidean"`` / ``"manhattan"``; ``None`` keeps every row;
- ``U_n = sum_{m != n, m in Nb_n} exp(L[n, m] (1 - W[n, m]))``;
- loss ``= -(tau / base_tau) sum_n sum_{m != n} W[n, m] (L[n, m] - log U_n) /
  sum_n sum_{m != n} W[n, m]``: every ``m != n`` is a positive (not only the neighbours)
  and the normalisation is global, over all pairs, not per anchor.
"""

from __future__ import annotations

import torch
from torch import nn

from brainkit.losses._base import (
    autocast_disabled,
    check_choice,
    check_int,
    check_positive,
    label_log_weights,
    label_weights,
    masked_logsumexp,
    normalised_weights,
    prepare_inputs,
)
from brainkit.losses.kernels import get_kernel

__all__ = ["AdapNLoss", "NEIGHBOUR_METRICS", "adapn_neighbourhood"]

NEIGHBOUR_METRICS = ("cosine", "euclidean", "manhattan")
"""Scores that rank the candidates of a neighbourhood."""


def adapn_neighbourhood(
    epoch: int,
    *,
    batch_size: int,
    n_views: int,
    final_k: int,
    step: int,
    epochs: int,
    min_batch_size: int = 32,
) -> int | None:
    """Neighbourhood size (in rows) for an epoch, the released AdapN schedule.

    ``K = max(int(B - (B - K_end) / (E // S - 1) * (epoch // S)), K_end)`` samples, i.e.
    ``n_views * K`` rows: the neighbourhood starts at the whole batch and shrinks every
    ``step`` epochs, linearly, down to ``final_k`` samples.

    Parameters
    ----------
    epoch : int
        Current epoch, 1-based as in the released training loop.
    batch_size : int
        Samples per batch ``B`` (not rows: each sample has ``n_views`` rows).
    n_views : int
        Views per sample ``V``.
    final_k : int
        Final neighbourhood size ``K_end`` in samples (``1 <= K_end <= B``,
        ``V * K_end >= 2`` so that a neighbour exists).
    step : int
        Epochs between shrinks ``S``; 0 switches the schedule off (the released default).
    epochs : int
        Total number of epochs ``E``; needs ``E // S >= 2``.
    min_batch_size : int, default 32
        The released code switches the schedule off when ``B < 32``; kept as the default.

    Returns
    -------
    int or None
        ``n_views * K``, to assign to :attr:`AdapNLoss.neighbourhood_size`, or ``None``
        (every row is a neighbour) when the schedule is off (``step == 0`` or
        ``batch_size < min_batch_size``).

    Examples
    --------
    >>> [adapn_neighbourhood(e, batch_size=32, n_views=2, final_k=4, step=10, epochs=300)
    ...  for e in (1, 10, 150, 300)]
    [64, 62, 34, 8]
    """
    epoch = check_int("epoch", epoch, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    n_views = check_int("n_views", n_views, 1)
    final_k = check_int("final_k", final_k, 1)
    step = check_int("step", step, 0)
    epochs = check_int("epochs", epochs, 1)
    min_batch_size = check_int("min_batch_size", min_batch_size, 1)
    if final_k > batch_size:
        raise ValueError(f"final_k must be <= batch_size ({batch_size}), got {final_k}")
    if n_views * final_k < 2:
        raise ValueError(
            f"n_views * final_k must be >= 2 (the anchor plus one neighbour), got "
            f"{n_views} * {final_k}"
        )
    if step == 0 or batch_size < min_batch_size:
        return None
    total_steps = epochs // step
    if total_steps < 2:
        raise ValueError(
            f"epochs // step must be >= 2 for the schedule, got epochs={epochs}, step={step}"
        )
    decrement = (batch_size - final_k) / float(total_steps - 1)
    k = max(int(batch_size - decrement * (epoch // step)), final_k)
    return n_views * k


class AdapNLoss(nn.Module):
    r"""Exp loss with an adaptive neighbourhood in the denominator (AdapN).

    See the module docstring for the equations. Expects L2-normalised ``z`` and does not
    normalise it.

    Parameters
    ----------
    sigma : float, default 1.0
        Width of the rbf kernel on labels (> 0).
    temperature : float, default 0.1
        ``tau`` (> 0).
    neighbourhood_size : int or None, default None
        Rows in each anchor's neighbourhood, the anchor included (>= 2); ``None`` keeps
        every row. Values above N keep every row.
    neighbour_metric : {"cosine", "euclidean", "manhattan"}, default "cosine"
        How candidates are ranked (``"cosine"`` is the released ``"similarity"``).
    base_temperature : float, default 0.07
        ``base_tau`` (> 0).

    Attributes
    ----------
    neighbourhood_size : int or None
        Settable at any time; the training loop updates it once per epoch, e.g.
        ``loss_fn.neighbourhood_size = adapn_neighbourhood(epoch, batch_size=B, n_views=V,
        final_k=4, step=10, epochs=E)``. Assignments are validated.

    Notes
    -----
    Differences from the released code: the anchor is forced into its own neighbourhood (the
    released ``topk`` only includes it because its score is the highest for unit-norm
    features); neighbourhood sizes above N are clipped to N instead of failing; a batch with
    no positive weight returns exactly 0. Returns a float32 scalar (float64 for float64
    ``z``); the body runs with autocast disabled.

    Examples
    --------
    >>> import torch.nn.functional as F
    >>> loss_fn = AdapNLoss(sigma=2.0, neighbourhood_size=4)
    >>> z = F.normalize(torch.randn(8, 16), dim=1)
    >>> y = torch.arange(4, dtype=torch.float64).repeat(2)
    >>> loss_fn(z, y).shape
    torch.Size([])
    """

    def __init__(
        self,
        sigma: float = 1.0,
        temperature: float = 0.1,
        neighbourhood_size: int | None = None,
        neighbour_metric: str = "cosine",
        base_temperature: float = 0.07,
    ):
        super().__init__()
        self.sigma = check_positive("sigma", sigma)
        self.kernel_fn = get_kernel("rbf", self.sigma)
        self.temperature = check_positive("temperature", temperature)
        self.base_temperature = check_positive("base_temperature", base_temperature)
        self.neighbour_metric = check_choice("neighbour_metric", neighbour_metric, NEIGHBOUR_METRICS)
        self.neighbourhood_size = neighbourhood_size

    @property
    def neighbourhood_size(self) -> int | None:
        """Rows per neighbourhood, anchor included (>= 2), or ``None`` for every row."""
        return self._neighbourhood_size

    @neighbourhood_size.setter
    def neighbourhood_size(self, value: int | None) -> None:
        self._neighbourhood_size = None if value is None else check_int("neighbourhood_size", value, 2)

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma}, temperature={self.temperature}, "
            f"neighbourhood_size={self.neighbourhood_size}, "
            f"neighbour_metric={self.neighbour_metric!r}, base_temperature={self.base_temperature}"
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Parameters
        ----------
        z : torch.Tensor of shape (N, D)
            L2-normalised embeddings of every view of every sample, in any order.
        y : torch.Tensor of shape (N,)
            Labels.

        Returns
        -------
        torch.Tensor, scalar
        """
        z, y = prepare_inputs(z, y, loss="AdapNLoss", temperature=self.temperature)
        with autocast_disabled(z.device):
            w_label = label_weights(self.kernel_fn, y, loss="AdapNLoss")
            log_w = label_log_weights(self.kernel_fn, y, w_label)
            return self._loss(z, w_label.to(z.dtype), log_w)

    def neighbourhood_mask(self, z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Boolean (N, N) mask of ``Nb_n`` without the anchor (``m in Nb_n, m != n``).

        Parameters
        ----------
        z : torch.Tensor of shape (N, D)
        logits : torch.Tensor of shape (N, N)
            The shifted similarities ``L`` (the score of ``"cosine"``).
        """
        n = z.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        size = self.neighbourhood_size
        if size is None or size >= n:
            return ~eye
        with torch.no_grad():
            if self.neighbour_metric == "cosine":
                score = logits.detach().clone()
            else:
                p = 2.0 if self.neighbour_metric == "euclidean" else 1.0
                score = -torch.cdist(z.detach(), z.detach(), p=p)
            score.masked_fill_(eye, float("inf"))
            idx = torch.topk(score, size, dim=1).indices
            mask = torch.zeros(n, n, dtype=torch.bool, device=z.device)
            mask.scatter_(1, idx, True)
        return mask & ~eye

    def _loss(self, z: torch.Tensor, w: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        sim = z @ z.T / self.temperature
        logits = sim - sim.max(dim=1, keepdim=True).values.detach()
        nb = self.neighbourhood_mask(z, logits)
        log_u, has = masked_logsumexp(logits * (1.0 - w), nb)
        off = ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
        # W / sum W over every pair, in log space (finite even when all weights underflow)
        pos, _ = normalised_weights(log_w.to(torch.promote_types(log_w.dtype, z.dtype)),
                                    off & has[:, None], dim=None)
        return -(self.temperature / self.base_temperature) * \
            (pos.to(z.dtype) * (logits - log_u[:, None])).sum()
