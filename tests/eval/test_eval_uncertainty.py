"""Subject-level bootstrap: nominal coverage, shrinking intervals, clusters, seeds, AUC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from brainkit.eval import (
    Estimate,
    Replicates,
    auc,
    balanced_accuracy,
    bootstrap_ci,
    mean_absolute_error,
    mean_difference,
)


def test_interval_covers_a_known_mean_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 200
    for t in range(trials):
        x = rng.exponential(2.0, 60)              # skewed: the true mean is 2
        est = bootstrap_ci(lambda v: float(v.mean()), x, n_boot=400, random_state=t)
        hits += est.low <= 2.0 <= est.high
    assert 0.88 <= hits / trials <= 0.99


def test_interval_shrinks_as_n_grows():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 200, 800):
        age = rng.uniform(20, 80, n)
        pred = age + rng.normal(0, 5, n)
        est = bootstrap_ci(mean_absolute_error, age, pred, n_boot=400)
        widths.append(est.high - est.low)
    assert widths[0] > 1.6 * widths[1] > 1.6 * 1.6 * widths[2] * 0.9
    # about 1 / sqrt(n): quadrupling n halves the width
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.35)


def test_subjects_not_images_are_resampled():
    """Five images per subject share one error: only the cluster bootstrap covers."""
    rng = np.random.default_rng(2)
    cover_cluster = cover_naive = 0
    trials = 150
    for t in range(trials):
        subject_error = rng.normal(0, 1, 40)
        values = np.repeat(subject_error, 5) + rng.normal(0, 0.1, 200)
        groups = np.repeat(np.arange(40), 5)
        stat = lambda v: float(v.mean())  # noqa: E731
        cover_cluster += bootstrap_ci(stat, values, groups=groups, n_boot=300,
                                      random_state=t).excludes(0.0) is False
        cover_naive += bootstrap_ci(stat, values, n_boot=300, random_state=t).excludes(0.0) \
            is False
    assert cover_cluster / trials > 0.88
    assert cover_naive / trials < 0.75


def test_seeds_widen_the_interval_and_average_the_value():
    rng = np.random.default_rng(3)
    age = rng.uniform(20, 80, 300)
    per_seed = np.stack([age + rng.normal(offset, 3, 300) for offset in (-2.0, 0.0, 2.0)])
    bias = lambda a, p: float(np.mean(p - a))  # noqa: E731 (p: (k, n), averaged over seeds)
    est = bootstrap_ci(bias, age, Replicates(per_seed), n_boot=500)
    single = bootstrap_ci(bias, age, per_seed[1], n_boot=500)
    assert est.n_seeds == 3 and est.value == pytest.approx(np.mean(per_seed - age), abs=1e-9)
    assert est.high - est.low > 2 * (single.high - single.low)
    # two configurations with their own seeds: resampled independently, rows shared
    other = Replicates(per_seed[:1] + 1.0)
    diff = bootstrap_ci(lambda a, p, q: bias(a, q) - bias(a, p), age, Replicates(per_seed),
                        other, n_boot=500)
    assert diff.value == pytest.approx(1.0 + np.mean(per_seed[0]) - np.mean(per_seed), abs=1e-9)
    with pytest.raises(ValueError, match=r"shape \(k, n\)"):
        Replicates(np.zeros(3))


def test_paired_difference_on_the_same_subjects():
    rng = np.random.default_rng(4)
    age = rng.uniform(20, 80, 400)
    common = rng.normal(0, 6, 400)                 # shared difficulty of each subject
    a = age + common + rng.normal(0, 1, 400)
    b = age + common + 0.5 + rng.normal(0, 1, 400)
    est = bootstrap_ci(lambda y, p, q: float(np.mean(q - y) - np.mean(p - y)), age, a, b,
                       n_boot=500)
    assert est.low > 0.2 and est.high < 0.8         # pairing removes the shared noise


def test_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(5)
    scores = np.round(rng.normal(size=300), 1)
    case = rng.random(300) < 0.3
    assert auc(scores, case) == pytest.approx(roc_auc_score(case, scores), abs=1e-12)
    assert np.isnan(auc(scores, np.zeros(300, bool)))
    assert mean_difference([1, 2, 3, 4], [True, True, False, False]) == -2.0
    from sklearn.metrics import balanced_accuracy_score

    y = rng.choice(list("abcd"), 200)
    p = np.where(rng.random(200) < 0.6, y, rng.choice(list("abcd"), 200))
    assert balanced_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)


def test_estimate_formatting_and_bad_arguments():
    est = Estimate(value=4.123, low=3.851, high=4.402, n=10, n_groups=8)
    assert str(est) == "4.12 [3.85, 4.40]"
    assert est.format(1, scale=100) == "412.3 [385.1, 440.2]"
    assert est.excludes(0.0) and not est.excludes(4.0)
    with pytest.raises(ValueError, match="rows"):
        bootstrap_ci(mean_absolute_error, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="groups has"):
        bootstrap_ci(mean_absolute_error, np.zeros(3), np.zeros(3), groups=[1, 2])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(mean_absolute_error, np.zeros(3), np.zeros(3), level=1.5)
