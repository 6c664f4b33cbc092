"""Many nodes over Redis (issue 13) and the cluster routes, end to end against the real
binary with Python ``websockets`` clients and a real ``redis-server`` started per test
(``tests/cluster_fixtures.py``).

The memory-engine half runs first: ``/readyz``, ``/v1/nodes`` and ``/v1/disconnect`` on
one process.
"""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed

from conftest import wait_for
from test_push import API_KEY, PUSH_ENV, bearer, open_ws, token, ws_url

#: The close code of a connection whose user was disconnected by the operator.
DISCONNECT_CODE = 4001


def closed_with(ws, timeout: float = 5.0) -> int:
    """Reads until the connection closes; returns its close code."""
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    return closed.value.rcvd.code if closed.value.rcvd else 1006


def test_memory_engine_is_ready_lists_itself_and_disconnects_a_user(start_gateway):
    gw = start_gateway("--node-name", "solo", env=PUSH_ENV)
    ready = gw.get("/readyz")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    assert gw.get("/healthz").status_code == 200

    assert gw.get("/v1/nodes").status_code == 401, "the node list needs the API key"
    with open_ws(ws_url(gw, ("news",)), additional_headers=bearer(token("42"))) as a, \
            open_ws(ws_url(gw), additional_headers=bearer(token("42"))) as b, \
            open_ws(ws_url(gw), additional_headers=bearer(token("7"))) as other:
        def listed():
            nodes = gw.get("/v1/nodes", headers=bearer(API_KEY)).json()["nodes"]
            return nodes if nodes and nodes[0]["connections"] == 3 else None

        nodes = wait_for(listed, message="three connections in /v1/nodes")
        assert [n["name"] for n in nodes] == ["solo"]
        assert nodes[0]["subscriptions"] == 1
        assert abs(nodes[0]["heartbeat_ms"] / 1000 - time.time()) < 5

        for bad in ("{}", '{"user":""}', '{"user":42}', "[", '{"user":"42","x":1}'):
            reply = gw.post("/v1/disconnect", data=bad, headers=bearer(API_KEY))
            assert reply.status_code == 400, (bad, reply.text)
            assert reply.json()["error"] == "bad_request"
        assert gw.post("/v1/disconnect", data='{"user":"42"}').status_code == 401
        assert gw.get("/v1/disconnect", headers=bearer(API_KEY)).status_code == 405

        reply = gw.post("/v1/disconnect", data='{"user":"42"}', headers=bearer(API_KEY))
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"ok": True, "nodes": 1}
        assert closed_with(a) == DISCONNECT_CODE
        assert closed_with(b) == DISCONNECT_CODE
        other.send(json.dumps({"op": "ping", "id": 1}))
        assert json.loads(other.recv(timeout=5))["op"] == "pong", "other users stay"
    gw.wait_metric("pingwheel_connections_closed_total", 2, reason="revoked")
