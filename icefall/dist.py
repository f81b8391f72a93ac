"""torch.distributed set-up for torchrun and for ``--world-size N`` (spawn).

gloo on CPU, nccl on CUDA. With one process no process group is created.
"""

import os
from typing import Optional, Tuple

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup_dist(
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    master_port: int = 12354,
    use_cuda: Optional[bool] = None,
) -> Tuple[int, int, torch.device]:
    """Join the process group; return ``(rank, world_size, device)``.

    Under torchrun, rank and world size come from the environment; under
    ``mp.spawn`` they are passed in. With ``world_size == 1`` nothing is
    initialised.
    """
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if launched_by_torchrun():
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
    else:
        rank, world_size, local_rank = rank or 0, world_size or 1, rank or 0
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(master_port))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    if world_size > 1 and not use_cuda and "OMP_NUM_THREADS" not in os.environ:
        # Several CPU processes share the cores: by default each would start
        # one thread per core, and together they would oversubscribe them.
        torch.set_num_threads(cpu_threads_per_process(world_size))
    return rank, world_size, device


def cpu_threads_per_process(world_size: int) -> int:
    """The machine's usable cores shared out among `world_size` processes (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // world_size)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for MASTER_PORT),
    so that two trainings on one machine do not collide on a fixed port."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cleanup_dist() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place; returns ``t``. A no-op in one process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
