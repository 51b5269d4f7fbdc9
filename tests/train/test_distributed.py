"""Two CPU processes (gloo), launched as torchrun does, against one process on the same batch.

Batch norm would make the two differ by design (per-process batch statistics; PyTorch's
SyncBatchNorm is CUDA-only), so these models use ``norm="instance"``, whose statistics are
per image.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from brainkit.data import Cohort
from brainkit.data.augment import augmentation
from brainkit.losses import make_loss
from brainkit.models import build_model
from brainkit.train import augment_views, batch_loss, fit, load_checkpoint

BATCH = np.array([3, 17, 8, 21, 11])  # 5 images: shards of 3 and 2
FIT_INDICES = np.arange(12)  # batches of 5, 5, 2 per epoch
WIDTHS = (4, 8, 16, 32)

WORKER = textwrap.dedent(f"""
    import sys
    from pathlib import Path
    import numpy as np
    import torch
    from torch import nn
    from brainkit.data import Cohort
    from brainkit.data.augment import augmentation
    from brainkit.losses import make_loss
    from brainkit.models import build_model
    from brainkit.train import augment_views, batch_loss, fit
    from brainkit.train.distributed import setup_distributed, shard, shard_sizes, \\
        teardown_distributed

    cohort, out = Cohort.load(sys.argv[1]), Path(sys.argv[2])
    info, device = setup_distributed("cpu")      # reads RANK / WORLD_SIZE like under torchrun
    assert info.world_size == 2 and info.created_group
    batch = np.array({BATCH.tolist()})
    local = shard(batch, info.rank, info.world_size)
    ages = torch.tensor(cohort.table["age"].to_numpy()[batch])
    result = {{}}
    for kind, loss_fn, n_views in [("contrastive", make_loss("yaware", sigma=5.0), 2),
                                   ("regression", None, 1)]:
        torch.manual_seed(0)
        model = build_model(kind, widths={WIDTHS}, head_dims=(16, 8), norm="instance",
                            target_mean=40.0, target_scale=10.0)
        if kind == "regression":  # a non-zero head, so the encoder gets gradients too
            nn.init.normal_(model.head.weight, std=0.1)
        ddp = nn.parallel.DistributedDataParallel(model)
        x = torch.from_numpy(cohort.images(local)).unsqueeze(1)
        x = augment_views(x, local, augmentation("crop"), n_views=n_views, seed=0, epoch=0)
        y = ages.repeat(n_views).to(torch.float64 if loss_fn is not None else torch.float32)
        loss = batch_loss(ddp, loss_fn, x, y, n_views=n_views,
                          sizes=shard_sizes(len(batch), info.world_size))
        loss.backward()
        result[kind] = {{"loss": loss.detach(),
                        "grads": {{n: p.grad for n, p in model.named_parameters()}}}}
    torch.save(result, out / f"step_rank{{info.rank}}.pt")

    torch.manual_seed(0)
    model = build_model("contrastive", widths={WIDTHS}, head_dims=(16, 8), norm="instance")
    fit(model, cohort, "yaware", loss_kwargs={{"sigma": 5.0}}, indices=np.arange(12),
        out_dir=out / "ddp", epochs=1, batch_size=5, lr=1e-3, augmentation="crop",
        progress=False)
    torch.save(model.state_dict(), out / f"fit_rank{{info.rank}}.pt")
    teardown_distributed(info)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_step(cohort: Cohort, kind: str):
    loss_fn = make_loss("yaware", sigma=5.0) if kind == "contrastive" else None
    n_views = 2 if kind == "contrastive" else 1
    torch.manual_seed(0)
    model = build_model(kind, widths=WIDTHS, head_dims=(16, 8), norm="instance",
                        target_mean=40.0, target_scale=10.0)
    if kind == "regression":
        nn.init.normal_(model.head.weight, std=0.1)
    x = torch.from_numpy(cohort.images(BATCH)).unsqueeze(1)
    x = augment_views(x, BATCH, augmentation("crop"), n_views=n_views, seed=0, epoch=0)
    y = torch.tensor(cohort.table["age"].to_numpy()[BATCH]).repeat(n_views)
    y = y.to(torch.float64 if loss_fn is not None else torch.float32)
    loss = batch_loss(model, loss_fn, x, y, n_views=n_views)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def cohort_3mm(tmp_path_factory):
    """24 synthetic subjects on the 3 mm grid (61 x 73 x 61), in memory and saved: the last
    ResNet stage keeps 2 x 3 x 2 voxels, so instance norm there is well conditioned."""
    from brainkit.data.synthetic import make_cohort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nilearn resampling notice
        cohort = make_cohort("openbhb", n_subjects=24, grid_mm=3, seed=0)
    return cohort, cohort.save(tmp_path_factory.mktemp("cohort") / "openbhb24-3mm")


@pytest.mark.slow
def test_two_processes_match_one(cohort_3mm, subprocess_env, tmp_path):
    synthetic_cohort, saved_synthetic = cohort_3mm
    env = dict(subprocess_env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(saved_synthetic),
                               str(tmp_path)], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    # the single-process references, computed meanwhile
    reference = {kind: _single_process_step(synthetic_cohort, kind)
                 for kind in ("contrastive", "regression")}
    torch.manual_seed(0)
    single = build_model("contrastive", widths=WIDTHS, head_dims=(16, 8), norm="instance")
    initial = {k: v.clone() for k, v in single.state_dict().items()}
    fit(single, synthetic_cohort, "yaware", loss_kwargs={"sigma": 5.0}, indices=FIT_INDICES,
        out_dir=tmp_path / "single", epochs=1, batch_size=5, lr=1e-3, augmentation="crop",
        progress=False)
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err

    ranks = [torch.load(tmp_path / f"step_rank{r}.pt", weights_only=True) for r in range(2)]
    for kind, (loss, grads) in reference.items():
        for r in range(2):
            got = ranks[r][kind]
            torch.testing.assert_close(got["loss"], loss, rtol=1e-6, atol=1e-7)
            assert got["grads"].keys() == grads.keys()
            for name, g in grads.items():
                # every rank holds the same averaged gradient, equal to one process's up to
                # float32 summation order (relative to the tensor's norm)
                assert torch.equal(got["grads"][name], ranks[0][kind]["grads"][name]), name
                assert g.norm() > 0, f"{kind} {name} has no gradient: the test would be empty"
                assert (got["grads"][name] - g).norm() <= 1e-5 * g.norm(), f"{kind} {name}"

    # end to end (one epoch: batches of 5, 5 and 2 images, shards 3+2, 3+2, 1+1): the same
    # loss and the same weight updates up to float32 summation order. (On the 6 mm grid the
    # last stage holds 2 voxels, instance norm there leaves gradients of pure rounding noise,
    # and Adam turns those into +-lr steps of either sign: 2.7% of the update apart on one CPU.
    # On 3 mm the two runs agree to ~1e-5 of the update.)
    m_single = pd.read_parquet(tmp_path / "single" / "metrics.parquet")
    m_ddp = pd.read_parquet(tmp_path / "ddp" / "metrics.parquet")
    np.testing.assert_allclose(m_ddp["loss"], m_single["loss"], rtol=1e-5)
    w0, w1 = (torch.load(tmp_path / f"fit_rank{r}.pt", weights_only=True) for r in range(2))
    written = load_checkpoint(tmp_path / "ddp")["model"]
    ddp_updates, single_updates = [], []
    for name, value in single.state_dict().items():
        assert torch.equal(w0[name], w1[name]) and torch.equal(written[name], w0[name]), name
        if value.is_floating_point():
            single_updates.append((value - initial[name]).flatten())
            ddp_updates.append((w0[name] - initial[name]).flatten())
    # over the whole model (measured 7.6e-6 of the update's norm)
    update, ddp_update = torch.cat(single_updates), torch.cat(ddp_updates)
    assert (ddp_update - update).norm() <= 1e-3 * update.norm()
    assert load_checkpoint(tmp_path / "ddp")["world_size"] == 2


def test_setup_distributed_single_process(monkeypatch):
    from brainkit.train.distributed import setup_distributed

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info, device = setup_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    assert device == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5"):
        setup_distributed("cpu")


def _as_rank(monkeypatch, rank: int, world_size: int) -> None:
    """Make fit believe it runs as ``rank`` of ``world_size`` (no process group: a rank that
    gets as far as a collective fails there, instead of waiting for the others)."""
    import brainkit.train.loop as loop
    from brainkit.train.distributed import DistInfo

    monkeypatch.setattr(loop, "setup_distributed",
                        lambda device: (DistInfo(rank, world_size, rank), torch.device(device)))
    monkeypatch.setattr(loop, "teardown_distributed", lambda info: None)


def _tiny_fit(cohort, out_dir, **kwargs):
    torch.manual_seed(0)
    model = build_model("contrastive", widths=WIDTHS, head_dims=(16, 8), norm="instance")
    kwargs = {"indices": np.arange(8), "epochs": 1, "batch_size": 4, "lr": 1e-3,
              "augmentation": "crop", **kwargs}
    return fit(model, cohort, "yaware", loss_kwargs={"sigma": 5.0}, out_dir=out_dir,
               progress=False, handle_signals=False, **kwargs)


def test_every_rank_refuses_a_resume_with_other_settings(synthetic_cohort, tmp_path,
                                                          monkeypatch):
    """Rank 0 alone checked config.json: on a mismatch it raised while the other ranks went
    on into DistributedDataParallel's set-up and waited there for it."""
    _tiny_fit(synthetic_cohort, tmp_path / "run")
    _as_rank(monkeypatch, rank=1, world_size=2)
    with pytest.raises(ValueError, match=r"(?s)cannot resume .*training\.lr"):
        _tiny_fit(synthetic_cohort, tmp_path / "run", epochs=2, lr=2e-3, resume=True)


def test_fit_refuses_batches_with_fewer_images_than_processes(synthetic_cohort, tmp_path,
                                                               monkeypatch):
    """10 images in batches of 4 leave a last batch of 2: with 4 processes, ranks 2 and 3
    would get no image and fail in augment_views (an empty shard) while ranks 0 and 1 waited
    for them in the all-gather. Refused up front, on every rank, before anything is written."""
    from brainkit.train.distributed import shard

    assert len(shard(np.arange(2), 3, 4)) == 0
    with pytest.raises(IndexError):  # what the empty shard met
        augment_views(torch.zeros(0, 1, 8, 8, 8), np.arange(0), augmentation("crop"),
                      n_views=2, seed=0, epoch=0)
    for rank in (0, 3):
        _as_rank(monkeypatch, rank=rank, world_size=4)
        with pytest.raises(ValueError, match="at least one image per process"):
            _tiny_fit(synthetic_cohort, tmp_path / f"run{rank}", indices=np.arange(10))
        assert not (tmp_path / f"run{rank}").exists()
    _as_rank(monkeypatch, rank=1, world_size=2)  # batches of 4, 4, 2: two processes are fine
    with pytest.raises((RuntimeError, ValueError), match="process group"):  # reached DDP
        _tiny_fit(synthetic_cohort, tmp_path / "two", indices=np.arange(10))
