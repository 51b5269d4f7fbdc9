"""MNI grids and the brain's box on them."""

from __future__ import annotations

import numpy as np
import pytest

from brainkit.data.grid import BRAIN_BOX_MARGIN_MM, brain_box, mni_grid
from brainkit.data.synthetic import brain_mask


@pytest.mark.parametrize("mm", [6, 1.5])
def test_the_box_holds_the_brain_mask_and_its_margin(mm):
    """With no margin the box is the mask's bounding box; the default margin widens it by
    ceil(6 mm / voxel) voxels per side, clipped to the grid."""
    mask = brain_mask(mm)
    inside = np.nonzero(mask)
    tight = tuple((int(i.min()), int(i.max()) + 1) for i in inside)
    assert brain_box(*mni_grid(mm), margin_mm=0) == tight
    pad = int(np.ceil(BRAIN_BOX_MARGIN_MM / mm))
    wide = brain_box(*mni_grid(mm))
    assert wide == tuple((max(a - pad, 0), min(b + pad, n)) for (a, b), n in
                         zip(tight, mask.shape))
    (x0, x1), (y0, y1), (z0, z1) = wide
    assert mask[x0:x1, y0:y1, z0:z1].sum() == mask.sum()


def test_the_6mm_box_is_documented_and_holds_two_thirds_of_the_image():
    box = brain_box(*mni_grid(6))
    assert box == ((2, 29), (3, 35), (0, 27))
    assert np.prod([b - a for a, b in box]) / np.prod(mni_grid(6)[0]) == pytest.approx(0.66,
                                                                                       abs=0.01)


def test_the_box_follows_the_affine():
    """Shifting the grid's origin by one voxel shifts the box by one voxel."""
    shape, affine = mni_grid(6)
    moved = affine.copy()
    moved[1, 3] -= 6.0          # voxel j now sits 6 mm further back: the brain moves up by 1
    (_, (y0, y1), _) = brain_box(shape, affine, margin_mm=0)
    assert brain_box(shape, moved, margin_mm=0)[1] == (y0 + 1, y1 + 1)


@pytest.mark.parametrize("args, match", [
    (((31, 37), np.eye(4)), "3D grid shape"),
    (((31, 37, 31), np.eye(3)), "4x4 affine"),
    (((31, 37, 31), mni_grid(6)[1], -1.0), "margin_mm"),
])
def test_bad_arguments_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        brain_box(*args)


def test_a_grid_outside_mni_space_is_refused_with_the_way_out():
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    affine[:3, 3] = 500.0       # far from the brain
    with pytest.raises(ValueError, match="not in MNI space.*input_box=None"):
        brain_box((31, 37, 31), affine)


def test_the_box_holds_the_real_oasis_images(shared_data):
    """The 4 mm OASIS-1 images (their own affine, 1 mm off brainkit's 4 mm grid): the mean
    image keeps all but a trace of its intensity inside the box."""
    import nibabel as nib

    files = sorted((shared_data / "oasis1_mni4mm").glob("*.nii.gz"))[:40]
    if not files:
        pytest.skip("no OASIS-1 4 mm images")
    affine = nib.load(files[0]).affine
    mean = np.mean([np.abs(np.asarray(nib.load(f).dataobj, dtype=np.float32)) for f in files],
                   axis=0)
    (x0, x1), (y0, y1), (z0, z1) = brain_box(mean.shape, affine)
    assert mean[x0:x1, y0:y1, z0:z1].sum() / mean.sum() > 0.9999
    assert (x1 - x0) * (y1 - y0) * (z1 - z0) < 0.75 * mean.size
