"""A quick, in-process throughput measurement of a profile's training step (for the book)."""

from __future__ import annotations

import time

import numpy as np

from .profiles import Profile, get_profile

__all__ = ["step_throughput"]


def step_throughput(profile: str | Profile | None = None, *, steps: int = 5, warmup: int = 2,
                    device: str | None = None, loss: str = "exp") -> dict:
    """Volumes per second of one contrastive training step of ``profile`` (data on device).

    Random volumes on the profile's grid, the profile's model and batch (two views per image),
    Adam; the same settings as :func:`brainkit.train.fit` on that device (bf16 autocast and
    channels-last on CUDA). The data path is excluded: this is the step-only rate.

    Returns
    -------
    dict
        ``device``, ``grid``, ``batch_volumes``, ``volumes_per_s``, ``seconds_per_step``.
    """
    import torch

    from ..data.grid import mni_grid
    from ..losses import make_loss
    from ..models import build_model

    profile = get_profile(profile)
    dev = torch.device(device or profile.resolved_device())
    shape, _ = mni_grid(profile.grid_mm)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    model = build_model(**profile.model_config("contrastive")).to(dev)
    x = torch.rand(profile.n_views * profile.batch_size, 1, *shape, device=dev)
    if cuda:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.rand(profile.batch_size, device=dev).repeat(profile.n_views) * 80
    opt = torch.optim.Adam(model.parameters(), lr=profile.lr, fused=cuda or None)
    loss_fn = make_loss(loss, sigma=profile.sigma, temperature=profile.temperature)
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
            z = model(x)
        loss_fn(z.float(), y).backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    per_step = float(np.median(times))
    return {"device": str(dev), "grid": "x".join(map(str, shape)), "batch_volumes": len(x),
            "volumes_per_s": len(x) / per_step, "seconds_per_step": per_step}
