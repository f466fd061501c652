"""The event-log row schema shared by measured and simulated runs."""

from __future__ import annotations

import pyarrow as pa

# 1: the kinds up to "sample". 2: adds "recovered" (a missed delivery replayed at a reconnect, its
# latency from the original send time, kept apart from "push") and "recovery_fail" (a room whose
# missed deliveries could not be replayed; ``name`` is the server's reason). Kinds are only ever
# appended, so a version 1 part reads unchanged: it holds none of the new kinds.
SCHEMA_VERSION = 2

KINDS: tuple[str, ...] = (
    "connect_start",
    "connect_ok",
    "connect_fail",
    "disconnect",
    "send",
    "ack",
    "push",
    "timeout",
    "reject",
    "error",
    "sample",
    "recovered",
    "recovery_fail",
)
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}

# Sample rows of the generator's own CPU seconds, one series per worker: ``gen_cpu_seconds:<worker>``.
# (Runs written before this carried the worker id in ``conn`` under the bare name; both are read.)
GEN_CPU = "gen_cpu_seconds"


def gen_cpu_name(worker: int) -> str:
    return f"{GEN_CPU}:{worker}"


# and of the time its loop's thread waited for a CPU (eventlog.sched): ``gen_runqueue_wait_seconds:<worker>``
GEN_WAIT = "gen_runqueue_wait_seconds"


def gen_wait_name(worker: int) -> str:
    return f"{GEN_WAIT}:{worker}"


# column -> (arrow type, meaning)
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "t": (pa.float64(), "seconds since the run started (machine-wide monotonic clock)"),
    "kind": (pa.dictionary(pa.int8(), pa.string()), "row kind, one of KINDS"),
    "conn": (pa.int32(), "virtual connection id, -1 where none"),
    "node": (pa.int16(), "server node, -1 where none"),
    "name": (pa.dictionary(pa.int32(), pa.string()), "event name, or metric name for 'sample' rows"),
    "latency_s": (pa.float64(), "ack/push/recovered: from the intended send time; send: send lag; NaN elsewhere"),
    "bytes": (pa.int32(), "payload size"),
    "value": (
        pa.float64(),
        "sample value; on an event row of an aggregated model log (simulate.log), how many events it stands for; "
        "NaN elsewhere",
    ),
}
SCHEMA = pa.schema(
    [pa.field(name, typ) for name, (typ, _) in COLUMNS.items()],
    metadata={b"caplab.schema_version": str(SCHEMA_VERSION).encode()},
)
