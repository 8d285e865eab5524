"""`edgerules replay`: recorded flows (tests/data/sample.flows, made by tests/data/make_flows.py) decided by two
policies; only the requests whose decision changed are reported."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from edgerules.policy.load import load_policy_file
from edgerules.tools.cli import main as cli_main
from edgerules.tools.replay import read_requests, render_text, replay
from tests.data.make_flows import REQUESTS
from tests.support.policies import JWT_SECRET, SEED

FLOWS = Path(__file__).resolve().parents[2] / "data" / "sample.flows"
US_LINE = "    US: [us-east-1, us-west-2, eu-west-1]"
ENVIRON = {"JWT_SECRET": JWT_SECRET}


def edited(tmp_path: Path, old: str, new: str, name: str = "new.yaml") -> Path:
    text = SEED.read_text()
    assert text.count(old) == 1, old
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


def policy(path: Path):
    return load_policy_file(path, "local", environ=ENVIRON).policy


def run_replay(old: Path, new: Path, **kw):
    return asyncio.run(replay(read_requests(str(FLOWS)), policy(old), policy(new), **kw))


@pytest.fixture
def jwt_env(monkeypatch):
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)


def test_sample_flows_hold_the_recorded_requests():
    requests = list(read_requests(str(FLOWS)))
    assert [(r.method, r.path, r.headers.get("cf-ipcountry")) for r in requests] == [
        (method, path, country) for method, path, country, _, _ in REQUESTS
    ]
    assert all(r.client_ip == "127.0.0.1" and r.timestamp > 0 for r in requests)


def test_identical_policies_report_nothing():
    report = run_replay(SEED, SEED)
    assert report.total == len(REQUESTS)
    assert report.changes == []
    assert render_text(report).startswith(f"replayed {len(REQUESTS)} requests: 0 changed")


def test_moving_a_country_reports_exactly_that_countrys_requests(tmp_path):
    new = edited(tmp_path, US_LINE, "    US: [eu-west-1, us-east-1, us-west-2]")
    report = run_replay(SEED, new)
    # Every US request the edge forwards (the fifth one is refused for lack of credentials, by both policies).
    us_forwarded = [i for i, (_, path, country, headers, _) in enumerate(REQUESTS, 1) if country == "US"][:4]
    assert [c.index for c in report.changes] == us_forwarded
    for change in report.changes:
        assert change.country == "US"
        assert change.fields["region"] == ("us-east-1", "eu-west-1")
        assert change.fields["failover"] == (
            "us-east-1 > us-west-2 > eu-west-1",
            "eu-west-1 > us-east-1 > us-west-2",
        )
        assert change.headers["x-cf-target-region"] == ("us-east-1", "eu-west-1")
        assert "routing_priority" not in change.fields  # still the primary, just another region
        assert any(e.phase == "routing" and "eu-west-1" in e.rule + e.detail for e in change.new_trace)


def test_secondary_reorder_is_a_change_even_when_the_primary_is_the_same(tmp_path):
    new = edited(tmp_path, US_LINE, "    US: [us-east-1, eu-west-1, us-west-2]")
    report = run_replay(SEED, new)
    assert {c.country for c in report.changes} == {"US"}
    assert all(set(c.fields) == {"failover"} for c in report.changes)
    # With the primary down, the new secondary takes the traffic.
    down = run_replay(SEED, new, down=["us-east-1"])
    us = [c for c in down.changes if c.country == "US"]
    assert us and all(c.fields["region"] == ("us-west-2", "eu-west-1") for c in us)
    assert all("routing_priority" not in c.fields for c in us)  # the secondary either way


def test_auth_change_reports_status_and_auth_outcome(tmp_path):
    new = edited(
        tmp_path,
        "    - {path: /health, methods: [GET, HEAD]}   # any other method on /health needs credentials\n  schemes:",
        "    - {path: /health, methods: [GET, HEAD]}\n    - prefix: /api/v1/analytics\n  schemes:",
    )
    report = run_replay(SEED, new)
    assert [(c.request.path, c.country) for c in report.changes] == [("/api/v1/analytics/daily", "US")]
    fields = report.changes[0].fields
    assert fields["outcome"] == ("answer unauthorized", "forward")
    assert fields["status"] == ("401", "-")
    assert fields["auth"][1] == "public"


def test_cli_fail_on_change_and_json(tmp_path, jwt_env):
    new = edited(tmp_path, US_LINE, "    US: [us-west-2, us-east-1, eu-west-1]")
    out = io.StringIO()
    argv = ["replay", str(FLOWS), "--old", str(SEED), "--new", str(new), "--env", "local"]
    assert cli_main([*argv, "--format", "json", "--fail-on-change"], out=out) == 1
    payload = json.loads(out.getvalue())
    assert payload["requests"] == len(REQUESTS)
    assert payload["changed"] == 4
    assert payload["by_field"]["region"] == 4
    assert {c["country"] for c in payload["changes"]} == {"US"}
    assert payload["changes"][0]["changes"]["region"] == {"old": "us-east-1", "new": "us-west-2"}

    out = io.StringIO()
    assert cli_main(argv, out=out) == 0  # changes alone do not fail without --fail-on-change
    text = out.getvalue()
    assert "4 changed, 16 unchanged" in text
    assert "region us-east-1 -> us-west-2" in text

    out = io.StringIO()
    same = [
        "replay",
        str(FLOWS),
        "--old",
        str(SEED),
        "--new",
        str(SEED),
        "--env",
        "local",
        "--fail-on-change",
    ]
    assert cli_main(same, out=out) == 0
    assert "0 changed" in out.getvalue()


def test_cli_rejects_a_file_that_is_not_a_flow_dump(tmp_path, capsys):
    bogus = tmp_path / "bogus.flows"
    bogus.write_text("GET / HTTP/1.1\r\n\r\n")
    argv = ["replay", str(bogus), "--old", str(SEED), "--new", str(SEED), "--env", "local"]
    assert cli_main(argv) == 2
    assert "not a mitmproxy flow file" in capsys.readouterr().err
    assert cli_main(["replay", str(tmp_path / "missing.flows"), *argv[2:]]) == 2


def test_cli_reports_a_broken_new_policy_with_file_and_line(tmp_path, capsys):
    new = edited(tmp_path, US_LINE, "    US: eu-west-1")
    argv = ["replay", str(FLOWS), "--old", str(SEED), "--new", str(new), "--env", "local"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    line = SEED.read_text().splitlines().index(US_LINE) + 1
    assert f"{new}:{line}:" in err


@pytest.mark.e2e
def test_make_flows_records_a_real_mitmdump_dump(tmp_path):
    from tests.data.make_flows import record

    out = record(tmp_path / "fresh.flows")
    requests = list(read_requests(str(out)))
    assert [(r.method, r.path) for r in requests] == [(m, p) for m, p, _, _, _ in REQUESTS]


# ---------------------------------------------------------------------------------------- a gate you can trust


def _write_flows(path: Path, flows) -> Path:
    from mitmproxy import io as mio

    with open(path, "wb") as handle:
        writer = mio.FlowWriter(handle)
        for flow in flows:
            writer.add(flow)
    return path


def _replay_cli(flows: Path, capsys, *extra: str) -> tuple[int, str, str]:
    argv = ["replay", str(flows), "--old", str(SEED), "--new", str(SEED), "--env", "local", *extra]
    code = cli_main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_empty_flow_file_fails_the_gate(tmp_path, capsys, jwt_env):
    empty = tmp_path / "empty.flows"
    empty.write_bytes(b"")
    code, out, err = _replay_cli(empty, capsys, "--fail-on-change")
    assert code == 2
    assert "holds no flows (empty)" in err and "-w" in err
    assert out == ""


def test_a_truncated_flow_file_fails_the_gate(tmp_path, capsys, jwt_env):
    data = FLOWS.read_bytes()
    truncated = tmp_path / "truncated.flows"
    truncated.write_bytes(data[: len(data) // 2])
    code, out, err = _replay_cli(truncated, capsys)
    assert code == 2
    assert "truncated or corrupt after" in err and "nothing was replayed" in err
    assert out == ""


def test_a_file_without_http_flows_fails_the_gate(tmp_path, capsys, jwt_env):
    from mitmproxy.test import tflow

    tcp_only = _write_flows(tmp_path / "tcp.flows", [tflow.ttcpflow(), tflow.ttcpflow()])
    code, _, err = _replay_cli(tcp_only, capsys)
    assert code == 2
    assert "none of its 2 flow(s) is an HTTP request to replay" in err and "2 not HTTP (tcp)" in err


def test_skipped_flows_are_counted_with_their_reason(tmp_path, capsys, jwt_env):
    from mitmproxy import io as mio
    from mitmproxy.test import tflow

    with open(FLOWS, "rb") as handle:
        recorded = list(mio.FlowReader(handle).stream())
    admin = recorded[0].copy()
    admin.request.path = "/__edgerules/status"
    mixed = _write_flows(tmp_path / "mixed.flows", [*recorded, tflow.ttcpflow(), admin])
    code, out, _ = _replay_cli(mixed, capsys)
    assert code == 0
    assert out.startswith(f"replayed {len(REQUESTS)} requests: 0 changed")
    assert "skipped 2 flows: 1 not HTTP (tcp), 1 edge admin endpoint" in out
    code, out, _ = _replay_cli(mixed, capsys, "--format", "json")
    payload = json.loads(out)
    assert payload["skipped"] == 2
    assert payload["skipped_by_reason"] == {"not HTTP (tcp)": 1, "edge admin endpoint": 1}
