"""Server metrics: prometheus_client objects plus exact recent percentiles (HDR histogram).

Prometheus text comes from ``prometheus_client``; the JSON of ``/socket-metrics`` reads the same
objects, so the two never disagree.
"""

from __future__ import annotations

import resource
import time
from collections import deque
from collections.abc import Iterator

from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily

from eventlog.sched import thread_runqueue_wait_s

disable_created_metrics()  # the *_created series only add noise to every scrape

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.12, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def counter_value(counter: Counter) -> float:
    """Sum of a counter over all its label sets."""
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def by_label(counter: Counter) -> dict[str, float]:
    return {
        next(iter(s.labels.values())): s.value
        for m in counter.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


class LatencyWindow:
    """Latencies in microseconds over the last metrics interval (rotated), for exact percentiles."""

    def __init__(self) -> None:
        self.current = HdrHistogram(1, 60_000_000, 3)
        self.previous = HdrHistogram(1, 60_000_000, 3)

    def record(self, seconds: float) -> None:
        self.current.record_value(max(1, min(60_000_000, int(seconds * 1e6))))

    def rotate(self) -> None:
        self.previous, self.current = self.current, self.previous
        self.current.reset()

    def percentiles_ms(self) -> dict[str, float]:
        h = self.previous if self.previous.get_total_count() else self.current
        if not h.get_total_count():
            return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
        return {f"p{q}": round(h.get_value_at_percentile(q) / 1000.0, 3) for q in (50, 95, 99)}


def loop_wakeups() -> int:
    """The calling thread's voluntary context switches: read in the event loop's thread (the metrics
    handlers run there), the times the loop blocked in select/epoll with nothing ready and was woken.
    CPU per event falls with load because these wake-ups are shared by more events (issue 11)."""
    if not hasattr(resource, "RUSAGE_THREAD"):  # Linux only: elsewhere the count stays 0 (and is not fitted)
        return 0
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


def loop_runqueue_wait_s() -> float:
    """Seconds the event loop's thread was runnable but waited for a CPU (read in the loop's thread):
    the time its work waited for processes sharing the machine's cores. On a 2-core box that runs two
    nodes, Redis and the load generator it is what makes measured latencies exceed a model that gives
    each node a core of its own (issue 11)."""
    return thread_runqueue_wait_s()


class LoopWakeups:
    """``socketio_loop_wakeups_total`` and ``socketio_loop_runqueue_wait_seconds_total`` for Prometheus,
    read when scraped (in the loop's thread)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "socketio_loop_wakeups",
            "Event-loop wake-ups from idle (the loop thread's voluntary context switches)",
            value=loop_wakeups(),
        )
        yield CounterMetricFamily(
            "socketio_loop_runqueue_wait_seconds",
            "Time the event loop's thread was runnable but waited for a CPU (/proc/thread-self/schedstat)",
            value=loop_runqueue_wait_s(),
        )


class Metrics:
    """All counters, gauges and histograms of one server node."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        r.register(LoopWakeups())
        self.connections = Gauge("socketio_connections_active", "Active connections", registry=r)
        self.connections_by_company = Gauge(
            "socketio_company_connections", "Active connections per company", ["company"], registry=r
        )
        self.connects = Counter("socketio_connects", "Accepted connections", registry=r)
        self.disconnects = Counter("socketio_disconnects", "Disconnections", ["reason"], registry=r)
        self.refusals = Counter("socketio_refusals", "Refused connections and events", ["reason"], registry=r)
        self.errors = Counter("socketio_errors", "Bad input and handler failures", ["kind"], registry=r)
        self.events_in = Counter("socketio_events_received", "Events received", ["event"], registry=r)
        self.events_out = Counter("socketio_events_delivered", "Event deliveries (event x recipient)", registry=r)
        self.packets_out = Counter("socketio_packets_sent", "Socket.IO packets queued to transports", registry=r)
        self.handler_seconds = Counter("socketio_handler_seconds", "Time spent inside event handlers", registry=r)
        self.latency = Histogram(
            "socketio_latency_seconds",
            "Event receipt to reply or fan-out enqueued",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.db_queries = Counter("socketio_db_queries", "Database queries", registry=r)
        self.token_cache = Counter("socketio_token_cache", "Token cache lookups", ["result"], registry=r)
        self.batches = Counter("socketio_batches", "Batches sent (one per recipient)", registry=r)
        self.batches_compressed = Counter("socketio_batches_compressed", "Batches sent compressed", registry=r)
        self.batch_events = Histogram(
            "socketio_batch_events", "Events per batch", buckets=(1, 2, 5, 10, 20, 50, 100), registry=r
        )
        self.batch_delay = Histogram(
            "socketio_batch_delay_seconds", "Oldest event's wait in a batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.rss = Gauge("socketio_memory_rss_bytes", "Resident set size", registry=r)
        self.memory_pct = Gauge("socketio_memory_usage_percent", "RSS as percent of the threshold", registry=r)
        self.rooms = Gauge("socketio_rooms", "Rooms in the default namespace", registry=r)
        self.loop_lag = Gauge("socketio_event_loop_lag_seconds", "Last event-loop lag sample", registry=r)
        self.loop_lag_hist = Histogram(
            "socketio_event_loop_lag_hist_seconds", "Event-loop lag samples", buckets=LATENCY_BUCKETS, registry=r
        )
        self.gc_pause = Histogram(
            "socketio_gc_pause_seconds",
            "Garbage-collector pauses",
            ["generation"],
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=r,
        )
        self.cleanups = Counter("socketio_cleanup_freed", "Items freed by cleanup", ["kind"], registry=r)
        self.redis_errors = Counter("socketio_redis_errors", "Failed Redis operations", ["op"], registry=r)
        self.redis_messages = Counter(
            "socketio_redis_messages",
            "Room events published to Redis (op=publish) and heard from it (op=receive), for the model's costs",
            ["op"],
            registry=r,
        )
        self.redis_local_only = Counter(
            "socketio_redis_local_only", "Emits no other node received (publish failed or none subscribed)", registry=r
        )
        # configured limits, so alerts and dashboards divide by the limit in force, not a copied number
        self.limit_connections = Gauge(
            "socketio_limit_connections", "SOCKET_MAX_CONNECTIONS (refused beyond it when enforced)", registry=r
        )
        self.limit_company = Gauge(
            "socketio_limit_company_connections", "Connections allowed per company (when enforced)", registry=r
        )
        self.limits_enforced = Gauge("socketio_limits_enforced", "1 when connection limits are enforced", registry=r)
        self.memory_threshold = Gauge(
            "socketio_memory_threshold_bytes", "SOCKET_MEMORY_THRESHOLD: 100 % of the memory usage", registry=r
        )
        # registered by the Redis manager only: a node without REDIS_URL exports no link state
        self.redis_up = Gauge("socketio_redis_up", "1 while the Redis pub/sub link is subscribed", registry=None)
        self.recovery_bytes = Gauge("socketio_recovery_buffer_bytes", "Replay buffer memory (approximate)", registry=r)
        self.recovery_events = Gauge("socketio_recovery_buffer_events", "Deliveries held for replay", registry=r)
        self.recoveries = Counter("socketio_recoveries", "Room recovery requests by result", ["result"], registry=r)
        self.recovery_replayed = Counter("socketio_recovery_replayed", "Deliveries replayed on reconnect", registry=r)
        self.dashboard_clients = Gauge(
            "socketio_dashboard_clients", "Live /socket-dashboard clients (namespace /admin)", registry=r
        )
        self.window = LatencyWindow()
        self.started = time.time()
        self.rate_marks: deque[tuple[float, float]] = deque(maxlen=4)

    def set_limits(self, settings) -> None:
        self.limit_connections.set(settings.max_connections)
        self.limit_company.set(settings.max_per_company)
        self.limits_enforced.set(1 if settings.toggles.conn_limits else 0)
        self.memory_threshold.set(settings.memory_threshold)

    def set_companies(self, by_company: dict[int, int]) -> None:
        """Connections per company id, as of now (companies with none left drop out)."""
        self.connections_by_company.clear()
        for company, n in by_company.items():
            self.connections_by_company.labels(company=str(company)).set(n)

    def observe_latency(self, seconds: float) -> None:
        self.latency.observe(seconds)
        self.window.record(seconds)

    def events_per_second(self) -> float:
        """Inbound events per second over the last two rate marks (one per metrics interval)."""
        if len(self.rate_marks) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.rate_marks[-2], self.rate_marks[-1]
        return round((n1 - n0) / (t1 - t0), 2) if t1 > t0 else 0.0

    def tick(self) -> None:
        """Called once per metrics interval: rotate the latency window and mark the event count."""
        self.window.rotate()
        self.rate_marks.append((time.monotonic(), counter_value(self.events_in)))
