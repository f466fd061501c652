"""The Grafana dashboard of the reference server, built with grafana-foundation-sdk.

``python -m ops.grafana`` writes ``ops/grafana/socketio.json`` (``--check`` only compares). Every
query reads a metric of ``/socket-metrics?format=prometheus`` as scraped by
``ops/prometheus/prometheus.yml``; tests/test_ops_grafana.py checks each name against a live server.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, ReduceDataOptions, StackingConfig
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    GraphThresholdsStyleMode,
    StackingMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

OUT = Path(__file__).resolve().parent / "socketio.json"
UID = "caplab-socketio"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'instance=~"$instance"'  # every query: the instances picked in the dashboard's variable
WINDOW = "$__rate_interval"


def q(expr: str, legend: str = "", ref: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DS)


def quantile(phi: float, histogram: str, by: str = "instance") -> str:
    return f"histogram_quantile({phi}, sum by ({by}, le) (rate({histogram}_bucket{{{SEL}}}[{WINDOW}])))"


def steps(*pairs: tuple[float | None, str]) -> ThresholdsConfig:
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(v, c) for v, c in pairs])


def big(title: str, unit: str, *targets: Dataquery, description: str = "") -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .height(4)
        .span(4)
        .datasource(DS)
        .graph_mode(BigValueGraphMode.AREA)
        .color_mode(BigValueColorMode.VALUE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def chart(title: str, unit: str, *targets: Dataquery, description: str = "", span: int = 12) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .height(8)
        .span(span)
        .datasource(DS)
        .fill_opacity(10)
        .line_width(1)
    )
    for i, target in enumerate(targets):
        panel = panel.with_target(target.ref_id(chr(ord("A") + i)))
    return panel


def overview() -> list:
    return [
        big("Active connections", "short", q(f"sum(socketio_connections_active{{{SEL}}})", "connections")),
        big(
            "Connections / limit",
            "percentunit",
            q(f"max(socketio_connections_active{{{SEL}}} / socketio_limit_connections{{{SEL}}})", "busiest node"),
            description="Busiest node's connections over its SOCKET_MAX_CONNECTIONS; the alert fires above 90 %.",
        ).thresholds(steps((None, "green"), (0.75, "orange"), (0.9, "red"))),
        big(
            "Memory usage",
            "percent",
            q(f"max(socketio_memory_usage_percent{{{SEL}}})", "busiest node"),
            description="RSS as percent of SOCKET_MEMORY_THRESHOLD. Colours follow the default status ratios: "
            "degraded from 75 %, critical from 90 % (new connections refused on optimized).",
        ).thresholds(steps((None, "green"), (75, "orange"), (90, "red"))),
        big(
            "Latency p95",
            "s",
            q(quantile(0.95, "socketio_latency_seconds", by="job"), "p95"),
            description="Event receipt to reply or fan-out enqueued, from the histogram; the alert fires above 0.5 s.",
        ).thresholds(steps((None, "green"), (0.25, "orange"), (0.5, "red"))),
        big(
            "Events in / s",
            "reqps",
            q(f"sum(rate(socketio_events_received_total{{{SEL}}}[{WINDOW}]))", "in"),
        ),
        big(
            "Redis links down",
            "short",
            q(f"count(socketio_redis_up{{{SEL}}} == 0) or vector(0)", "down"),
            description="Nodes whose Redis pub/sub link is down (nodes started with REDIS_URL only). While down, "
            "events reach the node's own clients only.",
        ).thresholds(steps((None, "green"), (1, "red"))),
    ]


def traffic() -> list:
    return [
        chart(
            "Connections by company",
            "short",
            q(f"sum by (company) (socketio_company_connections{{{SEL}}})", "company {{company}}"),
            description="Live connections per company id, all picked nodes together.",
        )
        .stacking(StackingConfig().mode(StackingMode.NORMAL))
        .fill_opacity(30),
        chart(
            "Connections by node, and the limit",
            "short",
            q(f"socketio_connections_active{{{SEL}}}", "{{instance}}"),
            q(f"socketio_limit_connections{{{SEL}}}", "limit {{instance}}"),
            description="The limit is SOCKET_MAX_CONNECTIONS; refused beyond it when socketio_limits_enforced is 1.",
        ),
        chart(
            "Events per second, in and out",
            "reqps",
            q(f"sum by (event) (rate(socketio_events_received_total{{{SEL}}}[{WINDOW}]))", "in {{event}}"),
            q(f"sum(rate(socketio_events_delivered_total{{{SEL}}}[{WINDOW}]))", "out: deliveries"),
            q(f"sum(rate(socketio_packets_sent_total{{{SEL}}}[{WINDOW}]))", "out: packets"),
            description="Deliveries count event x recipient; packets are what reaches the transports "
            "(fewer with batching).",
        ),
        chart(
            "Latency p50 / p95 / p99",
            "s",
            q(quantile(0.5, "socketio_latency_seconds"), "p50 {{instance}}"),
            q(quantile(0.95, "socketio_latency_seconds"), "p95 {{instance}}"),
            q(quantile(0.99, "socketio_latency_seconds"), "p99 {{instance}}"),
            description="Interpolated within the histogram's buckets (0.5 ms to 10 s).",
        ),
        chart(
            "Refusals by reason",
            "reqps",
            q(f"sum by (reason) (rate(socketio_refusals_total{{{SEL}}}[{WINDOW}]))", "{{reason}}"),
            description="Connections and events refused: limits, rate limiting, bans, bad tokens, memory.",
        ),
        chart(
            "Errors by kind, disconnects by reason",
            "reqps",
            q(f"sum by (kind) (rate(socketio_errors_total{{{SEL}}}[{WINDOW}]))", "error {{kind}}"),
            q(f"sum by (reason) (rate(socketio_disconnects_total{{{SEL}}}[{WINDOW}]))", "disconnect {{reason}}"),
        ),
    ]


def node_health() -> list:
    return [
        chart(
            "Memory: RSS and threshold",
            "bytes",
            q(f"socketio_memory_rss_bytes{{{SEL}}}", "RSS {{instance}}"),
            q(f"socketio_memory_threshold_bytes{{{SEL}}}", "threshold {{instance}}"),
            description="SOCKET_MEMORY_THRESHOLD is 100 %; degraded from 75 %, critical from 90 % by default.",
        ),
        chart(
            "Memory status (% of threshold)",
            "percent",
            q(f"socketio_memory_usage_percent{{{SEL}}}", "{{instance}}"),
        )
        .thresholds(steps((None, "green"), (75, "orange"), (90, "red")))
        .thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.AREA)),
        chart(
            "Event-loop lag",
            "s",
            q(quantile(0.99, "socketio_event_loop_lag_hist_seconds"), "p99 {{instance}}"),
            q(f"socketio_event_loop_lag_seconds{{{SEL}}}", "last sample {{instance}}"),
            description="Sampled every 50 ms; the alert fires when p99 stays above 100 ms.",
        ),
        chart(
            "GC pauses",
            "s",
            q(quantile(0.99, "socketio_gc_pause_seconds", by="generation"), "p99 pause gen {{generation}}"),
            q(
                f"sum by (generation) (rate(socketio_gc_pause_seconds_sum{{{SEL}}}[{WINDOW}]))",
                "paused s/s gen {{generation}}",
            ),
            description="Garbage-collector pauses by generation: p99 of a pause, and seconds paused per second.",
        ),
        chart(
            "CPU",
            "percentunit",
            q(f"rate(process_cpu_seconds_total{{{SEL}}}[{WINDOW}])", "{{instance}}"),
            description="One core is 100 %: a node is one Python process.",
        ),
        chart(
            "Event-loop wake-ups per event",
            "short",
            q(
                f"rate(socketio_loop_wakeups_total{{{SEL}}}[{WINDOW}])"
                f" / sum without (event) (rate(socketio_events_received_total{{{SEL}}}[{WINDOW}]))",
                "{{instance}}",
            ),
            description="Times the loop woke from idle per inbound event. Near or above 1 the loop mostly idles "
            "between events and each pays a wake-up; as load rises events share them and CPU per event falls "
            "(issue 11: the capacity model's per-wake-up cost).",
        ),
        chart(
            "Event loop waiting for a CPU",
            "percentunit",
            q(f"rate(socketio_loop_runqueue_wait_seconds_total{{{SEL}}}[{WINDOW}])", "{{instance}}"),
            description="Share of the time the loop's thread was ready to run but other processes held the "
            "cores (/proc/thread-self/schedstat). Above a few % the node's latency holds its neighbours' work, "
            "which a capacity model that gives each node its own core does not predict.",
        ),
        chart(
            "Rooms",
            "short",
            q(f"socketio_rooms{{{SEL}}}", "{{instance}}"),
        ),
    ]


def work() -> list:
    return [
        chart(
            "Database queries and token cache",
            "reqps",
            q(f"sum(rate(socketio_db_queries_total{{{SEL}}}[{WINDOW}]))", "DB queries"),
            q(f"sum by (result) (rate(socketio_token_cache_total{{{SEL}}}[{WINDOW}]))", "token cache {{result}}"),
        ),
        chart(
            "Batch sizes",
            "short",
            q(
                f"sum(rate(socketio_batch_events_sum{{{SEL}}}[{WINDOW}]))"
                f" / sum(rate(socketio_batch_events_count{{{SEL}}}[{WINDOW}]))",
                "mean events per batch",
            ),
            q(quantile(0.95, "socketio_batch_events", by="job"), "p95 events per batch"),
            description="Optimized profile: events per batch sent to one recipient.",
        ),
        chart(
            "Batches per second",
            "reqps",
            q(f"sum(rate(socketio_batches_total{{{SEL}}}[{WINDOW}]))", "batches"),
            q(f"sum(rate(socketio_batches_compressed_total{{{SEL}}}[{WINDOW}]))", "compressed"),
        ),
        chart(
            "Batch delay p95",
            "s",
            q(quantile(0.95, "socketio_batch_delay_seconds"), "{{instance}}"),
            description="Wait of the oldest event in a batch before it is sent (flush_interval_ms bounds it).",
        ),
        chart(
            "Redis pub/sub",
            "short",
            q(f"socketio_redis_up{{{SEL}}}", "link up {{instance}}"),
            q(f"sum by (op) (rate(socketio_redis_errors_total{{{SEL}}}[{WINDOW}]))", "errors/s {{op}}"),
            q(f"sum(rate(socketio_redis_local_only_total{{{SEL}}}[{WINDOW}]))", "local-only emits/s"),
            description="Link 1 while subscribed. Local-only emits reached no other node (publish failed).",
        ),
    ]


def dashboard() -> Dashboard:
    board = (
        Dashboard("Socket.IO reference server")
        .uid(UID)
        .description("caplab reference server: connections, traffic, latency, memory, loop, GC, batching, Redis.")
        .tags(["socketio", "caplab"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            QueryVariable("instance")
            .label("Node")
            .datasource(DS)
            .query("label_values(socketio_connections_active, instance)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    sections = [
        ("Overview", overview()),
        ("Traffic", traffic()),
        ("Node health", node_health()),
        ("Work: database, batching, Redis", work()),
    ]
    for title, panels in sections:
        board = board.with_row(Row(title))
        for panel in panels:
            board = board.with_panel(panel)
    return board


def render() -> str:
    return json.dumps(dashboard().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def expressions(model: dict) -> list[str]:
    """Every PromQL expression in an exported dashboard: panel targets and query variables."""
    found = []

    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or [])

    for panel in panels(model.get("panels") or []):
        found += [t["expr"] for t in panel.get("targets") or [] if "expr" in t]
    for var in (model.get("templating") or {}).get("list") or []:
        if var.get("type") == "query":
            found.append(var["query"] if isinstance(var["query"], str) else var["query"]["query"])
    return found
