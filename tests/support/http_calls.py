"""Raw HTTP calls to a registry for the door and spec tests: one keep-alive connection,
requests with the test token, the spec's JSON error code of an answer."""

from __future__ import annotations

import http.client
import json

from registry.oci import digest as digestmod
from tests.support.http_servers import TOKEN


def conn(srv) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)


def call(c: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None, token: str | None = TOKEN):
    """(response, body bytes); `token=None` sends no Authorization header."""
    h = {"Authorization": f"Bearer {token}"} if token else {}
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    return r, r.read()


def error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


def error_message(body: bytes) -> str:
    return json.loads(body)["errors"][0]["message"]


def push_blob(c: http.client.HTTPConnection, name: str, data: bytes,
              token: str | None = TOKEN) -> str:
    d = digestmod.of_bytes(data)
    r, b = call(c, "POST", f"/v2/{name}/blobs/uploads/?digest={d}", data, token=token)
    assert r.status == 201, b
    return d
