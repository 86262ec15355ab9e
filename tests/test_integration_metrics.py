"""
Loopback integration test of C{/metrics}: a real C{twistd gearman --http}
process, real Gearman traffic over raw sockets, scraped over real HTTP and
parsed with prometheus_client's parser. Every wait is bounded.
"""
from __future__ import annotations

import urllib.request
from typing import Any, Dict, FrozenSet, Iterator, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests._peers import freePort, txgearServer, waitForPort
from tests._rawclient import RawClient
from txgear._packet import PacketType as P

Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    httpPort = freePort()
    for proc in txgearServer(["--http", f"tcp:{httpPort}:interface=127.0.0.1"]):
        waitForPort(httpPort, timeout=15)
        proc.httpPort = httpPort
        yield proc


def scrape(port: int) -> Tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        contentType = response.headers["Content-Type"]
        body = response.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return contentType, samples


def test_scrapedOverHttp(server: Any) -> None:
    client = RawClient(server.port)
    worker = RawClient(server.port)
    try:
        worker.send(P.CAN_DO, b"itest-metrics")
        for _ in range(3):
            (handle,) = client.call(P.SUBMIT_JOB_BG, b"itest-metrics", b"", b"x",
                                    reply=P.JOB_CREATED)
        client.send(P.SUBMIT_JOB, b"itest-metrics", b"", b"y")
        client.expect(P.JOB_CREATED)
        for outcome in (P.WORK_COMPLETE, P.WORK_FAIL):
            handle = worker.call(P.GRAB_JOB_UNIQ, reply=P.JOB_ASSIGN_UNIQ)[0]
            worker.send(outcome, handle, *([b"r"] if outcome == P.WORK_COMPLETE else []))
        # A round trip: the server has handled everything before this answer.
        worker.call(P.ECHO_REQ, b"sync", reply=P.ECHO_RES)
        client.call(P.ECHO_REQ, b"sync", reply=P.ECHO_RES)

        contentType, samples = scrape(server.httpPort)
        assert contentType.startswith("text/plain; version=0.0.4")

        def value(name: str, **labels: str) -> float:
            return samples[(name, frozenset(labels.items()))]

        submitted = "gearman_function_jobs_submitted_total"
        assert value(submitted, function="itest-metrics", mode="background") == 3
        assert value(submitted, function="itest-metrics", mode="foreground") == 1
        finished = "gearman_function_jobs_finished_total"
        assert value(finished, function="itest-metrics", outcome="complete") == 1
        assert value(finished, function="itest-metrics", outcome="fail") == 1
        assert value("gearman_function_jobs_queued", function="itest-metrics",
                     priority="normal") == 2
        assert value("gearman_function_workers", function="itest-metrics") == 1
        assert value("gearman_connections", role="worker") >= 1
        assert value("gearman_packets_received_total", type="SUBMIT_JOB_BG") >= 3
        assert value("gearman_function_run_seconds_count", function="itest-metrics") == 2
        assert value("gearman_received_bytes_total") > 0
        assert value("gearman_sent_bytes_total") > 0
        assert value("process_resident_memory_bytes") > 0
        # The port serves only what it mounts.
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{server.httpPort}/nothing", timeout=10)
        assert error.value.code == 404
    finally:
        client.sock.close()
        worker.sock.close()
