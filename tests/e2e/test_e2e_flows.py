"""The edge's flows stay plain mitmproxy flows: `mitmdump -s addon.py -w FILE` records every flow the edge handled
(the ones it answered itself too), mitmproxy's `FlowReader` reads them back, and `edgerules replay` reads the file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from mitmproxy import flowfilter, io
from mitmproxy import http as mhttp

from tests.support.origins import start_origins
from tests.support.policies import ENV, bearer, write_policy
from tests.support.processes import VENV_BIN
from tests.support.proxy import RUNNER_VARIABLE, http, start_mitmdump

pytestmark = [
    pytest.mark.e2e,
    # mitmproxy's own front ends: the same commands under either runner (`make test` runs e2e twice)
    pytest.mark.skipif(os.environ.get(RUNNER_VARIABLE) == "serve", reason="mitmproxy front ends only"),
]

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")

# (method, path, headers, status the edge answers)
REQUESTS = [
    ("GET", "/health", {"CF-IPCountry": "US"}, 200),  # forwarded
    ("GET", "/health", {"CF-IPCountry": "US"}, 200),  # answered from the cache
    ("GET", "/api/v1/calls/1", {"CF-IPCountry": "GB", **bearer("alice")}, 200),  # forwarded, authenticated
    ("GET", "/api/v1/calls/2", {"CF-IPCountry": "US"}, 401),  # refused by the edge
    ("GET", "/admin/secrets", {"CF-IPCountry": "US"}, 400),  # refused by the edge
    ("GET", "/__edgerules/health", {}, 200),  # admin endpoint
]


def read_flows(path: Path) -> list[mhttp.HTTPFlow]:
    with open(path, "rb") as handle:
        return list(io.FlowReader(handle).stream())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The edge under `mitmdump -w`, the requests above sent through it; the file once mitmdump stopped."""
    directory = tmp_path_factory.mktemp("record")
    origins = start_origins(list(REGIONS))
    out = directory / "recorded.flows"
    try:
        policy = write_policy(directory, {name: origin.port for name, origin in origins.items()})
        options = {"edgerules_policy": str(policy), "edgerules_env": "e2e"}
        proxy = start_mitmdump(options=options, env=ENV, extra_args=["-w", str(out)])
        try:
            statuses = [http(m, proxy.url + path, headers).status for m, path, headers, _ in REQUESTS]
        finally:
            proxy.stop()
        yield out, statuses, proxy.output(), origins, policy
    finally:
        origins.stop_all()


def test_every_flow_the_edge_handled_is_recorded(recorded):
    out, statuses, output, *_ = recorded
    assert statuses == [status for *_, status in REQUESTS]
    assert "Addon error" not in output and "cannot pickle" not in output, output
    flows = read_flows(out)
    assert [(f.request.method, f.request.path) for f in flows] == [(m, p) for m, p, _, _ in REQUESTS]
    assert [f.response.status_code for f in flows] == statuses


def test_recorded_flows_hold_plain_data_only(recorded):
    out, *_ = recorded
    for flow in read_flows(out):
        state = flow.get_state()
        assert _plain(state["metadata"]), state["metadata"]
        copy = flow.copy()  # what mitmproxy's replay and mitmweb's duplicate do
        assert copy.request.path == flow.request.path


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool | bytes)


def test_each_flow_shows_the_edges_decision(recorded):
    out, _, _, origins, _ = recorded
    forwarded, hit, _, refused, not_allowed, admin = read_flows(out)

    assert forwarded.comment.startswith("edge: us-east-1 primary")
    assert "cache MISS" in forwarded.comment and "auth public" in forwarded.comment
    assert "routing us-east-1 @ policy.yaml:" in forwarded.comment  # the rule and its file:line
    # the request names the origin the edge really called, not the `--mode reverse:` placeholder
    assert (forwarded.request.host, forwarded.request.port) == ("127.0.0.1", origins["us-east-1"].port)
    decision = forwarded.metadata["edgerules"]
    assert decision["origin"] == f"http://127.0.0.1:{origins['us-east-1'].port}"
    assert decision["region"] == "us-east-1" and decision["failover"][0] == "us-east-1"
    assert decision["client"]["port"] != origins["us-east-1"].port  # what the client asked for is kept
    assert any(e["phase"] == "routing" and e["source"] for e in decision["trace"])
    assert not forwarded.marked

    assert "cache HIT" in hit.comment and not hit.marked
    assert "| cache health @ policy.yaml:" in hit.comment  # the cache rule answered, not a header rule

    assert refused.comment.startswith("edge error: 401 unauthorized")
    assert "auth failed:missing" in refused.comment and "@ policy.yaml:" in refused.comment
    assert refused.marked == ":no_entry:"
    assert refused.metadata["edgerules"]["decided_by"]["phase"] == "auth"
    assert not_allowed.comment.startswith("edge error: 400 path_not_allowed") and not_allowed.marked
    assert admin.comment == "edge: admin /__edgerules/health" and not admin.marked


def test_the_documented_filters_select_the_flows(recorded):
    out, *_ = recorded
    flows = read_flows(out)

    def matching(expression: str) -> list[str]:
        match = flowfilter.parse(expression)
        return [f.request.path for f in flows if match(f)]

    assert matching("~comment HIT") == ["/health"]
    assert matching("~marked") == ["/api/v1/calls/2", "/admin/secrets"]
    assert matching('~comment "edge error"') == ["/api/v1/calls/2", "/admin/secrets"]
    assert matching("~comment us-east-1") == ["/health"]


def replay_cli(flows: Path, old: Path, new: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [str(VENV_BIN / "edgerules"), "replay", str(flows), "--old", str(old), "--new", str(new)]
    return subprocess.run(
        [*argv, "--env", "e2e", *extra], env={**ENV, "PATH": ""}, capture_output=True, text=True, timeout=120
    )


def test_what_mitmdump_recorded_gates_a_policy_change(recorded, tmp_path):
    out, _, _, _, policy = recorded
    same = replay_cli(out, policy, policy, "--fail-on-change")
    assert same.returncode == 0, same.stderr
    # six flows recorded; the admin endpoint's is not a policy decision
    assert same.stdout.startswith("replayed 5 requests: 0 changed, 5 unchanged"), same.stdout
    assert "skipped 1 flows: 1 edge admin endpoint" in same.stdout

    data = json.loads(policy.read_text())
    data["environments"]["e2e"]["routing"]["countries"] = {"US": ["eu-west-1", "us-east-1", "us-west-2"]}
    moved = tmp_path / "moved.yaml"
    moved.write_text(json.dumps(data))
    changed = replay_cli(out, policy, moved, "--fail-on-change", "--format", "json")
    assert changed.returncode == 1, changed.stderr
    report = json.loads(changed.stdout)
    # the US requests the edge forwarded (the 401 and 400 are refused either way)
    assert [c["path"] for c in report["changes"]] == ["/health", "/health"]
    assert report["changes"][0]["changes"]["region"] == {"old": "us-east-1", "new": "eu-west-1"}


def test_an_empty_recording_fails_the_gate(recorded, tmp_path):
    *_, policy = recorded
    empty = tmp_path / "empty.flows"
    empty.write_bytes(b"")
    result = replay_cli(empty, policy, policy, "--fail-on-change")
    assert result.returncode == 2
    assert "holds no flows" in result.stderr


def test_mitmproxy_replays_the_recorded_flows_through_the_edge(recorded, tmp_path):
    """mitmproxy's own client replay (`mitmdump -C`, the console's `r`) on the recorded file: every request is
    decided by the edge again, and the replayed flows can be saved too."""
    out, statuses, _, _, policy = recorded
    again = tmp_path / "replayed.flows"
    argv = [str(VENV_BIN / "mitmdump"), "-n", "-C", str(out), "-s", "addon.py", "-w", str(again)]
    argv += ["--set", f"edgerules_policy={policy}", "--set", "edgerules_env=e2e"]
    result = subprocess.run(argv, env={**ENV, "PATH": ""}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Addon error" not in result.stdout and "Traceback" not in result.stdout, result.stdout
    flows = read_flows(again)
    assert [f.is_replay for f in flows] == ["request"] * len(REQUESTS)
    assert [f.response.status_code for f in flows] == statuses
    assert [bool(f.marked) for f in flows] == [s >= 400 for s in statuses]
    assert all(f.comment.startswith("edge") for f in flows)
