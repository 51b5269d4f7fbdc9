"""A toy regression problem where every loss trains in seconds (the loss-family chapter).

Inputs are a smooth nonlinear curve of a scalar label plus nuisance dimensions (a binary
"site" that shifts the inputs, and noise); a small MLP maps them to the unit sphere. Which
structure each loss gives the embedding (ordered by label? split by site?) is visible at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["toy_data", "toy_embeddings", "formulation_table"]


def toy_data(n: int = 256, *, n_noise: int = 6, site_shift: float = 1.5, seed: int = 0):
    """Labels in [0, 1], inputs of dimension ``3 + n_noise`` and a binary site.

    Returns
    -------
    x : ndarray (n, 3 + n_noise), y : ndarray (n,), site : ndarray (n,) of {0, 1}
    """
    if n < 8:
        raise ValueError(f"n must be >= 8, got {n}")
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 1, n)
    site = rng.integers(0, 2, n)
    t = 3.0 * y
    signal = np.c_[np.cos(t), np.sin(t), t / 3.0]
    noise = rng.normal(size=(n, n_noise))
    x = np.c_[signal + 0.05 * rng.normal(size=(n, 3)), noise]
    x[:, 3:] += site_shift * site[:, None]
    return x.astype(np.float32), y, site


def toy_embeddings(losses: Sequence[str] = ("l1", "yaware", "threshold", "exp", "rnc", "adapn"),
                   *, n: int = 256, dim: int = 3, steps: int = 300, seed: int = 0,
                   sigma: float = 0.1) -> pd.DataFrame:
    """Train a small MLP with each loss on :func:`toy_data` and return its embeddings.

    Labels are in [0, 1], so the kernel width ``sigma`` is on that scale. ``"l1"`` trains the
    same MLP with a linear regression head; its embedding is the (normalised) hidden layer.

    Returns
    -------
    pandas.DataFrame
        Columns ``loss``, ``e0`` .. ``e{dim-1}`` (unit-norm embedding), ``label``, ``site``,
        ``final_loss``.
    """
    import torch
    from torch import nn

    from ..losses import make_loss
    from .pipeline import LOSSES

    x, y, site = toy_data(n, seed=seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    frames = []
    for loss in losses:
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose from {list(LOSSES)}")
        torch.manual_seed(seed)
        body = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, dim))
        head = nn.Linear(dim, 1)
        params = list(body.parameters()) + (list(head.parameters()) if loss == "l1" else [])
        opt = torch.optim.Adam(params, lr=1e-2)
        if loss != "l1":
            kwargs = {"temperature": 2.0} if loss == "rnc" else {"sigma": sigma, "temperature": 0.1}
            loss_fn = make_loss(loss, **kwargs)
        value = float("nan")
        for _ in range(steps):
            opt.zero_grad()
            z = body(xt)
            if loss == "l1":
                out = (head(z).squeeze(1) - yt).abs().mean()
            else:
                zz = torch.cat([z, z + 0.05 * torch.randn_like(z)])  # two "views"
                if loss != "rnc":
                    zz = nn.functional.normalize(zz, dim=1)
                out = loss_fn(zz, torch.cat([yt, yt]))
            out.backward()
            opt.step()
            value = float(out.detach())
        with torch.no_grad():
            emb = nn.functional.normalize(body(xt), dim=1).numpy()
        frame = pd.DataFrame(emb, columns=[f"e{i}" for i in range(dim)])
        frame.insert(0, "loss", loss)
        frame["label"] = y
        frame["site"] = site
        frame["final_loss"] = value
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def formulation_table(n: int = 64, d: int = 16, *, sigma: float = 0.2, temperature: float = 0.1,
                      seed: int = 0) -> pd.DataFrame:
    """Values of each kernelised loss in both formulations on one random batch.

    Shows that the reference (released code) and paper formulations differ: y-aware by the
    factor ``tau / base_tau`` only, threshold and exp by more than a constant.

    Returns
    -------
    pandas.DataFrame
        Columns ``loss``, ``reference``, ``paper``, ``ratio``.
    """
    import torch

    from ..losses import make_loss

    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.rand(n, generator=g, dtype=torch.float64)
    rows = []
    for loss in ("yaware", "threshold", "exp"):
        values = {f: float(make_loss(loss, sigma=sigma, temperature=temperature,
                                     formulation=f)(z, y))
                  for f in ("reference", "paper")}
        rows.append({"loss": loss, **values, "ratio": values["reference"] / values["paper"]})
    return pd.DataFrame(rows)
