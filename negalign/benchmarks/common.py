"""Helpers shared by benchmarks: measuring a variant in a fresh child process, timing, writing results."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(module: str, args: list[str], timeout: int = 1800) -> dict:
    """Run ``python -m module --child ...`` and return the JSON dict it prints last. A fresh process per variant keeps
    one variant's peak memory from hiding another's."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {module} {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def profiled_peak_mib(fn) -> float:
    """Run ``fn()`` once under ``torch.profiler`` with ``profile_memory=True`` and return the peak of the tensor bytes
    allocated during the call above what was live when it started, MiB.

    The profiler records every allocation and free of PyTorch's CPU allocator as a ``[memory]`` event with a signed
    byte count; the running sum over those events in time order is the live tensor memory the call added, and its
    maximum the call's peak (events in the same nanosecond: frees first, so a peak is never over-counted). Unlike the process's RSS this counts tensors only (no
    Python objects, no memory the C library keeps after a free) and needs no fresh process. The profiler slows the
    call, so time it separately."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def set_threads(n: int) -> None:
    """``--threads N``: torch's intra-op threads (0 leaves torch's default)."""
    if n > 0:
        import torch

        torch.set_num_threads(n)


def load_average() -> str:
    """The 1/5/15-minute load averages (the machine may be shared; benchmarks record it)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def machine_line() -> str:
    import platform

    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{dev}, {platform.platform()}"
