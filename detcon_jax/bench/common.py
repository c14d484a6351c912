"""What every benchmark reports beside its numbers: timing, memory, device and host."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the JSON result line)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def host_info() -> dict[str, Any]:
    """CPU count and 1-minute load: a shared machine's numbers mean little without them."""
    return {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def device_info() -> dict[str, Any]:
    """Platform, device kind and count, JAX version."""
    import jax

    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "jax_version": jax.__version__,
    }


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], float]:
    """Median wall time of ``fn()`` (which must block until its work is done), the wall
    times, and the median CPU time of this process per run (all threads; on a shared
    machine it varies less with the load than the wall time does)."""
    times, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(times), times, statistics.median(cpu)
