"""Kernels on label differences: closed-form values, names, callables, argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from brainkit.losses import KERNELS, Kernel, cauchy, gaussian, get_kernel, rbf

D = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0], dtype=torch.float64)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 4.0])
def test_closed_forms(sigma):
    for d in D.tolist():
        expected_rbf = math.exp(-d * d / (2 * sigma**2))
        assert rbf(torch.tensor(d, dtype=torch.float64), sigma).item() == pytest.approx(expected_rbf, rel=1e-14)
        assert gaussian(torch.tensor(d, dtype=torch.float64), sigma).item() == pytest.approx(
            expected_rbf / (math.sqrt(2 * math.pi) * sigma), rel=1e-14
        )
        assert cauchy(torch.tensor(d, dtype=torch.float64), sigma).item() == pytest.approx(
            1 / (sigma * d * d + 1), rel=1e-14
        )


def test_cauchy_sigma_multiplies_d_squared():
    # the reference's convention: a larger sigma is a narrower kernel
    assert cauchy(torch.tensor(1.0), 2.0).item() == pytest.approx(1 / 3)
    assert cauchy(torch.tensor(1.0), 4.0) < cauchy(torch.tensor(1.0), 2.0)


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_named_kernels_keep_shape_and_dtype(name, dtype):
    d = torch.randn(4, 5, dtype=dtype)
    k = get_kernel(name, 1.5)
    w = k(d)
    assert w.shape == d.shape and w.dtype == dtype
    assert torch.equal(w, KERNELS[name](d, 1.5))
    assert torch.all(w > 0)
    assert torch.equal(k(d), k(-d))  # symmetric


def test_get_kernel_passes_callables_through():
    def f(d):
        return torch.exp(-d.abs())

    assert get_kernel(f, sigma=3.0) is f
    assert repr(get_kernel("rbf", 2.0)) == "Kernel('rbf', sigma=2.0)"
    assert isinstance(get_kernel("cauchy"), Kernel)


@pytest.mark.parametrize(
    "kernel, sigma, err, match",
    [
        ("laplace", 1.0, ValueError, "kernel must be one of"),
        (3, 1.0, TypeError, "kernel must be one of"),
        ("rbf", 0.0, ValueError, "sigma must be a finite number > 0"),
        ("rbf", -1.0, ValueError, "sigma must be"),
        ("rbf", float("nan"), ValueError, "sigma must be"),
        ("rbf", "1", TypeError, "sigma must be a real number"),
        ("rbf", True, TypeError, "sigma must be a real number"),
    ],
)
def test_get_kernel_errors(kernel, sigma, err, match):
    with pytest.raises(err, match=match):
        get_kernel(kernel, sigma)


def test_function_sigma_checked():
    with pytest.raises(ValueError, match="sigma"):
        rbf(D, 0.0)
