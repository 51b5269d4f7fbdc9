"""Cohort figures: histograms, per-site ages and example slices (structure and data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainkit import plots
from brainkit.data import Cohort


@pytest.fixture
def cohort(rng):
    n = 12
    table = pd.DataFrame({
        "image_id": [f"img{i}" for i in range(n)],
        "subject_id": [f"sub{i}" for i in range(n)],
        "session": 1,
        "dataset": ["openbhb"] * 8 + ["adni"] * 4,
        "site": ["s1", "s1", "s1", "s2", "s2", "s2", "s3", "s3", "a1", "a1", "a2", "a2"],
        "age": [20.0, 22, 25, 50, 55, 60, 30, 35, 70, 72, 80, 85],
        "sex": rng.choice(["M", "F"], n),
        "diagnosis": ["HC"] * 8 + ["HC", "AD", "AD", "sMCI"],
        "years_from_baseline": 0.0,
    })
    # Voxel values encode (image, x, y, z) so slices can be checked exactly.
    i, x, y, z = np.meshgrid(np.arange(n), np.arange(5), np.arange(6), np.arange(7), indexing="ij")
    images = (1000.0 * i + 100 * x + 10 * y + z).astype(np.float32)
    return Cohort(table, images, np.eye(4))


def test_age_histogram_split_by_column(cohort):
    fig = plots.age_histogram(cohort.table, color="diagnosis", bin_width=5)
    assert [t.name for t in fig.data] == ["HC", "sMCI", "AD"]
    assert fig.data[2].marker.color == plots.GROUP_COLORS["AD"]
    np.testing.assert_allclose(fig.data[2].x, [72.0, 80.0])
    assert fig.data[0].xbins.size == 5 and fig.data[0].xbins.start == 20
    assert fig.layout.barmode == "stack"
    assert fig.layout.xaxis.title.text == "Age (years)"
    single = plots.age_histogram(cohort.table)
    assert len(single.data) == 1 and len(single.data[0].x) == 12
    by_dataset = plots.age_histogram(cohort.table, color="dataset", barmode="overlay")
    assert [t.name for t in by_dataset.data] == ["adni", "openbhb"]
    assert by_dataset.data[0].marker.color != by_dataset.data[1].marker.color
    with pytest.raises(ValueError, match="lacks column"):
        plots.age_histogram(cohort.table, color="scanner")


def test_site_ages_orders_sites_by_median_age(cohort):
    fig = plots.site_ages(cohort.table)
    assert list(fig.layout.xaxis.categoryarray) == ["s1", "s3", "s2", "a1", "a2"]
    assert [t.name for t in fig.data] == ["adni", "openbhb"]
    openbhb = fig.data[1]
    assert list(openbhb.x) == cohort.table["site"][:8].tolist()
    np.testing.assert_allclose(openbhb.y, cohort.table["age"][:8])
    assert fig.layout.yaxis.title.text == "Age (years)"


@pytest.mark.parametrize("axis, position, ax", [("axial", 0.5, 3), ("coronal", 0.0, 2),
                                                 ("sagittal", 1.0, 1)])
def test_example_slices_cut_the_right_plane(cohort, axis, position, ax):
    idx = [9, 3, 0]
    fig = plots.example_slices(cohort, idx, axis=axis, position=position, cols=2)
    assert len(fig.data) == 3 and all(type(t).__name__ == "Heatmap" for t in fig.data)
    images = cohort.images(idx)
    k = int(round(position * (images.shape[ax] - 1)))
    for trace, img in zip(fig.data, images):
        np.testing.assert_array_equal(np.asarray(trace.z), np.take(img, k, axis=ax - 1).T)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["AD, 72, a1", "HC, 50, s2", "HC, 20, s1"]
    assert fig.layout.yaxis2.scaleanchor == "x2"  # square voxels in every panel


def test_example_slices_errors(cohort):
    with pytest.raises(ValueError, match="axis must be one of"):
        plots.example_slices(cohort, [0], axis="oblique")
    with pytest.raises(ValueError, match="position must be a fraction"):
        plots.example_slices(cohort, [0], position=1.5)
    with pytest.raises(ValueError, match="indices must be"):
        plots.example_slices(cohort, [])


def test_category_colors():
    assert plots.category_colors(["AD", "HC"]) == {"HC": plots.GROUP_COLORS["HC"],
                                                  "AD": plots.GROUP_COLORS["AD"]}
    assert plots.category_colors(["exp", "l1"])["exp"] == plots.LOSS_COLORS["exp"]
    colors = plots.category_colors(["b", "a", "c", "a"])
    assert list(colors) == ["a", "b", "c"] and len(set(colors.values())) == 3
