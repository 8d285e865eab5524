"""The edge in mitmweb: requests through `mitmweb -s addon.py`, the flows read back from mitmweb's own HTTP API
(`/flows`, as its UI reads them) carry the decision summary and the marked state; the README's way of looking at
the edge's decisions in mitmweb works as written."""

from __future__ import annotations

import io
import json
import os
import secrets
import urllib.request

import pytest
from mitmproxy import io as mio

from tests.support.origins import start_origins
from tests.support.policies import ENV, bearer, write_policy
from tests.support.ports import free_port, wait_for_port
from tests.support.processes import VENV_BIN
from tests.support.proxy import RUNNER_VARIABLE, http, start_command

pytestmark = [
    pytest.mark.e2e,
    # mitmproxy's own front ends: the same commands under either runner (`make test` runs e2e twice)
    pytest.mark.skipif(os.environ.get(RUNNER_VARIABLE) == "serve", reason="mitmproxy front ends only"),
]

REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


def web_get(port: int, path: str, password: str, *, raw: bool = False):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {password}"}
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        body = response.read()
    return body if raw else json.loads(body)


def test_mitmweb_shows_what_the_edge_decided(tmp_path):
    origins = start_origins(list(REGIONS))
    try:
        policy = write_policy(tmp_path, {name: origin.port for name, origin in origins.items()})
        web_port, password = free_port(), secrets.token_hex(12)
        argv = [
            str(VENV_BIN / "mitmweb"),
            "--listen-host", "127.0.0.1",
            "-p", "0",
            "--mode", "reverse:http://127.0.0.1:9",
            "--set", "connection_strategy=lazy",
            "-s", "addon.py",
            "--set", f"edgerules_policy={policy}",
            "--set", "edgerules_env=e2e",
            "--set", "web_open_browser=false",
            "--set", "web_host=127.0.0.1",
            "--set", f"web_port={web_port}",
            "--set", f"web_password={password}",
            # the README's columns: the edge's summary in the flow list
            "--set", "web_columns=icon", "--set", "web_columns=method", "--set", "web_columns=path",
            "--set", "web_columns=status", "--set", "web_columns=comment",
        ]  # fmt: skip
        proxy = start_command(argv, env=ENV, name="mitmweb", ready_timeout=60)
        try:
            wait_for_port(web_port, timeout=30)
            sent = [
                ("/health", {"CF-IPCountry": "US"}),
                ("/health", {"CF-IPCountry": "US"}),
                ("/api/v1/calls/1", {"CF-IPCountry": "GB", **bearer("alice")}),
                ("/api/v1/calls/2", {"CF-IPCountry": "US"}),
            ]
            assert [http("GET", proxy.url + path, headers).status for path, headers in sent] == [
                200,
                200,
                200,
                401,
            ]
            flows = web_get(web_port, "/flows", password)
            columns = web_get(web_port, "/options", password)["web_columns"]["value"]
            saved = web_get(web_port, "/flows/dump", password, raw=True)  # what mitmweb's File > Save writes
        finally:
            proxy.stop()
        assert "Addon error" not in proxy.output(), proxy.output()
    finally:
        origins.stop_all()

    assert columns == ["icon", "method", "path", "status", "comment"]
    by_path = [(f["request"]["path"], f["comment"], f["marked"]) for f in flows]
    assert [path for path, _, _ in by_path] == [path for path, _ in sent], by_path
    (_, miss, miss_mark), (_, hit, hit_mark), (_, eu, eu_mark), (_, refused, refused_mark) = by_path
    assert miss.startswith("edge: us-east-1 primary") and "cache MISS" in miss and not miss_mark
    assert "cache HIT" in hit and not hit_mark
    assert eu.startswith("edge: eu-west-1 primary") and "auth jwt" in eu and not eu_mark
    assert (
        refused.startswith("edge error: 401 unauthorized") and refused_mark
    )  # mitmweb shows the marker emoji
    # the flow list names the origin that answered, not the `--mode reverse:` placeholder
    forwarded = flows[0]["request"]
    assert (forwarded["host"], forwarded["port"]) == ("127.0.0.1", origins["us-east-1"].port)

    # mitmweb's save: plain flows, read back with the decision on them
    reread = list(mio.FlowReader(io.BytesIO(saved)).stream())
    assert [f.comment for f in reread] == [f["comment"] for f in flows]
    assert reread[3].marked and reread[0].metadata["edgerules"]["region"] == "us-east-1"
