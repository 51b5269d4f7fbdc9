"""Naive loop implementations of the loss family, written from ``shared/spec/losses.md``.

Deliberately slow and literal: Python loops over anchors, pairs and counts, scalar torch ops
(so autograd gives their gradients). Only for small N, in float64. The anchor-dropping rules
are the spec's: anchors without positives are dropped (and, for the reference threshold,
anchors whose denominator is an empty sum, see ``ThresholdLoss``); no anchor left -> 0.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "dense_threshold_paper",
    "dense_threshold_reference",
    "kernel_value",
    "naive_adapn",
    "naive_kernelised",
    "naive_rnc",
]


def kernel_value(kind, sigma: float, d: float) -> float:
    """K(d) for a named kernel (from the spec) or a callable, as a Python float."""
    if callable(kind):
        return float(kind(torch.tensor(d, dtype=torch.float64)))
    if kind == "rbf":
        return math.exp(-d * d / (2 * sigma * sigma))
    if kind == "gaussian":
        return math.exp(-d * d / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
    if kind == "cauchy":
        return 1.0 / (sigma * d * d + 1.0)
    raise ValueError(kind)


def _weights(y, kind, sigma):
    ys = [float(v) for v in y]
    return [[kernel_value(kind, sigma, a - b) for b in ys] for a in ys]


def _similarities(z, tau):
    n = z.shape[0]
    return [[(z[i] * z[j]).sum() / tau for j in range(n)] for i in range(n)]


def _mean(terms, z):
    if not terms:
        return (z * 0).sum()
    return torch.stack(terms).sum() / len(terms)


def naive_kernelised(
    z,
    y,
    *,
    loss: str,
    kernel="rbf",
    sigma: float = 1.0,
    tau: float = 0.1,
    formulation: str = "reference",
    base_tau: float = 0.07,
    count_reduction: str = "sum",
):
    """y-aware / threshold / exp, either formulation, by loops. Returns a 0-d tensor."""
    n = z.shape[0]
    W = _weights(y, kernel, sigma)
    S = _similarities(z, tau)
    terms = []
    for a in range(n):
        others = [m for m in range(n) if m != a]
        p_sum = sum(W[a][m] for m in others)
        if p_sum == 0:
            continue
        if formulation == "reference":
            shift = max(S[a][m].item() for m in range(n))  # detached
            L = [S[a][m] - shift for m in range(n)]
            if loss == "yaware":
                den = sum(torch.exp(L[m]) for m in others)
            elif loss == "threshold":
                counts = {}
                for m in others:
                    c = sum(1 for k in range(n) if W[m][a] > W[m][k])
                    counts[m] = c / n if count_reduction == "mean" else c
                if all(c == 0 for c in counts.values()):
                    continue
                den = sum(torch.exp(L[m]) * counts[m] for m in others)
            elif loss == "exp":
                den = sum(torch.exp(L[m] * (1 - W[a][m])) for m in others)
            else:
                raise ValueError(loss)
            total = sum(W[a][m] * (L[m] - torch.log(den)) for m in others)
            terms.append(-(tau / base_tau) * total / p_sum)
        else:
            total = 0.0
            for k in others:
                if loss == "yaware":
                    den = sum(torch.exp(S[a][t]) for t in others)
                elif loss == "threshold":
                    den = torch.exp(S[a][k]) + sum(
                        (torch.exp(S[a][t]) for t in others if W[a][t] < W[a][k]),
                        torch.zeros((), dtype=z.dtype),
                    )
                elif loss == "exp":
                    den = sum(torch.exp(S[a][t] * (1 - W[a][t])) for t in others)
                else:
                    raise ValueError(loss)
                total = total + W[a][k] / p_sum * (S[a][k] - torch.log(den))
            terms.append(-total)
    return _mean(terms, z)


def naive_rnc(z, y, *, tau: float = 2.0):
    """Rank-N-Contrast by loops (L1 label distance, Euclidean feature distance)."""
    n = z.shape[0]
    if n < 2:
        return (z * 0).sum()
    yy = y.reshape(n, -1)
    d = [[float((yy[i] - yy[j]).abs().sum()) for j in range(n)] for i in range(n)]
    s = [[-torch.linalg.vector_norm(z[i] - z[j]) / tau if i != j else None for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        for k in range(n):
            if k == i:
                continue
            den = sum(torch.exp(s[i][j]) for j in range(n) if j != i and d[i][j] >= d[i][k])
            total = total - (s[i][k] - torch.log(den))
    return total / (n * (n - 1))


def naive_adapn(
    z,
    y,
    *,
    sigma: float = 1.0,
    tau: float = 0.1,
    neighbourhood_size=None,
    metric: str = "cosine",
    base_tau: float = 0.07,
):
    """AdapN by loops: rbf weights, shifted logits, top-k neighbourhood, global normalisation."""
    n = z.shape[0]
    W = _weights(y, "rbf", sigma)
    S = _similarities(z, tau)
    numerator = 0.0
    denominator = 0.0
    for a in range(n):
        shift = max(S[a][m].item() for m in range(n))
        L = [S[a][m] - shift for m in range(n)]
        others = [m for m in range(n) if m != a]
        if neighbourhood_size is None or neighbourhood_size >= n:
            hood = others
        else:
            if metric == "cosine":
                score = {m: L[m].item() for m in others}
            else:
                p = 2 if metric == "euclidean" else 1
                score = {m: -float(torch.linalg.vector_norm((z[a] - z[m]).detach(), ord=p)) for m in others}
            ranked = sorted(others, key=lambda m: -score[m])
            hood = ranked[: neighbourhood_size - 1]  # the anchor takes one place
        u = sum(torch.exp(L[m] * (1 - W[a][m])) for m in hood)
        for m in others:
            numerator = numerator + W[a][m] * (L[m] - torch.log(u))
            denominator += W[a][m]
    if denominator == 0:
        return (z * 0).sum()
    return -(tau / base_tau) * numerator / denominator


# --- dense O(N^3) tensor forms (broadcasting, no sorting) for medium N ---------------------
def dense_threshold_reference(z, y, *, kernel="rbf", sigma=1.0, tau=0.1, base_tau=0.07, count_reduction="sum"):
    """Reference threshold with the count C as an explicit (N, N, N) comparison."""
    n = z.shape[0]
    d = y[:, None] - y[None, :]
    W = torch.tensor(_weights(y, kernel, sigma), dtype=y.dtype) if not callable(kernel) else kernel(d)
    # C[a, m] = #{k : W[m, a] > W[m, k]}
    C = (W.T[:, :, None] > W[None, :, :]).sum(-1).to(z.dtype)
    if count_reduction == "mean":
        C = C / n
    S = z @ z.T / tau
    L = S - S.max(1, keepdim=True).values.detach()
    off = ~torch.eye(n, dtype=torch.bool)
    den = (torch.exp(L) * C * off).sum(1)
    P = W.to(z.dtype) * off
    keep = (P.sum(1) > 0) & (den > 0)
    logp = (P * (L - torch.log(den.clamp_min(1e-300))[:, None])).sum(1) / P.sum(1).clamp_min(1e-300)
    per = -(tau / base_tau) * logp
    return per[keep].mean() if keep.any() else (z * 0).sum()


def dense_threshold_paper(z, y, *, kernel="rbf", sigma=1.0, tau=0.1):
    """Paper threshold with the set {t : W[n, t] < W[n, k]} as an (N, N, N) mask."""
    n = z.shape[0]
    W = torch.tensor(_weights(y, kernel, sigma), dtype=y.dtype)
    S = z @ z.T / tau
    off = ~torch.eye(n, dtype=torch.bool)
    below = (W[:, None, :] < W[:, :, None]) & off[:, None, :]  # [a, k, t]
    den = torch.exp(S) + (torch.exp(S)[:, None, :] * below).sum(-1)
    P = W.to(z.dtype) * off
    keep = P.sum(1) > 0
    per = -(P * (S - torch.log(den))).sum(1) / P.sum(1).clamp_min(1e-300)
    return per[keep].mean() if keep.any() else (z * 0).sum()
