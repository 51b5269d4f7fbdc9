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


@pytest.mark.parametrize("mm", [6, 4, 3, 2, 1.5])
def test_a_strided_box_keeps_the_last_feature_map_of_the_whole_image(mm):
    """With ``stride``, each axis holds the plain box and gives ``ceil(length / stride)`` =
    ``ceil(n / stride)`` positions, within the grid; one voxel fewer on either side would
    give fewer (the widening stops as soon as it can)."""
    from brainkit.models import OUTPUT_STRIDE

    shape, affine = mni_grid(mm)
    plain = brain_box(shape, affine)
    wide = brain_box(shape, affine, stride=OUTPUT_STRIDE)
    for (a, b), (c, d), n in zip(plain, wide, shape):
        assert 0 <= c <= a < b <= d <= n
        assert -(-(d - c) // OUTPUT_STRIDE) == -(-n // OUTPUT_STRIDE)
        if (c, d) != (a, b):
            assert -(-(d - c - 1) // OUTPUT_STRIDE) < -(-n // OUTPUT_STRIDE)


def test_the_strided_6mm_box_is_documented_and_its_network_maps_like_the_whole_image():
    import torch

    from brainkit.models import OUTPUT_STRIDE, resnet3d

    shape, affine = mni_grid(6)
    box = brain_box(shape, affine, stride=OUTPUT_STRIDE)
    assert box == ((2, 29), (2, 35), (0, 27))
    enc = resnet3d(10, widths=(2, 2, 2, 2))
    maps = {}
    for name, size in (("whole", shape), ("box", tuple(b - a for a, b in box))):
        x = torch.zeros(1, 1, *size)
        with torch.no_grad():
            x = enc.maxpool(enc.relu(enc.bn1(enc.conv1(x))))
            maps[name] = enc.layer4(enc.layer3(enc.layer2(enc.layer1(x)))).shape[2:]
    assert maps["box"] == maps["whole"] == (1, 2, 1)


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
    (((31, 37, 31), mni_grid(6)[1], 6.0, 0), "stride"),
    (((31, 37, 31), mni_grid(6)[1], 6.0, 2.5), "stride"),
])
def test_bad_arguments_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        brain_box(*args[:3], **({"stride": args[3]} if len(args) > 3 else {}))


def test_a_grid_outside_mni_space_is_refused_with_the_way_out():
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    affine[:3, 3] = 500.0       # far from the brain
    with pytest.raises(ValueError, match="not in MNI space.*input_box=None"):
        brain_box((31, 37, 31), affine)


def test_brain_stands_for_the_whole_image_outside_mni_space():
    """A profile's ``input_box="brain"`` on images not in MNI space trains on the whole
    image (``None`` in the run's config) instead of failing; in MNI space it is the box."""
    from brainkit.experiments import get_profile
    from brainkit.models import brain_input_box

    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    affine[:3, 3] = 500.0
    assert brain_input_box((31, 37, 31), affine) is None
    config = get_profile("ci").train_config("exp", ages=np.array([20.0, 80.0]), seed=0)
    assert config.model["input_box"] == "brain"
    assert config.for_grid((31, 37, 31), affine).model["input_box"] is None
    assert config.for_grid(*mni_grid(6)).model["input_box"] == ((2, 29), (2, 35), (0, 27))


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
