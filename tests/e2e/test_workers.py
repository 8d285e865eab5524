"""`edgerules serve --workers 2`: two worker processes on one port, one supervisor, one diskcache store.

The rate-limit budget is exact across the workers (the store is shared), one scrape or status request describes
the whole server, a killed worker is replaced without failing anything but its own in-flight requests, and
SIGTERM drains both workers (a slow request in flight still gets its answer) before the server exits 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.origins import Origins, start_origins
from tests.support.policies import ENV, bearer, write_policy
from tests.support.processes import VENV_BIN
from tests.support.proxy import Proxy, Response, http, start_command
from tests.support.ratelimits import assert_one_budget
from tests.support.shared_store import add_api_key, away_from_window_edge, poll_until

pytestmark = pytest.mark.e2e

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@dataclass
class Server:
    origins: Origins
    policy: Path
    edge: Proxy

    def status(self) -> dict:
        response = http("GET", f"{self.edge.url}/__edgerules/status")
        assert response.status == 200, response.body
        return response.json()

    def metrics(self) -> str:
        response = http("GET", f"{self.edge.url}/__edgerules/metrics")
        assert response.status == 200, response.body
        return response.body.decode()

    def worker_pids(self) -> dict[int, int]:
        return {w["index"]: w["pid"] for w in self.status()["workers"]}


def start_workers(policy: Path, workers: int = 2, *extra: str) -> Proxy:
    argv = [str(VENV_BIN / "edgerules"), "serve", "--policy", str(policy), "--env", "e2e"]
    argv += ["--listen", "127.0.0.1:0", "--workers", str(workers), *extra]
    return start_command(argv, env=ENV, name="serve-workers", ready_timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("workers")
    with start_origins(REGIONS) as origins:
        policy = write_policy(directory, {r: o.port for r, o in origins.items()})
        edge = start_workers(policy)
        try:
            server = Server(origins, policy, edge)
            # both workers up and publishing before the tests start
            poll_until(lambda: len(server.status().get("workers", [])), lambda n: n == 2, timeout=60)
            yield server
        finally:
            edge.stop()


def requests_total(text: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("edgerules_requests_total{")
    )


def test_one_rate_limit_budget_across_both_workers(server: Server) -> None:
    limit, sent = 20, 80
    key = add_api_key(server.policy, "workers-user", rate_limit=(limit, 3600))
    path = f"/api/v1/calls/workers-{uuid.uuid4().hex}"  # not cacheable: every 200 reaches an origin
    headers = {"Authorization": f"API-Key {key}", "CF-IPCountry": "US"}
    away_from_window_edge(3600)
    before = {w["pid"]: w["requests"] for w in server.status()["workers"]}
    with ThreadPoolExecutor(sent) as pool:
        responses = list(pool.map(lambda _: http("GET", f"{server.edge.url}{path}", headers), range(sent)))
    statuses = Counter(r.status for r in responses)
    assert statuses == {200: limit, 429: sent - limit}, statuses
    assert sum(origin.hits(path) for origin in server.origins.values()) == limit
    assert_one_budget(responses, limit)

    def served() -> dict[int, int]:
        return {w["pid"]: w["requests"] - before.get(w["pid"], 0) for w in server.status()["workers"]}

    per_worker = poll_until(served, lambda d: sum(d.values()) == sent, timeout=10)
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker  # both accepted


def test_one_scrape_and_one_status_describe_both_workers(server: Server) -> None:
    before = requests_total(server.metrics())
    sent = 40
    with ThreadPoolExecutor(20) as pool:
        responses = list(
            pool.map(
                lambda i: http("GET", f"{server.edge.url}/api/v1/calls/scrape-{i}", bearer(f"u{i}")),
                range(sent),
            )
        )
    assert Counter(r.status for r in responses) == {200: sent}
    # every scrape lands on one worker; the other's part is at most one publish interval old
    after = poll_until(lambda: requests_total(server.metrics()) - before, lambda n: n >= sent, timeout=10)
    assert after == sent
    text = server.metrics()
    assert re.search(r"^edgerules_workers 2$", text, re.M), text
    assert re.search(r"^# TYPE edgerules_requests_total counter$", text, re.M)
    assert len(re.findall(r"^# TYPE edgerules_requests_total ", text, re.M)) == 1  # one family, summed

    status = server.status()
    workers = status["workers"]
    assert sorted(w["index"] for w in workers) == [0, 1]
    assert len({w["pid"] for w in workers}) == 2
    assert {w["policy"]["version"] for w in workers} == {status["policy"]["version"]}
    assert all(set(w["regions"]) == set(REGIONS) for w in workers)
    assert sum(w["self"] for w in workers) == 1
    assert status["supervisor"]["workers"] == 2


def test_sighup_and_admin_reload_reach_every_worker(server: Server) -> None:
    def reloads() -> list[int]:
        return sorted(w["reload"]["reloads"] for w in server.status()["workers"])

    start = reloads()
    os.kill(server.edge.pid, signal.SIGHUP)  # the supervisor
    poll_until(reloads, lambda r: all(a > b for a, b in zip(r, start, strict=True)), timeout=15)
    start = reloads()
    answer = http("POST", f"{server.edge.url}/__edgerules/reload")
    assert answer.status == 200, answer.body
    assert answer.json()["workers_signalled"] is True
    poll_until(reloads, lambda r: all(a > b for a, b in zip(r, start, strict=True)), timeout=15)


def test_a_killed_worker_is_restarted_and_only_its_in_flight_requests_fail(server: Server) -> None:
    pids = server.worker_pids()
    clients, stop = 4, threading.Event()
    outcomes: list[int | str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                status: int | str = http(
                    "GET", f"{server.edge.url}/api/v1/calls/kill-{n}-{i}", bearer(f"k{n}"), timeout=10
                ).status
            except OSError as exc:
                status = type(exc).__name__
            with lock:
                outcomes.append(status)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        os.kill(pids[0], signal.SIGKILL)
        replaced = poll_until(server.worker_pids, lambda p: p.get(0) not in (None, pids[0]), timeout=60)
        time.sleep(1.5)  # the new worker serves alongside the old one
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert replaced[1] == pids[1]
    counts = Counter(outcomes)
    failures = sum(n for status, n in counts.items() if status != 200)
    assert failures <= clients, counts  # at most the one request each client had in flight on the dead worker
    assert counts[200] > 20, counts
    assert f"worker 0 (pid {pids[0]}) exited with signal 9; restarting it" in server.edge.output()
    assert server.status()["supervisor"]["restarts"] == 1
    assert re.search(r"^edgerules_worker_restarts_total 1$", server.metrics(), re.M)


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    with start_origins(REGIONS) as origins:
        policy = write_policy(tmp_path, {r: o.port for r, o in origins.items()})
        edge = start_workers(policy)
        try:
            slow: list[Response] = []
            headers = {**bearer("slow"), "X-Test-Delay": "1.2"}
            threads = [
                threading.Thread(
                    target=lambda i=i: slow.append(http("GET", f"{edge.url}/api/v1/calls/slow-{i}", headers))
                )
                for i in range(4)
            ]
            for thread in threads:
                thread.start()

            def arrived() -> int:
                return sum(o.hits(f"/api/v1/calls/slow-{i}") for o in origins.values() for i in range(4))

            poll_until(arrived, lambda n: n >= 4, timeout=10)
            os.kill(edge.pid, signal.SIGTERM)  # the supervisor only: it passes SIGTERM on to the workers
            for thread in threads:
                thread.join(30)
            assert [r.status for r in slow] == [200] * 4
            code = poll_until(lambda: edge.process.returncode, lambda c: c is not None, timeout=30)
            assert code == 0, edge.output()
            assert "all workers drained and exited" in edge.output()
            with pytest.raises(OSError):
                http("GET", f"{edge.url}/__edgerules/health", timeout=2)
        finally:
            edge.stop()


def test_a_worker_that_cannot_start_stops_the_server_with_exit_1(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, dict.fromkeys(REGIONS, 9))
    argv = [str(VENV_BIN / "edgerules"), "serve", "--policy", str(policy), "--env", "e2e"]
    argv += ["--listen", "127.0.0.1:0", "--workers", "2", "--set", "no_such_option=1"]
    done = subprocess.run(argv, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed to start (exit code 1); stopping" in done.stdout
