"""The voxel-ridge baseline: equal to sklearn's ridge, scale-free, masked, grouped CV."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from brainkit.eval import VoxelRidge


def planted(rng, n=80, shape=(4, 5, 6), noise=1.0):
    age = rng.uniform(20, 80, n)
    pattern = rng.normal(size=shape)
    images = rng.normal(0, noise, (n, *shape)) + pattern * (age[:, None, None, None] - 50) / 30
    return images, age


def test_equals_sklearn_ridge_at_the_chosen_penalty(rng):
    images, age = planted(rng)
    model = VoxelRidge(mask_fraction=0.0).fit(images, age)
    reference = Ridge(alpha=model.alpha_).fit(images.reshape(len(age), -1), age)
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.predict(images), reference.predict(
        images.reshape(len(age), -1)), rtol=1e-9)


def test_recovers_a_planted_linear_age_signal(rng):
    images, age = planted(rng, n=200, noise=0.3)
    train, test = np.arange(150), np.arange(150, 200)
    model = VoxelRidge().fit(images[train], age[train])
    assert np.abs(model.predict(images[test]) - age[test]).mean() < 3.0
    # predicting the training mean is far worse
    assert np.abs(age[train].mean() - age[test]).mean() > 10


def test_intensity_scale_does_not_change_the_predictions(rng):
    images, age = planted(rng)
    a = VoxelRidge().fit(images, age).predict(images)
    b = VoxelRidge().fit(images * 1e4, age).predict(images * 1e4)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_mask_drops_voxels_that_are_mostly_background(rng):
    images, age = planted(rng)
    images[:, 0, 0, 0] = 0.0
    images[:70, 0, 0, 1] = 0.0      # brain in 10 of 80 images only
    model = VoxelRidge(mask_fraction=0.5).fit(images, age)
    flat = model.mask_.reshape(images.shape[1:])
    assert not flat[0, 0, 0] and not flat[0, 0, 1] and flat[1, 1, 1]


def test_grouped_search_keeps_subjects_together(rng):
    images, age = planted(rng, n=60)
    subjects = np.repeat(np.arange(20), 3)
    model = VoxelRidge(cv=5).fit(images, age, groups=subjects)
    assert model.cv_mae_.shape == (len(model.cv_mae_),) and np.isfinite(model.cv_mae_).all()
    with pytest.raises(ValueError, match="at least 5 groups"):
        VoxelRidge(cv=5).fit(images, age, groups=subjects % 3)


@pytest.mark.parametrize("bad, match", [
    ({"mask_fraction": 1.5}, "mask_fraction"),
    ({"relative_alphas": [-1.0]}, "relative_alphas"),
])
def test_bad_settings_are_refused(rng, bad, match):
    images, age = planted(rng, n=20)
    with pytest.raises(ValueError, match=match):
        VoxelRidge(**bad).fit(images, age)


def test_bad_inputs_are_refused(rng):
    images, age = planted(rng, n=20)
    with pytest.raises(RuntimeError, match="not fitted"):
        VoxelRidge().predict(images)
    bad = images.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"row\(s\) \[3\]"):
        VoxelRidge().fit(bad, age)
    model = VoxelRidge().fit(images, age)
    with pytest.raises(ValueError, match="voxels per image"):
        model.predict(images[:, :2])
