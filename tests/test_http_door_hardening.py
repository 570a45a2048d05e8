"""The HTTP door's answers to odd and hostile requests (issue 13 item 5, issue 14 item 2):
manifest references no tag can have, manifests nested or sized to hurt, Nagle on keep-alive,
a client that stops reading a blob."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import http.client
import os
import socket
import threading
import time

import pytest

from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.repo.layout import LayoutRepo
from srepo_server.blob_links import BlobLinks
from srepo_server.http_door import Door
from srepo_server.manifest_shape import json_depth_exceeds
from tests.support.http_calls import call, conn, error_code, error_message, push_blob
from tests.support.http_servers import SrepoHttp, free_port


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    work = tmp_path_factory.mktemp("hardening")
    srv = SrepoHttp(str(work / "repo"), str(work))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("ref", ["bad%20tag", "-starts-with-dash", "x" * 200, "a%2Fb"])
def test_manifest_by_a_reference_no_tag_can_have_is_unknown(door, ref):
    c = conn(door)
    for method in ("GET", "HEAD"):
        r, body = call(c, method, f"/v2/ok/manifests/{ref}")
        assert r.status == 404, (method, ref, body)
        if method == "GET":
            assert error_code(body) == "MANIFEST_UNKNOWN"


def _small_manifest(c) -> tuple[bytes, bytes]:
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    push_blob(c, "shape", cfg)
    layer = b"layer"
    push_blob(c, "shape", layer)
    return cfg, layer


def test_deeply_nested_manifest_is_invalid_not_a_server_error(door):
    c = conn(door)
    cfg, layer = _small_manifest(c)
    m = oci.new_manifest(cfg, [oci.descriptor(oci.LAYER_GZIP, layer)])
    body = oci.canonical_json(m)[:-1] + b',"annotations":{"x":' + b"[" * 100_000 + \
        b"]" * 100_000 + b"}}"
    r, answer = call(c, "PUT", "/v2/shape/manifests/1", body, {"Content-Type": oci.MANIFEST})
    assert r.status == 400 and error_code(answer) == "MANIFEST_INVALID"
    assert "deeper than" in error_message(answer)
    # Unbalanced nesting too (what made the parser raise RecursionError before).
    r, answer = call(c, "PUT", "/v2/shape/manifests/2", b"[" * 50_000,
                     {"Content-Type": oci.MANIFEST})
    assert r.status == 400 and error_code(answer) == "MANIFEST_INVALID"
    r, _ = call(c, "GET", "/v2/shape/manifests/1")
    assert r.status == 404


def test_manifest_listing_too_many_layers_is_invalid(door):
    c = conn(door)
    cfg, layer = _small_manifest(c)
    m = oci.new_manifest(cfg, [oci.descriptor(oci.LAYER_GZIP, layer)] * 20_000)
    r, answer = call(c, "PUT", "/v2/shape/manifests/many", oci.canonical_json(m),
                     {"Content-Type": oci.MANIFEST})
    assert r.status == 400 and error_code(answer) == "MANIFEST_INVALID"
    assert "20000 layers" in error_message(answer)


def test_brackets_inside_strings_do_not_count_as_depth():
    assert not json_depth_exceeds(b'{"a": "' + b"[" * 1000 + b'\\"{"}', 4)
    assert json_depth_exceeds(b"[[[[[]]]]]", 4)
    assert not json_depth_exceeds(b"[[[[]]]]", 4)
    assert json_depth_exceeds(b"[[]", 4)


def test_accepted_connections_have_nagle_off(tmp_path):
    """Each keep-alive answer is headers then body; with Nagle the client's next request
    waited for a delayed ACK (~40 ms a response). The server's own socket must say so."""
    log = open(tmp_path / "log", "w")  # the door writes to it until stopped
    door = Door(str(tmp_path / "repo"), f"127.0.0.1:{free_port()}", anonymous_read=True,
                access_log=log).start()
    try:
        host, port = door.address
        c = http.client.HTTPConnection(host, port, timeout=10)
        r, _ = call(c, "GET", "/v2/", token=None)
        assert r.status == 200
        client_end = c.sock.getsockname()
        served = [o for o in gc.get_objects() if isinstance(o, socket.socket)
                  and o.fileno() >= 0 and _peer(o) == client_end]
        assert served, "the server's end of the connection was not found"
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in served)
        c.close()
    finally:
        door.stop()
        log.close()
    assert threading.active_count() < 50


def _peer(s: socket.socket):
    try:
        return s.getpeername()
    except OSError:
        return None


def test_a_descriptor_whose_size_lies_is_invalid(door):
    c = conn(door)
    cfg, layer = _small_manifest(c)
    m = oci.new_manifest(cfg, [oci.descriptor(oci.LAYER_GZIP, layer)])
    m["layers"][0]["size"] = len(layer) + 1000
    r, answer = call(c, "PUT", "/v2/shape/manifests/liar", oci.canonical_json(m),
                     {"Content-Type": oci.MANIFEST})
    assert r.status == 400 and error_code(answer) == "MANIFEST_INVALID"
    assert f"says {len(layer) + 1000} bytes, the blob has {len(layer)}" in error_message(answer)
    r, _ = call(c, "GET", "/v2/shape/manifests/liar")
    assert r.status == 404


def test_a_client_that_stops_reading_a_blob_is_let_go(tmp_path):
    """A download whose client stops reading ends at the idle timeout (the kernel's send
    timeout, not a wake-up per drained buffer): its thread and connection are freed, and the
    blob is still served whole to the next client."""
    root = str(tmp_path / "repo")
    repo = LayoutRepo(root, create=True)
    data = os.urandom(24 << 20)  # far more than the two socket buffers hold
    d = digestmod.of_bytes(data)
    repo.put_blob_bytes(d, data)
    BlobLinks(repo).link("big", [d])
    log = open(tmp_path / "log", "w")  # the door writes to it until stopped
    door = Door(root, f"127.0.0.1:{free_port()}", anonymous_read=True, access_log=log,
                idle_timeout=1.0).start()
    stalled = socket.socket()
    try:
        host, port = door.address
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        stalled.connect((host, port))
        stalled.sendall(f"GET /v2/big/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        deadline = time.monotonic() + 30
        while not door.server.busy and time.monotonic() < deadline:
            time.sleep(0.01)  # the request is being answered
        while door.server.connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert door.server.connections == 0, "the stalled download still holds its connection"

        got = 0
        stalled.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while chunk := stalled.recv(1 << 20):
                got += len(chunk)
        assert got < len(data), "the stalled client was sent the whole blob"

        c = http.client.HTTPConnection(host, port, timeout=30)
        r, body = call(c, "GET", f"/v2/big/blobs/{d}", token=None)
        assert r.status == 200 and hashlib.sha256(body).hexdigest() == digestmod.hex_of(d)
        c.close()
    finally:
        stalled.close()
        door.stop()
        log.close()
