"""torch.distributed helpers: detection under torchrun, process group, sharded loaders, reductions."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device | None) -> tuple[bool, int, int, torch.device | None]:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU).

    Returns:
        ``(distributed, rank, world_size, device)``; the device is ``cuda:LOCAL_RANK`` on GPUs.
    """
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        return world > 1, dist.get_rank(), world, device
    if env_world_size() <= 1:
        return False, 0, 1, device
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True, dist.get_rank(), dist.get_world_size(), device


def shard_loader(loader: DataLoader) -> DataLoader:
    """The same DataLoader over this process's shard (DistributedSampler; shuffled if the original was)."""
    sampler = DistributedSampler(loader.dataset, shuffle=isinstance(loader.sampler, RandomSampler),
                                 drop_last=loader.drop_last)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=loader.drop_last, persistent_workers=loader.persistent_workers and
                      loader.num_workers > 0, worker_init_fn=loader.worker_init_fn)


def all_reduce_sum(tensor: torch.Tensor, state) -> torch.Tensor:
    """Sum ``tensor`` over processes (returns a new tensor on the tensor's device)."""
    out = tensor.detach().clone()
    if state.device.type == "cuda":
        out = out.to(state.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)
