"""What the kernel's scheduler says about the calling thread: how long it was runnable but waited for a
CPU. The server reads it in its event loop's thread (``/socket-metrics`` ``runqueue_wait_s``), the load
generator in its own (sample rows ``gen_runqueue_wait_seconds:<worker>``): on a machine whose cores are
shared by the nodes, Redis and the generator, that wait is time the CPU counters do not show."""

from __future__ import annotations


def thread_runqueue_wait_s() -> float:
    """Seconds the calling thread was runnable but waited for a CPU (``/proc/thread-self/schedstat``,
    its second field). 0 where the kernel does not keep it (non-Linux, schedstats off)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0
