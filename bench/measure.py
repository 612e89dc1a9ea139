"""Measurements shared by the benchmark scripts, so every target is timed
by the same definition."""

import statistics
import time


def sequential_calls(call, calls):
    """Make ``calls`` calls of ``call()`` one after another: calls/s, and
    the p50 and p99 latency in milliseconds."""
    latencies = []
    start = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        'calls_per_s': calls / elapsed,
        'p50_ms': statistics.median(latencies) * 1000,
        'p99_ms': latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }
