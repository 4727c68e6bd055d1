"""The processes of a job (``accelerate launch`` / ``torchrun``, or one plain process): their state, computing a
frozen column once across them, and leaving cleanly. Used by trainers, generation and evaluation alike."""

from __future__ import annotations

import math


def accelerator_available() -> bool:
    """A CUDA or XPU device is usable by this process."""
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def process_state():
    """accelerate's process state for this job. On a machine without an accelerator it must be created with
    ``cpu=True``: otherwise a multi-process launch (``--multi_gpu``, torchrun) falls back to one process per rank, and,
    the state being a singleton, so would the trainer built after it."""
    from accelerate import PartialState

    return PartialState(cpu=not accelerator_available())


def end_processes() -> None:
    """Leave a multi-process job cleanly: every process waits for the others (the main one may still be writing),
    then the process group is destroyed before the interpreter exits. Left to interpreter teardown, gloo's threads
    sometimes abort a finished process ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_sharded(compute, n: int) -> list:
    """Compute a frozen column of ``n`` values across the processes of the job, each value once.

    Process ``r`` of ``w`` calls ``compute(indices)`` on its contiguous slice of ``ceil(n / w)`` indices of
    ``range(n)`` (the last slice padded by repeating index ``n - 1``, so that every process runs the same number of
    batches: forwards of a ZeRO-3-sharded model are collective) and must return one value per index. Every process
    gets all ``n`` values back, in order. With one process this is ``compute(list(range(n)))``."""
    state = process_state()
    world, rank = state.num_processes, state.process_index
    per = math.ceil(n / world) if n else 0
    values = list(compute([min(rank * per + j, n - 1) for j in range(per)]))
    if len(values) != per:
        raise ValueError(f"run_sharded: compute returned {len(values)} values for {per} indices")
    if world == 1:
        return values
    from accelerate.utils import gather_object

    return gather_object(values)[:n]  # the slices, in process order
