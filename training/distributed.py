"""`torchrun` support: one process group per run (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


@contextmanager
def distributed_context(device: str) -> Iterator[None]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), leave it after."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def process_device(device: str) -> torch.device:
    """The device this process trains on: `device` as the run config says (cpu, cuda,
    cuda:N), except that plain `cuda` under torchrun is this process's own GPU
    (cuda:LOCAL_RANK, made current so NCCL uses it), not every rank's cuda:0."""
    if device != "cuda" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return torch.device(device)
    own = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(own)
    return own
