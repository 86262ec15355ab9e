# -*- test-case-name: tests.test_web_metrics -*-
"""
C{/metrics}: the job server's counters and gauges in the Prometheus text
format.

Rendered on the reactor thread, from the server's own counters
(L{txgear.server._stats}) and the state's per-function counts, by a
prometheus_client custom collector and C{generate_latest}. (prometheus_client's
own Twisted resource collects in a thread pool, which would read the state
while the reactor changes it.) A scrape costs O(functions), never O(jobs):
the age of a function's oldest queued job is read from the heads of its
three priority queues.

Function names are label values: they are bytes on the wire, decoded as
UTF-8 with every backslash doubled and every byte that is not UTF-8 written
C{\\xNN} (so distinct names always give distinct labels); prometheus_client
then escapes quotes, backslashes and newlines as the text format requires.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, List, Tuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.web.resource import Resource
from twisted.web.server import Request

from txgear.server._stats import OUTCOMES, ROLES, Histogram, packetTypeName

#: The classic text format, which every Prometheus version reads.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_PRIORITIES = ("high", "normal", "low")  # indexes: txgear.jobs.Priority values


def functionLabel(name: bytes) -> str:
    """
    The label value of function C{name}: UTF-8 as it is, backslashes doubled,
    other bytes as C{\\xNN}. Distinct names give distinct values.
    """
    return name.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def _buckets(histogram: Histogram) -> List[Tuple[str, float]]:
    return [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]


class ServerCollector:
    """
    A prometheus_client collector of one job server's metrics (every name
    starts with C{gearman_}; see docs/operations.md).

    @param state: the server's L{txgear.server.JobServerState}.
    @param factory: its L{txgear.server.GearmanServerFactory} (bytes sent), or C{None}.
    @param clock: an C{IReactorTime} (the oldest queued job's age).
    """

    def __init__(self, state: Any, factory: Any, clock: Any) -> None:
        self.state = state
        self.factory = factory
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        # Registering must not collect (auto_describe is off): no names declared.
        return ()

    def collect(self) -> Iterator[Metric]:
        """Every metric, read now (O(functions))."""
        state = self.state
        stats = state.stats
        now = self.clock.seconds()
        functions = list(state.functions.values())

        yield GaugeMetricFamily("gearman_functions", "Functions the server knows now.",
                                value=len(functions))
        queued = GaugeMetricFamily("gearman_function_jobs_queued",
                                   "Jobs waiting for a worker, by function and priority.",
                                   labels=["function", "priority"])
        running = GaugeMetricFamily("gearman_function_jobs_running",
                                    "Jobs a worker runs now, by function.", labels=["function"])
        workers = GaugeMetricFamily("gearman_function_workers",
                                    "Connections registered for the function.",
                                    labels=["function"])
        oldest = GaugeMetricFamily("gearman_function_oldest_queued_job_age_seconds",
                                   "Seconds the function's longest-waiting queued job has "
                                   "waited (0 when none is queued).", labels=["function"])
        counted = []
        for function in functions:
            label = functionLabel(function.name)
            counts = function.priorityCounts
            for priority, name in enumerate(_PRIORITIES):
                queued.add_metric([label, name], counts[priority])
            running.add_metric([label], function.running)
            workers.add_metric([label], function.workers)
            since = state.oldestQueued(function)
            oldest.add_metric([label], max(0.0, now - since) if since is not None else 0.0)
            if function.stats is not None:
                counted.append((label, function.stats))
        yield queued
        yield running
        yield workers
        yield oldest

        for functionStats in stats.retired.values():
            counted.append((functionLabel(functionStats.name), functionStats))
        submitted = CounterMetricFamily("gearman_function_jobs_submitted",
                                        "Jobs created, by function and mode.",
                                        labels=["function", "mode"])
        finished = CounterMetricFamily("gearman_function_jobs_finished",
                                       "Jobs ended, by function and outcome.",
                                       labels=["function", "outcome"])
        wait = HistogramMetricFamily("gearman_function_queue_wait_seconds",
                                     "Seconds jobs waited in the queue before a worker took "
                                     "them.", labels=["function"])
        run = HistogramMetricFamily("gearman_function_run_seconds",
                                    "Seconds from a worker taking a job to its end or loss.",
                                    labels=["function"])
        for label, functionStats in counted:
            submitted.add_metric([label, "foreground"], functionStats.submitted[0])
            submitted.add_metric([label, "background"], functionStats.submitted[1])
            for outcome, count in zip(OUTCOMES, functionStats.finished):
                finished.add_metric([label, outcome], count)
            wait.add_metric([label], _buckets(functionStats.wait), functionStats.wait.sum)
            run.add_metric([label], _buckets(functionStats.run), functionStats.run.sum)
        yield submitted
        yield finished
        yield wait
        yield run

        connections = GaugeMetricFamily("gearman_connections", "Open connections, by role.",
                                        labels=["role"])
        for role, count in zip(ROLES, stats.connections):
            connections.add_metric([role], count)
        yield connections
        yield CounterMetricFamily("gearman_received_bytes", "Bytes received from peers.",
                                  value=stats.bytesIn)
        if self.factory is not None:
            yield CounterMetricFamily("gearman_sent_bytes", "Bytes written for peers.",
                                      value=self.factory.writer.written)
        packets = CounterMetricFamily("gearman_packets_received",
                                      "Requests received, by packet type (admin text lines "
                                      "as admin_text).", labels=["type"])
        for kind, count in enumerate(stats.packetsIn):
            typeName = packetTypeName(kind)
            if count and typeName is not None:
                packets.add_metric([typeName], count)
        yield packets
        errors = CounterMetricFamily("gearman_errors_sent", "ERROR packets sent, by code.",
                                     labels=["code"])
        for code, count in sorted(stats.errors.items()):
            errors.add_metric([code.decode("ascii", "backslashreplace")], count)
        yield errors
        commit = HistogramMetricFamily("gearman_store_commit_seconds",
                                       "Seconds the store took to make a batch of background "
                                       "jobs durable.")
        commit.add_metric([], _buckets(stats.storeCommit), stats.storeCommit.sum)
        yield commit
        dead = state.dead
        deadJobs = GaugeMetricFamily("gearman_function_dead_jobs",
                                     "Jobs in the dead set (background jobs that used up "
                                     "their attempts), by function.", labels=["function"])
        for name, count in sorted(dead.counts().items()):
            deadJobs.add_metric([functionLabel(name)], count)
        yield deadJobs
        dropped = CounterMetricFamily("gearman_dead_dropped",
                                      "Jobs dropped from the dead set by its limits, by "
                                      "limit (size, age).", labels=["limit"])
        dropped.add_metric(["size"], dead.droppedBySize)
        dropped.add_metric(["age"], dead.droppedByAge)
        yield dropped
        kept = state.kept
        yield GaugeMetricFamily("gearman_kept_results",
                                "Results of finished background jobs kept (keep:TTL), "
                                "unexpired, those recorded without their bytes included.",
                                value=len(kept))
        yield CounterMetricFamily("gearman_results_kept",
                                  "Results of background jobs kept with their bytes since start.",
                                  value=kept.added)
        yield CounterMetricFamily("gearman_results_not_kept",
                                  "Results recorded without their bytes since start (larger "
                                  "than --keep-max-size).", value=kept.tooLarge)
        removed = CounterMetricFamily("gearman_kept_results_removed",
                                      "Kept results removed since start, by reason (limit: "
                                      "--keep-max-results, expired: their TTL passed).",
                                      labels=["reason"])
        removed.add_metric(["limit"], kept.dropped)
        removed.add_metric(["expired"], kept.expired)
        yield removed
        yield CounterMetricFamily("gearman_idempotent_hits",
                                  "Background submissions answered with the handle of a kept "
                                  "result instead of running again (idempotent:yes).",
                                  value=state.idempotentHits)
        storeQueue = state.storeQueue
        yield GaugeMetricFamily("gearman_store_pending_jobs",
                                "Background jobs handed to the store and not yet durable.",
                                value=storeQueue.pending if storeQueue is not None else 0)
        if state.cluster is not None:
            yield from self._collectCluster(state.cluster)

    @staticmethod
    def _collectCluster(cluster: Any) -> Iterator[Metric]:
        """A cluster member's own counters, and the shared queue as of the last look."""
        yield GaugeMetricFamily("gearman_cluster_lease_valid",
                                "1 while this server holds a live cluster lease (by its clock).",
                                value=1 if cluster.membership.leaseValid() else 0)
        yield CounterMetricFamily("gearman_cluster_jobs_claimed",
                                  "Jobs this server claimed from the shared queue.",
                                  value=cluster.claimed)
        yield CounterMetricFamily("gearman_cluster_jobs_reclaimed",
                                  "Jobs of servers without a live lease this server returned "
                                  "to the shared queue.", value=cluster.reclaimed)
        yield CounterMetricFamily("gearman_cluster_jobs_dropped",
                                  "Jobs this server dropped because its lease was lost.",
                                  value=cluster.dropped)
        queued = GaugeMetricFamily("gearman_cluster_jobs_queued",
                                   "Jobs of the whole cluster queued for any server, by "
                                   "function (as of the previous scrape, at most 1 s old).",
                                   labels=["function"])
        claimed = GaugeMetricFamily("gearman_cluster_jobs_held",
                                    "Jobs of the whole cluster claimed by some server, by "
                                    "function (as of the previous scrape, at most 1 s old).",
                                    labels=["function"])
        for name, queuedCount, claimedCount in cluster.recentCounts():
            queued.add_metric([functionLabel(name)], queuedCount)
            claimed.add_metric([functionLabel(name)], claimedCount)
        yield queued
        yield claimed


def metricsRegistry(state: Any, factory: Any, clock: Any) -> CollectorRegistry:
    """
    A registry of the server's collector and of the process' own metrics
    (C{process_*}, where prometheus_client can read them: Linux C{/proc}).
    """
    from prometheus_client import PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(state, factory, clock))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """C{GET /metrics}: the registry rendered now, on the reactor thread."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        Resource.__init__(self)
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        body = generate_latest(self.registry)
        request.setHeader(b"content-type", CONTENT_TYPE)
        return body


__all__ = ["CONTENT_TYPE", "MetricsResource", "ServerCollector", "functionLabel",
           "metricsRegistry"]
