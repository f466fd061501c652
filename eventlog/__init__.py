"""The run format every part of the lab shares: schema, manifest, writer, reader, projections, claims."""

from .claims import SEED_CLAIMS, Claim, check_claims
from .manifest import ManifestError, create_run, finish_run, read_manifest, run_status, update_manifest
from .projections import (
    SLO,
    WARMUP_RULE,
    benchmark_row,
    compare,
    max_stable,
    max_stable_throughput,
    percentile,
    step_table,
    steps,
    timeseries,
    window_stats,
)
from .reader import ForeignPartWarning, Run, SkippedPartWarning, TornPartWarning, read_events, read_run
from .schema import COLUMNS, KINDS, SCHEMA, SCHEMA_VERSION
from .writer import EventWriter

__all__ = [
    "COLUMNS",
    "KINDS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SEED_CLAIMS",
    "SLO",
    "WARMUP_RULE",
    "Claim",
    "EventWriter",
    "ForeignPartWarning",
    "ManifestError",
    "Run",
    "SkippedPartWarning",
    "TornPartWarning",
    "benchmark_row",
    "check_claims",
    "compare",
    "create_run",
    "finish_run",
    "max_stable",
    "max_stable_throughput",
    "percentile",
    "read_events",
    "read_manifest",
    "read_run",
    "run_status",
    "step_table",
    "steps",
    "timeseries",
    "update_manifest",
    "window_stats",
]
