"""Timing, peak memory and host synchronisations of one call, and the fitted growth exponent.

Peak memory is the largest amount of memory held during one call beyond what was held before it. On CUDA:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. On CPU, ``tracemalloc`` does not see torch's
allocations; the running total of the allocations and frees that ``torch.profiler`` (``profile_memory=True``)
records during the call is used instead, which is the CPU counterpart of the CUDA number. Beside it the growth of
the process's resident-set high-water mark is reported (``peak_rss_bytes``; reset through ``/proc/self/clear_refs``
where Linux allows it): it also counts allocator overhead and library pages first touched by the call.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Any, Callable, Sequence

import torch

import torch_arcad

__all__ = [
    "peak_memory",
    "time_calls",
    "time_interleaved",
    "count_host_syncs",
    "fit_exponent",
    "load_average",
    "environment",
]

KIB = 1024
#: Name of the profiler's allocation records.
MEMORY_EVENT = "[memory]"


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            resident_pages = int(handle.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _reset_rss_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM (and the ru_maxrss it backs) to the current resident size
        return True
    except OSError:
        return False


def _rss_high_water_mark_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * KIB  # bytes on macOS, KiB elsewhere


def _allocation_peak_bytes(prof: torch.profiler.profile) -> int:
    """Largest running total of the CPU allocations and frees recorded by the profiler (bytes)."""
    events = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == MEMORY_EVENT and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda event: event.start_ns())
    total = peak = 0
    for event in events:  # a few thousand allocation records, once per configuration
        total += event.nbytes()
        peak = max(peak, total)
    return peak


def peak_memory(step: Callable[[], None], device: torch.device) -> dict[str, Any]:
    """Extra memory at the peak of one call of ``step`` over what was in use before it.

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` minus ``memory_allocated`` before. CPU: the
    running total of the tensor allocations and frees that ``torch.profiler`` records during the call (the
    CPU counterpart of the CUDA number), and beside it the growth of the process's resident-set high-water mark
    (reset through ``/proc/self/clear_refs`` where Linux allows it), which also counts allocator overhead and
    library pages first touched by the call.

    Returns:
        ``{"peak_bytes": int, "memory_method": str}`` plus ``"peak_rss_bytes"`` on CPU.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return {
            "peak_bytes": torch.cuda.max_memory_allocated(device) - before,
            "memory_method": "cuda.max_memory_allocated",
        }
    reset = _reset_rss_high_water_mark()
    before = _current_rss_bytes()
    if before is None:
        before = _rss_high_water_mark_bytes()
    peak: int | None
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        peak = _allocation_peak_bytes(prof)
    except (AttributeError, RuntimeError):  # profiler internals unavailable: fall back to the resident set
        peak = None
    rss = max(_rss_high_water_mark_bytes() - before, 0)
    rss_method = "rss high-water mark" if reset else "ru_maxrss (not resettable: upper bound)"
    if peak is None:
        return {"peak_bytes": rss, "memory_method": rss_method, "peak_rss_bytes": rss}
    return {"peak_bytes": peak, "memory_method": "profiler allocation trace", "peak_rss_bytes": rss}


def time_calls(step: Callable[[], None], device: torch.device, repeats: int) -> list[float]:
    """Wall time in seconds of each of ``repeats`` calls (CUDA events on CUDA, ``perf_counter`` on CPU)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return times


def count_host_syncs(step: Callable[[], None], device: torch.device) -> int | None:
    """Number of synchronising CUDA calls one call of ``step`` makes on the Python thread (the forward; the
    backward runs on autograd's own threads), from ``torch.cuda.set_sync_debug_mode("warn")``. None on CPU."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(warning.message) for warning in caught)



def time_interleaved(steps: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median wall time in seconds of each step, the steps called in turn ``repeats`` times after one warm-up each,
    so that a change of load on a shared machine affects all of them alike."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].extend(time_calls(step, device, 1))
    return {name: statistics.median(values) for name, values in times.items()}


def fit_exponent(sizes: Sequence[float], times: Sequence[float]) -> float:
    """Least-squares slope p of ``log time = p log size + c``."""
    if len(sizes) != len(times) or len(sizes) < 2:
        raise ValueError(f"need at least two (size, time) pairs of equal length, got {len(sizes)} and {len(times)}")
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in times]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        raise ValueError("sizes must not all be equal")
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes sharing the CPU inflate CPU timings)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, CPU model, thread count, load average and GPU name: what a reader needs to compare timings."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "torch_arcad": torch_arcad.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env

