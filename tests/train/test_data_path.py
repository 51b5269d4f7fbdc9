"""The data paths: resident and memory-mapped batches are bit-identical, and so is training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainkit.data import Cohort
from brainkit.data.loaders import HostBatches, ResidentBatches, open_batches, resident_nbytes
from brainkit.data.packed import pack_cohort
from brainkit.models import build_model
from brainkit.train import embed, fit, recalibrate_batchnorm

WIDTHS = (4, 8, 16, 32)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def packed(synthetic_cohort, tmp_path_factory):
    """The 6 mm synthetic cohort (zero outside the brain mask) packed to uint8 and float16."""
    root = tmp_path_factory.mktemp("packed")
    return {"uint8": pack_cohort(synthetic_cohort, root / "u8"),
            "float16": pack_cohort(synthetic_cohort, root / "f16", "float16")}


def cohorts(packed, synthetic_cohort) -> dict:
    return {**packed, "float32": synthetic_cohort}


@pytest.mark.parametrize("kind", ["uint8", "float16", "float32"])
def test_resident_and_memmap_give_the_same_batches(kind, packed, synthetic_cohort):
    cohort = cohorts(packed, synthetic_cohort)[kind]
    if kind != "float32":
        assert cohort.packed_store.box != tuple((0, n) for n in cohort.grid_shape), \
            "the box must crop something, else un-cropping goes untested"
    host, resident = HostBatches(cohort, "cpu"), ResidentBatches(cohort, "cpu")
    assert resident.nbytes == resident_nbytes(cohort)
    for idx in ([7, 0, 19, 3], [5], np.arange(len(cohort))[::-1], [2, 2, 9]):
        a, b = host.load(idx), resident.load(idx)
        assert a.dtype == torch.float32 and a.shape == (len(idx), 1) + cohort.grid_shape
        assert torch.equal(a, b)
        # the Cohort contract: the same values as images()
        assert torch.equal(a[:, 0], torch.from_numpy(cohort.images(np.asarray(idx))))


def test_resident_batches_never_read_the_cohort_again(packed, monkeypatch):
    cohort = packed["uint8"]
    source = ResidentBatches(cohort, "cpu")
    expected = HostBatches(cohort, "cpu").load([4, 1])

    def refuse(*args, **kwargs):
        raise AssertionError("the resident path read from the host store")

    monkeypatch.setattr(cohort, "images", refuse)
    monkeypatch.setattr(cohort, "raw_batch", refuse)
    assert torch.equal(source.load([4, 1]), expected)


def test_open_batches_chooses_and_validates(packed):
    cohort = packed["uint8"]
    assert open_batches(cohort, "cpu").mode == "memmap", "auto on CPU reads the memory map"
    assert open_batches(cohort, "cpu", "resident").mode == "resident"
    assert open_batches(cohort, "cpu", "memmap").mode == "memmap"
    with pytest.raises(ValueError, match=r"data_path must be one of \('auto', 'memmap', "
                                         r"'resident'\), got 'gpu'"):
        open_batches(cohort, "cpu", "gpu")
    with pytest.raises(ValueError, match="memory_fraction must be in"):
        open_batches(cohort, "cpu", memory_fraction=1.5)
    with pytest.raises(ValueError, match="table-only"):
        open_batches(Cohort(cohort.table, None, cohort.affine), "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            open_batches(cohort, "cuda", "resident")


def _fit(cohort, out_dir, **kwargs):
    torch.manual_seed(0)
    model = build_model("contrastive", widths=WIDTHS, head_dims=(16, 8))
    result = fit(model, cohort, "exp", loss_kwargs={"sigma": 5.0}, out_dir=out_dir,
                 indices=np.arange(16), epochs=2, batch_size=8, lr=1e-3, augmentation="all",
                 progress=False, handle_signals=False, **kwargs)
    return result, {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_fit_gives_identical_weights_on_every_data_path(packed, synthetic_cohort, tmp_path):
    """Same seed, same batches: memmap (with and without prefetch) and resident training of
    the packed cohort, and training of a float cohort holding its decoded images, end with
    bit-identical weights on CPU."""
    cohort = packed["uint8"]
    decoded = Cohort(cohort.table, cohort.images(), cohort.affine)
    runs = {
        "memmap": _fit(cohort, tmp_path / "memmap", data_path="memmap"),
        "memmap-no-prefetch": _fit(cohort, tmp_path / "sync", data_path="memmap",
                                   prefetch=False),
        "resident": _fit(cohort, tmp_path / "resident", data_path="resident"),
        "float32": _fit(decoded, tmp_path / "float32"),
    }
    assert runs["memmap"][0].data_path == "memmap"
    assert runs["resident"][0].data_path == "resident"
    assert runs["float32"][0].data_path == "memmap"  # auto, on CPU
    reference_result, reference = runs["memmap"]
    torch.manual_seed(0)
    initial = build_model("contrastive", widths=WIDTHS, head_dims=(16, 8)).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in reference.items()), "nothing trained"
    for name, (result, weights) in runs.items():
        np.testing.assert_array_equal(result.metrics["loss"], reference_result.metrics["loss"],
                                      err_msg=name)
        for key, value in reference.items():
            assert torch.equal(weights[key], value), f"{name}: {key}"
    # the comparison is sharp: the unquantised images train to other weights
    _, original = _fit(synthetic_cohort, tmp_path / "original")
    assert any(not torch.equal(original[k], v) for k, v in reference.items())
    with pytest.raises(ValueError, match="data_path must be one of"):
        _fit(cohort, tmp_path / "bad", data_path="disk")


def test_inference_decodes_packed_cohorts_like_images(packed):
    cohort = packed["uint8"]
    decoded = Cohort(cohort.table, cohort.images(), cohort.affine)
    torch.manual_seed(0)
    model = build_model("contrastive", widths=WIDTHS, head_dims=(16, 8))
    np.testing.assert_array_equal(embed(model, cohort, batch_size=7),
                                  embed(model, decoded, batch_size=7))
    recalibrate_batchnorm(model, cohort, np.arange(12), batch_size=6)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    recalibrate_batchnorm(model, decoded, np.arange(12), batch_size=6)
    for key, value in model.state_dict().items():
        if "running" in key:
            assert torch.equal(value, stats[key]), key


@cuda
def test_cuda_paths_agree_and_auto_is_resident(packed):
    cohort = packed["uint8"]
    device = torch.device("cuda")
    auto = open_batches(cohort, device)
    assert auto.mode == "resident" and auto.data.device.type == "cuda"
    host = open_batches(cohort, device, "memmap")
    assert host.pin_memory
    idx = [7, 0, 19, 3]
    a, b = host.load(idx), auto.load(idx)
    assert a.device.type == "cuda" and torch.equal(a, b)
    assert torch.equal(a.cpu(), HostBatches(cohort, "cpu").load(idx))


def test_auto_decides_on_the_free_memory_of_an_indexed_cuda_device(packed, monkeypatch):
    """The CUDA branch of open_batches, without a GPU: torch < 2.5's mem_get_info refuses
    torch.device("cuda") (no index), so the index must be resolved first; "auto" goes resident
    below memory_fraction of the free memory, and an explicit "resident" that cannot fit is
    refused."""
    import brainkit.data.loaders as loaders_module

    cohort = packed["uint8"]
    need = resident_nbytes(cohort)
    asked = []
    free = {"bytes": 0}

    def mem_get_info(device=None):  # torch 2.4: _get_device_index(device) with optional=False
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, "
                             f"but got:{device}")
        asked.append(device)
        return free["bytes"], 2 * free["bytes"]

    class Stub:
        def __init__(self, mode, cohort, device, **kwargs):
            self.mode, self.device = mode, torch.device(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(loaders_module, "ResidentBatches",
                        lambda c, d, **k: Stub("resident", c, d, **k))
    monkeypatch.setattr(loaders_module, "HostBatches", lambda c, d, **k: Stub("memmap", c, d, **k))

    free["bytes"] = 2 * need + 2  # need < 0.5 * free
    source = open_batches(cohort, "cuda")
    assert source.mode == "resident" and source.device == torch.device("cuda", 3)
    assert asked == [torch.device("cuda", 3)]
    free["bytes"] = 2 * need  # exactly half: not below it
    assert open_batches(cohort, torch.device("cuda")).mode == "memmap"
    assert open_batches(cohort, "cuda:1", memory_fraction=1.0).mode == "resident"
    assert asked[-1] == torch.device("cuda", 1)
    free["bytes"] = need
    with pytest.raises(ValueError, match="data_path='resident' needs"):
        open_batches(cohort, "cuda", "resident")
    assert open_batches(cohort, "cuda", "memmap").mode == "memmap"
