"""Audio streams and WebSockets: validated and routed like any request, then carried by mitmproxy itself."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.support.origins import start_origins
from tests.support.policies import ENV, bearer, write_policy
from tests.support.proxy import http, start_edge_process

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    origins = start_origins(["us-east-1", "us-west-2", "eu-west-1"])
    policy = write_policy(tmp_path_factory.mktemp("streams"), {n: o.port for n, o in origins.items()})
    proxy = start_edge_process(policy, environ=ENV)
    try:
        yield proxy, origins
    finally:
        proxy.stop()
        origins.stop_all()


def auth() -> dict[str, str]:
    return bearer("u", role="r", permissions=())


def test_audio_stream_is_routed_by_country_and_arrives_whole(edge):
    proxy, _ = edge
    response = http("GET", f"{proxy.url}/voice/stream", {"CF-IPCountry": "GB", **auth()}, timeout=20)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("audio/")
    assert len(response.body) == 20 * 4096
    assert response.headers["X-Origin-Region"] == "eu-west-1"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_audio_stream_without_credentials_never_reaches_origin(edge):
    proxy, origins = edge
    before = origins["us-east-1"].hits("/voice/stream")
    response = http("GET", f"{proxy.url}/voice/stream", {"CF-IPCountry": "US"})
    assert response.status == 401
    assert origins["us-east-1"].hits("/voice/stream") == before


def test_websocket_upgrade_is_authenticated_and_routed(edge):
    proxy, _ = edge

    async def talk(headers):
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{proxy.url}/voice/ws", headers=headers) as ws,
        ):
            await ws.send_str("hello")
            message = await ws.receive(timeout=10)
            return message.data

    assert asyncio.run(talk({"CF-IPCountry": "JP", **auth()})) == "us-west-2: hello"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        asyncio.run(talk({"CF-IPCountry": "JP"}))
    assert info.value.status == 401
