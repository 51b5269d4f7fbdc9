"""Kernels on label differences: the degree of similarity ``w = K(y_n - y_m)`` (paper Eq. 1).

Every kernel maps a tensor of label differences ``d`` (any shape) to non-negative weights
of the same shape and dtype. The three named kernels follow the released code of Barbano et
al. (``EIDOSLAB/contrastive-brain-age-prediction``, ``src/main_infonce.py``):

- ``rbf``: ``K(d) = exp(-d^2 / (2 sigma^2))``, so ``K(0) = 1``;
- ``gaussian``: ``rbf(d) / (sqrt(2 pi) sigma)``, the normal density, so ``K(0)`` exceeds 1
  when ``sigma < 1 / sqrt(2 pi)``;
- ``cauchy``: ``K(d) = 1 / (sigma d^2 + 1)``; note that ``sigma`` *multiplies* ``d^2`` here
  (the reference's convention), so a larger ``sigma`` gives a *narrower* kernel.

Any other callable mapping a tensor of differences to weights can be used instead
(:func:`get_kernel` passes it through).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real

import torch

__all__ = ["KERNELS", "Kernel", "cauchy", "gaussian", "get_kernel", "log_kernel", "rbf"]


def _check_sigma(sigma: float) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, Real):
        raise TypeError(f"sigma must be a real number, got {type(sigma).__name__}")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    return sigma


def rbf(d: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Radial basis function kernel ``exp(-d^2 / (2 sigma^2))``.

    Parameters
    ----------
    d : torch.Tensor of any shape
        Label differences.
    sigma : float, default 1.0
        Width (> 0), in label units.

    Returns
    -------
    torch.Tensor of the shape and dtype of ``d``
        Weights in (0, 1], equal to 1 at ``d = 0``.

    Examples
    --------
    >>> rbf(torch.tensor([0.0, 1.0]), sigma=1.0)
    tensor([1.0000, 0.6065])
    """
    sigma = _check_sigma(sigma)
    return torch.exp(-(d * d) / (2.0 * sigma * sigma))


def gaussian(d: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Normal density kernel ``exp(-d^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)``.

    Parameters
    ----------
    d : torch.Tensor of any shape
        Label differences.
    sigma : float, default 1.0
        Standard deviation (> 0), in label units.

    Returns
    -------
    torch.Tensor of the shape and dtype of ``d``
        Weights; ``K(0) = 1 / (sqrt(2 pi) sigma)``, which exceeds 1 for small ``sigma``.
    """
    sigma = _check_sigma(sigma)
    return rbf(d, sigma) / (math.sqrt(2.0 * math.pi) * sigma)


def cauchy(d: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Cauchy kernel ``1 / (sigma d^2 + 1)`` (the reference code's convention).

    Parameters
    ----------
    d : torch.Tensor of any shape
        Label differences.
    sigma : float, default 1.0
        Multiplies ``d^2`` (> 0): larger values give a narrower kernel.

    Returns
    -------
    torch.Tensor of the shape and dtype of ``d``
        Weights in (0, 1], equal to 1 at ``d = 0``.
    """
    sigma = _check_sigma(sigma)
    return 1.0 / (sigma * (d * d) + 1.0)


KERNELS: dict[str, Callable[..., torch.Tensor]] = {"rbf": rbf, "gaussian": gaussian, "cauchy": cauchy}
"""The named kernels, ``name -> function(d, sigma)``."""


def log_kernel(name: str, d: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """``log K(d)`` of a named kernel, computed without forming ``K(d)``.

    Finite wherever ``d`` is finite, even where ``K(d)`` underflows to 0 (``rbf`` at
    ``|d| = 15 sigma`` is 0 in float32): the losses normalise their weights in log space
    with it, so their gradients stay finite.

    Parameters
    ----------
    name : {"rbf", "gaussian", "cauchy"}
    d : torch.Tensor of any shape
        Label differences.
    sigma : float, default 1.0

    Returns
    -------
    torch.Tensor of the shape and dtype of ``d``

    Examples
    --------
    >>> log_kernel("rbf", torch.tensor([5.0, 68.0]), sigma=5.0)
    tensor([ -0.5000, -92.4800])
    """
    sigma = _check_sigma(sigma)
    if name == "rbf":
        return -(d * d) / (2.0 * sigma * sigma)
    if name == "gaussian":
        return -(d * d) / (2.0 * sigma * sigma) - math.log(math.sqrt(2.0 * math.pi) * sigma)
    if name == "cauchy":
        return -torch.log1p(sigma * (d * d))
    raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {name!r}")


class Kernel:
    """A named kernel with its width bound: ``Kernel("rbf", 2.0)(d)``.

    Parameters
    ----------
    name : {"rbf", "gaussian", "cauchy"}
        Kernel name (see :data:`KERNELS`).
    sigma : float
        Width parameter (> 0).
    """

    def __init__(self, name: str, sigma: float):
        if name not in KERNELS:
            raise ValueError(f"kernel must be one of {sorted(KERNELS)} or a callable, got {name!r}")
        self.name = name
        self.sigma = _check_sigma(sigma)

    def __call__(self, d: torch.Tensor) -> torch.Tensor:
        return KERNELS[self.name](d, self.sigma)

    def log(self, d: torch.Tensor) -> torch.Tensor:
        """``log K(d)`` (:func:`log_kernel`), finite where ``K(d)`` underflows."""
        return log_kernel(self.name, d, self.sigma)

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}, sigma={self.sigma})"


def get_kernel(
    kernel: str | Callable[[torch.Tensor], torch.Tensor], sigma: float = 1.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Resolve a kernel given by name or as a callable.

    Parameters
    ----------
    kernel : {"rbf", "gaussian", "cauchy"} or callable
        A name from :data:`KERNELS`, or any callable mapping a tensor of label differences
        to a tensor of non-negative weights of the same shape. A callable is returned
        unchanged: ``sigma`` does not reach it (bind its width yourself).
    sigma : float, default 1.0
        Width of a named kernel (> 0). Validated in both cases.

    Returns
    -------
    callable
        ``f(d) -> weights``, with ``d`` a tensor of label differences of any shape.

    Raises
    ------
    ValueError
        If ``kernel`` is an unknown name or ``sigma`` is not > 0.
    TypeError
        If ``kernel`` is neither a string nor a callable.

    Examples
    --------
    >>> k = get_kernel("cauchy", sigma=2.0)
    >>> k(torch.tensor([0.0, 1.0]))
    tensor([1.0000, 0.3333])
    """
    sigma = _check_sigma(sigma)
    if isinstance(kernel, str):
        return Kernel(kernel, sigma)
    if callable(kernel):
        return kernel
    raise TypeError(
        f"kernel must be one of {sorted(KERNELS)} or a callable, got {type(kernel).__name__}"
    )
