"""Hot reload through a real mitmdump under continuous traffic: good edits apply with no failed request, broken
edits change nothing for clients and are reported with file:line, health state outlives a reload, and
`edgerules reload` asks the edge and reports the answer."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest

from edgerules.tools.cli import main as cli_main
from tests.support.origins import start_origins
from tests.support.policies import ENV, JWT_SECRET, write_policy
from tests.support.proxy import http, start_mitmdump

pytestmark = pytest.mark.e2e

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
TOKEN = jwt.encode(
    {"sub": "reload-test", "role": "member", "permissions": ["calls:read"], "exp": 4102444800},
    JWT_SECRET,
    algorithm="HS256",
)
US = {"CF-IPCountry": "US", "Authorization": f"Bearer {TOKEN}"}


class Edge:
    def __init__(self, proxy, origins, path: Path) -> None:
        self.proxy = proxy
        self.origins = origins
        self.path = path
        self.base: dict[str, Any] = json.loads(path.read_text())

    def write_text(self, text: str) -> None:
        """Atomic replace: the watcher never sees a half-written file."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def write(self, mutate: Callable[[dict[str, Any]], None] = lambda data: None) -> str:
        data = copy.deepcopy(self.base)
        mutate(data)
        text = json.dumps(data, indent=1)
        self.write_text(text)
        return text

    def status(self) -> dict[str, Any]:
        response = http("GET", f"{self.proxy.url}/__edgerules/status")
        assert response.status == 200, response.body
        return response.json()

    def region_for_us(self) -> str:
        response = http("GET", f"{self.proxy.url}/api/v1/calls/1", US)
        assert response.status == 200, response.body
        return response.json()["region"]

    def wait_reload(self, before: dict[str, Any], key: str, timeout: float = 5.0) -> dict[str, Any]:
        """Wait until the reload counter `key` ("reloads" or "failures") went up since `before`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status["reload"][key] > before["reload"][key]:
                return status
            time.sleep(0.05)
        raise AssertionError(f"no reload ({key}) within {timeout}s: {self.status()['reload']}")


def set_us(route: list[str]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data["routing"]["countries"]["US"] = route

    return mutate


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> Iterator[Edge]:
    origins = start_origins(list(REGIONS))
    directory = tmp_path_factory.mktemp("reload")
    path = write_policy(directory, {name: origin.port for name, origin in origins.items()})
    try:
        proxy = start_mitmdump(
            options={
                "edgerules_policy": str(path),
                "edgerules_env": "e2e",
                "edgerules_reload_interval": 0.2,
            },
            env=ENV,
        )
        try:
            yield Edge(proxy, origins, path)
        finally:
            proxy.stop()
    finally:
        origins.stop_all()


@pytest.fixture
def fresh(edge: Edge) -> Edge:
    """Every test starts from the written policy (US -> us-east-1 first) and all origins healthy."""
    for origin in edge.origins.values():
        origin.set_healthy(True)
    deadline = time.monotonic() + 10
    while not all(r["healthy"] for r in edge.status()["regions"].values()) and time.monotonic() < deadline:
        time.sleep(0.1)  # a region an earlier test took down comes back at its next probe
    before = edge.status()
    assert all(r["healthy"] for r in before["regions"].values()), before["regions"]
    if edge.region_for_us() != "us-east-1" or before["reload"]["last_error"]:
        edge.write(set_us(["us-east-1", "us-west-2", "eu-west-1"]))
        edge.wait_reload(before, "reloads")
    assert edge.region_for_us() == "us-east-1"
    return edge


@contextmanager
def traffic(edge: Edge, max_seconds: float = 20.0) -> Iterator[list[tuple[int, str | None]]]:
    """A background client sending US requests in a loop until the block ends (or `max_seconds` pass);
    yields the live list of (status, region) it saw."""
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def loop() -> None:
        deadline = time.monotonic() + max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                response = http("GET", f"{edge.proxy.url}/api/v1/calls/1", US, timeout=5)
                region = response.json().get("region") if response.status == 200 else None
                seen.append((response.status, region))
            except OSError as exc:
                seen.append((0, f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=loop, name="reload-traffic", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def wait_for_region(seen: list[tuple[int, str | None]], region: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    start = len(seen)
    while time.monotonic() < deadline:
        if any(r == region for _, r in seen[start:]):
            return
        time.sleep(0.02)
    raise AssertionError(f"no request reached {region} within {timeout}s; last: {seen[-5:]}")


def reload_counter(edge: Edge, result: str) -> float:
    text = http("GET", f"{edge.proxy.url}/__edgerules/metrics").body.decode()
    match = re.search(rf'^edgerules_policy_reloads_total\{{result="{result}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def line_of(text: str, needle: str) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


# ------------------------------------------------------------------------------------------------------ tests


def test_good_edit_takes_effect_within_2s_with_no_failed_request(fresh: Edge):
    with traffic(fresh) as seen:
        wait_for_region(seen, "us-east-1", timeout=5)
        fresh.write(set_us(["eu-west-1", "us-east-1", "us-west-2"]))
        wait_for_region(seen, "eu-west-1", timeout=2.0)
        time.sleep(0.3)  # a few more requests on the new policy
    assert seen and all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200]
    regions = [region for _, region in seen]
    switch = regions.index("eu-west-1")
    # One reference swap: before it the old route, after it only the new one (no flapping between policies).
    assert set(regions[:switch]) == {"us-east-1"}
    assert set(regions[switch:]) == {"eu-west-1"}
    assert fresh.status()["reload"]["last_error"] is None


def test_broken_edits_change_nothing_and_are_reported_then_fixing_resumes(fresh: Edge):
    failures_before = reload_counter(fresh, "failure")
    with traffic(fresh) as seen:
        wait_for_region(seen, "us-east-1", timeout=5)

        # 1. Not even YAML.
        before = fresh.status()
        fresh.write_text('{"version": 1,\n "name": [unclosed\n')
        status = fresh.wait_reload(before, "failures")
        error = status["reload"]["last_error"]
        assert re.match(rf"{re.escape(str(fresh.path))}:\d+:\d+: ", error), error
        assert status["policy"]["name"] == "aybiza"

        # 2. Valid YAML, but the schema says a country maps to a list of regions.
        before = status
        text = fresh.write(set_us("eu-west-1"))  # type: ignore[arg-type]
        status = fresh.wait_reload(before, "failures")
        error = status["reload"]["last_error"]
        line = line_of(text, '"US": "eu-west-1"')
        assert error.startswith(f"{fresh.path}:{line}:"), error
        assert status["reload"]["reloads"] == before["reload"]["reloads"]

        # The failure is counted for Prometheus as well.
        assert reload_counter(fresh, "failure") >= failures_before + 2

        # 3. Fixed: reloads resume and the edit applies.
        before = status
        fresh.write(set_us(["us-west-2", "us-east-1", "eu-west-1"]))
        status = fresh.wait_reload(before, "reloads")
        assert status["reload"]["last_error"] is None
        wait_for_region(seen, "us-west-2", timeout=2.0)
    assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200]
    regions = [region for _, region in seen]
    switch = regions.index("us-west-2")
    assert set(regions[:switch]) == {"us-east-1"}, "a broken file must not change routing"
    assert set(regions[switch:]) == {"us-west-2"}
    assert reload_counter(fresh, "success") >= 1


def test_health_state_survives_a_reload(fresh: Edge):
    try:
        _health_survives_reload(fresh)
    finally:
        fresh.origins["us-east-1"].set_healthy(True)


def _health_survives_reload(fresh: Edge) -> None:
    fresh.origins["us-east-1"].set_healthy(False)
    deadline = time.monotonic() + 10
    while fresh.status()["regions"]["us-east-1"]["healthy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fresh.status()["regions"]["us-east-1"]["healthy"] is False
    assert fresh.region_for_us() == "us-west-2"

    # A content change (so the reload really installs a new policy), applied through `edgerules reload`.
    fresh.write(lambda data: data.__setitem__("description", "reloaded while us-east-1 is down"))
    out = io.StringIO()
    assert cli_main(["reload", "--admin-url", fresh.proxy.url], out=out) == 0, out.getvalue()
    assert out.getvalue().startswith("reloaded: policy version")

    status = fresh.status()
    assert status["regions"]["us-east-1"]["healthy"] is False  # not reset to the optimistic default
    assert fresh.region_for_us() == "us-west-2"


def test_reload_command_reports_the_failure_with_file_and_line(fresh: Edge):
    text = fresh.write(lambda data: data["routing"].__setitem__("retries", "many"))
    out = io.StringIO()
    assert cli_main(["reload", "--admin-url", fresh.proxy.url], out=out) == 1
    report = out.getvalue()
    assert report.startswith("reload failed, still serving version"), report
    line = line_of(text, '"retries": "many"')
    assert f"{fresh.path}:{line}:" in report
    assert fresh.region_for_us() == "us-east-1"


def test_reload_command_when_no_edge_is_listening(tmp_path):
    from tests.support.ports import free_port

    port = free_port()
    assert cli_main(["reload", "--admin-url", f"http://127.0.0.1:{port}", "--timeout", "2"]) == 1
