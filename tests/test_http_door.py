"""srepo-server's HTTP door, for real: skopeo and cocker's HttpRepo against it (and HttpRepo
against a real docker-registry), every upload flavour, errors, abuse, auth, kill -9, gc."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from common.errors import AuthError, PermissionDenied, TransportError
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo.copy import copy
from registry.repo.layout import LayoutRepo
from registry.transports.http.repo import HttpRepo
from tests.support.http_servers import (
    DOCKER_REGISTRY,
    RO_TOKEN,
    TOKEN,
    DockerRegistry,
    SrepoHttp,
    make_image,
    request,
)
from tests.support.tools import tool

SKOPEO = tool("skopeo")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    work = tmp_path_factory.mktemp("door")
    srv = SrepoHttp(str(work / "repo"), str(work))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def src(tmp_path) -> LayoutRepo:
    return LayoutRepo(str(tmp_path / "src"), create=True)


def conn(srv) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)


def call(c: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None, auth: bool = True):
    h = dict(AUTH if auth else {})
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    return r, r.read()


def error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


def push_blob(c, name: str, data: bytes) -> str:
    d = digestmod.of_bytes(data)
    r, b = call(c, "POST", f"/v2/{name}/blobs/uploads/?digest={d}", data)
    assert r.status == 201, b
    return d


# interop --------------------------------------------------------------------------------------
def test_skopeo_copies_to_and_from_the_door(door, src, tmp_path):
    d = make_image(src, "app", "1", extra_layers=[os.urandom(2 << 20)])
    dest = f"docker://{door.hostport}/team/skopeo:1"
    p = subprocess.run([SKOPEO, "copy", "--dest-tls-verify=false", "--dest-creds", f"x:{TOKEN}",
                        f"oci:{src.root}:app:1", dest], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # Anonymous pull (the door runs with --anonymous-read) back into an OCI layout.
    back = tmp_path / "back"
    p = subprocess.run([SKOPEO, "copy", "--src-tls-verify=false", dest, f"oci:{back}:app:1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # skopeo keeps the manifest bytes when nothing needs converting: same digest end to end.
    idx = json.loads((back / "index.json").read_text())
    assert idx["manifests"][0]["digest"] == d
    p = subprocess.run([SKOPEO, "inspect", "--tls-verify=false", "--raw", dest],
                       capture_output=True, timeout=60)
    assert digestmod.of_bytes(p.stdout) == d
    # The same directory is a cocker repo: the ref is there, complete.
    repo = LayoutRepo(door.root)
    assert repo.get_ref("team/skopeo", "1") == d
    assert repo.fsck() == []


@pytest.mark.parametrize("kind", ["door", "docker-registry"])
def test_httprepo_push_pull_list_delete(kind, door, src, tmp_path):
    if kind == "docker-registry":
        server = DockerRegistry(str(tmp_path))
        remote = HttpRepo(server.url + "/mirror")
    else:
        server = None
        remote = HttpRepo(door.url + "/mirror", token=TOKEN)
    try:
        d1 = make_image(src, "tools/app", "1.0", extra_layers=[os.urandom(5 << 20)])  # streamed
        d2 = make_image(src, "tools/app", "1.10")
        for v in ("1.0", "1.10"):
            copy(refmod.parse(f"tools/app:{v}"), src, remote)
        assert [(r.version, r.digest) for r in remote.list_refs("tools/app")] == \
            [("1.0", d1), ("1.10", d2)]
        assert "tools/app" in remote.list_names()
        assert remote.resolve(refmod.parse("tools/app")).version == "1.10"  # newest
        back = LayoutRepo(str(tmp_path / "back"), create=True)
        res = copy(refmod.parse("tools/app:1.0"), remote, back)
        assert res.digest == d1 and back.get_ref("tools/app", "1.0") == d1
        assert back.fsck() == []
        # A second push moves no layer bytes.
        again = copy(refmod.parse("tools/app:1.0"), src, remote)
        assert again.bytes_sent == 0
        # Pull by digest, resumed read with an offset.
        r = remote.resolve(refmod.parse(f"tools/app@{d1}"))
        assert r.digest == d1
        layer = json.loads(src.read_blob(d1))["layers"][1]
        view = remote.for_name("tools/app")
        with view.open_blob(layer["digest"], offset=1000) as f:
            tail = f.read()
        with src.open_blob(layer["digest"], 1000) as f:
            assert tail == f.read()
        remote.delete_ref("tools/app", "1.10")
        assert remote.get_ref("tools/app", "1.10") is None
        assert remote.get_ref("tools/app", "1.0") == d1
    finally:
        remote.close()
        if server:
            server.stop()


def test_httprepo_copies_an_index_and_docker_types(door, src, tmp_path):
    """An image index (children are manifests, not blobs) and a Docker schema2 manifest."""
    child = make_image(src, "multi", "amd64")
    cm = src.read_blob(child)
    index = oci.canonical_json({"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": [
        oci.descriptor(oci.MANIFEST, cm) | {"platform": {"os": "linux", "architecture": "amd64"}}]})
    di = digestmod.of_bytes(index)
    src.put_blob_bytes(di, index)
    src.put_ref("multi", "1", di)
    remote = HttpRepo(door.url, token=TOKEN)
    copy(refmod.parse("multi:1"), src, remote)
    c = conn(door)
    r, body = call(c, "GET", "/v2/multi/manifests/1", headers={"Accept": oci.INDEX})
    assert r.status == 200 and r.getheader("Content-Type") == oci.INDEX
    assert r.getheader("Docker-Content-Digest") == di and body == index
    r, body = call(c, "GET", f"/v2/multi/manifests/{child}")
    assert r.status == 200 and body == cm
    back = LayoutRepo(str(tmp_path / "back"), create=True)
    copy(refmod.parse("multi:1"), remote, back)
    assert back.fsck() == [] and back.get_ref("multi", "1") == di
    # Docker schema2: the Content-Type comes back as pushed.
    m = json.loads(cm)
    m["mediaType"] = oci.DOCKER_MANIFEST
    m["config"]["mediaType"] = oci.DOCKER_CONFIG
    for layer in m["layers"]:
        layer["mediaType"] = oci.DOCKER_LAYER_GZIP
    dm = json.dumps(m).encode()
    r, body = call(c, "PUT", "/v2/multi/manifests/docker", dm,
                   {"Content-Type": oci.DOCKER_MANIFEST})
    assert r.status == 201, body
    r, body = call(c, "HEAD", "/v2/multi/manifests/docker")
    assert r.getheader("Content-Type") == oci.DOCKER_MANIFEST
    assert r.getheader("Docker-Content-Digest") == digestmod.of_bytes(dm)
    assert int(r.getheader("Content-Length")) == len(dm)


# uploads ------------------------------------------------------------------------------------------
def test_chunked_upload_with_status_and_out_of_order_chunk(door):
    c = conn(door)
    data = os.urandom(300_000)
    d = digestmod.of_bytes(data)
    r, _ = call(c, "POST", "/v2/up/chunks/blobs/uploads/")
    assert r.status == 202 and r.getheader("Docker-Upload-UUID")
    loc = r.getheader("Location")
    parts = [data[:100_000], data[100_000:200_000], data[200_000:]]
    r, _ = call(c, "PATCH", loc, parts[0], {"Content-Range": "0-99999",
                                              "Content-Type": "application/octet-stream"})
    assert r.status == 202 and r.getheader("Range") == "0-99999"
    loc = r.getheader("Location")
    # A chunk that does not start where the upload is: 416, and the upload is unharmed.
    r, body = call(c, "PATCH", loc, parts[2], {"Content-Range": "200000-299999"})
    assert r.status == 416 and error_code(body) == "BLOB_UPLOAD_INVALID"
    assert r.getheader("Range") == "0-99999"
    r, _ = call(c, "GET", loc)
    assert r.status == 204 and r.getheader("Range") == "0-99999"
    r, _ = call(c, "PATCH", loc, parts[1], {"Content-Range": "100000-199999"})
    assert r.status == 202
    r, _ = call(c, "HEAD", f"/v2/up/chunks/blobs/{d}")
    assert r.status == 404  # nothing visible before the closing PUT
    r, _ = call(c, "PUT", f"{loc}?digest={d}", parts[2], {"Content-Range": "200000-299999"})
    assert r.status == 201 and r.getheader("Docker-Content-Digest") == d
    assert r.getheader("Location") == f"/v2/up/chunks/blobs/{d}"
    r, body = call(c, "GET", f"/v2/up/chunks/blobs/{d}")
    assert r.status == 200 and body == data


def test_streamed_patch_without_content_range(door):
    """What containers/image and HttpRepo do: one chunked PATCH, then PUT with the digest."""
    c = conn(door)
    data = os.urandom(3 << 20)
    d = digestmod.of_bytes(data)
    r, _ = call(c, "POST", "/v2/up/stream/blobs/uploads/")
    loc = r.getheader("Location")
    c.request("PATCH", loc, body=iter([data[i:i + 65536] for i in range(0, len(data), 65536)]),
              headers={**AUTH, "Transfer-Encoding": "chunked"}, encode_chunked=True)
    r = c.getresponse()
    r.read()
    assert r.status == 202 and r.getheader("Range") == f"0-{len(data) - 1}"
    r, _ = call(c, "PUT", f"{r.getheader('Location')}?digest={d}")
    assert r.status == 201
    assert LayoutRepo(door.root).has_blob(d)


def test_monolithic_and_cross_repo_mount(door):
    c = conn(door)
    data = b"monolithic blob " * 100
    d = push_blob(c, "up/one", data)
    r, _ = call(c, "HEAD", f"/v2/up/one/blobs/{d}")
    assert r.status == 200 and int(r.getheader("Content-Length")) == len(data)
    r, _ = call(c, "POST", f"/v2/up/two/blobs/uploads/?mount={d}&from=up/one")
    assert r.status == 201 and r.getheader("Location") == f"/v2/up/two/blobs/{d}"
    # Mounting something that is not there starts an ordinary session instead.
    absent = digestmod.of_bytes(b"absent")
    r, _ = call(c, "POST", f"/v2/up/two/blobs/uploads/?mount={absent}&from=up/one")
    assert r.status == 202 and r.getheader("Location")
    r, _ = call(c, "DELETE", r.getheader("Location"))
    assert r.status == 204


def test_range_get(door):
    c = conn(door)
    data = bytes(range(256)) * 40
    d = push_blob(c, "up/range", data)
    r, body = call(c, "GET", f"/v2/up/range/blobs/{d}", headers={"Range": "bytes=100-199"})
    assert r.status == 206 and body == data[100:200]
    assert r.getheader("Content-Range") == f"bytes 100-199/{len(data)}"
    r, body = call(c, "GET", f"/v2/up/range/blobs/{d}", headers={"Range": "bytes=10000-"})
    assert r.status == 206 and body == data[10000:]
    r, body = call(c, "GET", f"/v2/up/range/blobs/{d}", headers={"Range": "bytes=-5"})
    assert body == data[-5:]
    r, body = call(c, "GET", f"/v2/up/range/blobs/{d}", headers={"Range": "bytes=99999-"})
    assert r.status == 416 and r.getheader("Content-Range") == f"bytes */{len(data)}"


# listing, referrers ----------------------------------------------------------------------------------
def test_tags_list_pagination_and_catalog(door, src):
    remote = HttpRepo(door.url, token=TOKEN)
    base = make_image(src, "paged", "b")
    for t in ("a", "c", "d", "e"):
        src.put_ref("paged", t, base)
    for t in ("a", "b", "c", "d", "e"):
        copy(refmod.parse(f"paged:{t}"), src, remote)
    c = conn(door)
    r, body = call(c, "GET", "/v2/paged/tags/list?n=2")
    assert json.loads(body) == {"name": "paged", "tags": ["a", "b"]}
    assert r.getheader("Link") == '</v2/paged/tags/list?n=2&last=b>; rel="next"'
    r, body = call(c, "GET", "/v2/paged/tags/list?n=2&last=d")
    assert json.loads(body)["tags"] == ["e"] and r.getheader("Link") is None
    r, body = call(c, "GET", "/v2/nothing/here/tags/list")
    assert r.status == 404 and error_code(body) == "NAME_UNKNOWN"
    r, body = call(c, "GET", "/v2/_catalog?n=1000")
    assert "paged" in json.loads(body)["repositories"]
    assert [x.version for x in remote.list_refs("paged")] == ["a", "b", "c", "d", "e"]


def test_referrers(door, src):
    remote = HttpRepo(door.url, token=TOKEN)
    subject = make_image(src, "signed", "1")
    copy(refmod.parse("signed:1"), src, remote)
    c = conn(door)
    empty = b"{}"
    push_blob(c, "signed", empty)
    sig = push_blob(c, "signed", b"signature bytes")
    art = {"schemaVersion": 2, "mediaType": oci.MANIFEST, "artifactType": "application/x-sig",
           "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                      "digest": digestmod.of_bytes(empty), "size": 2},
           "layers": [{"mediaType": "application/octet-stream", "digest": sig, "size": 15}],
           "subject": {"mediaType": oci.MANIFEST, "digest": subject,
                       "size": src.blob_size(subject)},
           "annotations": {"who": "ci"}}
    ab = json.dumps(art).encode()
    ad = digestmod.of_bytes(ab)
    r, body = call(c, "PUT", f"/v2/signed/manifests/{ad}", ab, {"Content-Type": oci.MANIFEST})
    assert r.status == 201, body
    assert r.getheader("OCI-Subject") == subject
    r, body = call(c, "GET", f"/v2/signed/referrers/{subject}")
    idx = json.loads(body)
    assert r.status == 200 and r.getheader("Content-Type") == oci.INDEX
    assert [m["digest"] for m in idx["manifests"]] == [ad]
    assert idx["manifests"][0]["artifactType"] == "application/x-sig"
    assert idx["manifests"][0]["annotations"] == {"who": "ci"}
    r, body = call(c, "GET", f"/v2/signed/referrers/{subject}?artifactType=application/x-other")
    assert json.loads(body)["manifests"] == []
    assert r.getheader("OCI-Filters-Applied") == "artifactType"
    # Deleting the artifact by digest removes it from the answer and from GET by digest.
    r, _ = call(c, "DELETE", f"/v2/signed/manifests/{ad}")
    assert r.status == 202
    r, body = call(c, "GET", f"/v2/signed/referrers/{subject}")
    assert json.loads(body)["manifests"] == []
    r, body = call(c, "GET", f"/v2/signed/manifests/{ad}")
    assert r.status == 404 and error_code(body) == "MANIFEST_UNKNOWN"


# bad input --------------------------------------------------------------------------------------------
def test_digest_mismatch_is_refused_and_nothing_visible(door):
    c = conn(door)
    claimed = digestmod.of_bytes(b"what I claim")
    r, body = call(c, "POST", f"/v2/bad/blobs/uploads/?digest={claimed}", b"what I send")
    assert r.status == 400 and error_code(body) == "DIGEST_INVALID"
    r, _ = call(c, "POST", "/v2/bad/blobs/uploads/")
    loc = r.getheader("Location")
    call(c, "PATCH", loc, b"other bytes")
    r, body = call(c, "PUT", f"{loc}?digest={claimed}")
    assert r.status == 400 and error_code(body) == "DIGEST_INVALID"
    r, _ = call(c, "HEAD", f"/v2/bad/blobs/{claimed}")
    assert r.status == 404
    assert not LayoutRepo(door.root).has_blob(claimed)
    r, body = call(c, "GET", loc)
    assert r.status == 404 and error_code(body) == "BLOB_UPLOAD_UNKNOWN"


def test_manifest_naming_missing_blobs_is_refused(door):
    c = conn(door)
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    push_blob(c, "bad", cfg)
    m = oci.canonical_json(oci.new_manifest(cfg, [oci.descriptor(oci.LAYER_GZIP, b"never pushed")]))
    r, body = call(c, "PUT", "/v2/bad/manifests/1", m, {"Content-Type": oci.MANIFEST})
    assert r.status == 400 and error_code(body) == "MANIFEST_BLOB_UNKNOWN"
    assert digestmod.of_bytes(b"never pushed") in json.dumps(json.loads(body))
    r, _ = call(c, "GET", "/v2/bad/manifests/1")
    assert r.status == 404
    r, body = call(c, "PUT", "/v2/bad/manifests/2", b"{not json", {"Content-Type": oci.MANIFEST})
    assert r.status == 400 and error_code(body) == "MANIFEST_INVALID"
    other = digestmod.of_bytes(b"x")
    r, body = call(c, "PUT", f"/v2/bad/manifests/{other}", m, {"Content-Type": oci.MANIFEST})
    assert r.status == 400 and error_code(body) == "DIGEST_INVALID"


def test_bad_names_digests_and_paths(door):
    c = conn(door)
    for path, status, code in [
        ("/v2/Upper/tags/list", 400, "NAME_INVALID"),
        ("/v2/a/../../etc/blobs/sha256:" + "0" * 64, 400, "NAME_INVALID"),
        ("/v2/ok/blobs/sha256:../../etc/passwd", 404, "NOT_FOUND"),
        ("/v2/ok/blobs/sha256:..%2f..%2fetc%2fpasswd", 400, "DIGEST_INVALID"),
        ("/v2/ok/blobs/sha512:" + "0" * 128, 400, "DIGEST_INVALID"),
        ("/v2/ok/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
        ("/v2/ok/manifests/bad%20tag", 404, "MANIFEST_UNKNOWN"),
        ("/v2/ok/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        ("/v2/ok/blobs/uploads/../../x", 404, None),
    ]:
        r, body = call(c, "GET", path)
        assert r.status == status, (path, body)
        if code:
            assert error_code(body) == code, path
        assert r.getheader("Content-Type") == "application/json"
    r, body = call(c, "GET", "/v2/ok/tags/list?n=x")
    assert r.status in (400, 404)


def test_oversize_manifest_is_refused_without_reading_it(door):
    s = socket.create_connection(("127.0.0.1", door.port), timeout=10)
    try:
        s.sendall((f"PUT /v2/big/manifests/1 HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {TOKEN}\r\nContent-Type: {oci.MANIFEST}\r\n"
                   f"Content-Length: {5 << 30}\r\n\r\n").encode() + b"{" * 65536)
        t = time.monotonic()
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        reply = reply.decode(errors="replace")
        assert time.monotonic() - t < 5
    finally:
        s.close()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "SIZE_INVALID" in reply


def test_client_disconnect_mid_upload_and_idle_connections(door):
    c = conn(door)
    r, _ = call(c, "POST", "/v2/cut/blobs/uploads/")
    loc = r.getheader("Location")
    s = socket.create_connection(("127.0.0.1", door.port), timeout=10)
    s.sendall((f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Content-Length: {10 << 20}\r\n\r\n").encode() + os.urandom(1 << 20))
    s.close()
    idle = [socket.create_connection(("127.0.0.1", door.port), timeout=10) for _ in range(200)]
    try:
        t = time.monotonic()
        r, body = call(conn(door), "GET", "/v2/_catalog")
        assert r.status == 200 and time.monotonic() - t < 5
        r, _ = call(conn(door), "GET", loc)  # the session holds what arrived, nothing more
        assert r.status == 204
        got = int(r.getheader("Range").split("-")[1]) + 1
        assert got <= 1 << 20
        tmp = os.path.join(door.root, "tmp", "http-uploads")
        assert len([f for f in os.listdir(tmp) if not f.endswith(".name")]) >= 1
    finally:
        for s in idle:
            s.close()
    assert LayoutRepo(door.root).fsck() == []


# auth -----------------------------------------------------------------------------------------------
def test_auth_anonymous_read_and_tokens(tmp_path, src):
    htpasswd = tmp_path / "htpasswd"
    import bcrypt
    h = bcrypt.hashpw(b"pw-alice", bcrypt.gensalt(4)).decode()
    htpasswd.write_text(f"alice:{h}:read,write:team/*\nbob:{{PLAIN}}pw-bob:read\n")
    srv = SrepoHttp(str(tmp_path / "repo"), str(tmp_path),
                    extra=["--htpasswd", str(htpasswd)])
    try:
        make_image(src, "team/app", "1")
        # No credentials: pulls allowed (anonymous read), push answered 401 with a challenge.
        anon = HttpRepo(srv.url)
        with pytest.raises(AuthError):
            copy(refmod.parse("team/app:1"), src, anon)
        st, hd, body = request(srv.url + "/v2/team/app/blobs/uploads/", "POST", b"", token=None)
        assert st == 401 and hd["WWW-Authenticate"].startswith("Basic realm=")
        assert error_code(body) == "UNAUTHORIZED"
        st, _, _ = request(srv.url + "/v2/", token=None)
        assert st == 401  # the ping tells clients credentials exist
        # A wrong token: 401; a read-only token: 403 DENIED.
        with pytest.raises(AuthError):
            copy(refmod.parse("team/app:1"), src, HttpRepo(srv.url, token="wrong-token-123"))
        with pytest.raises(PermissionDenied):
            copy(refmod.parse("team/app:1"), src, HttpRepo(srv.url, token=RO_TOKEN))
        # Basic users from the htpasswd file, with a prefix limit.
        alice = HttpRepo(srv.url, username="alice", password="pw-alice")
        copy(refmod.parse("team/app:1"), src, alice)
        with pytest.raises(PermissionDenied):
            copy(refmod.parse("team/app:1"), src, alice, dest_ref=refmod.parse("other/app:1"))
        with pytest.raises(AuthError):
            copy(refmod.parse("team/app:1"), src,
                 HttpRepo(srv.url, username="alice", password="nope"),
                 dest_ref=refmod.parse("team/new:1"))
        with pytest.raises(PermissionDenied):
            copy(refmod.parse("team/app:1"), src,
                 HttpRepo(srv.url, username="bob", password="pw-bob"), dest_ref=refmod.parse("team/x:1"))
        # The token also works as a Basic password (skopeo --creds x:TOKEN).
        copy(refmod.parse("team/app:1"), src, HttpRepo(srv.url, username="ci", password=TOKEN),
             dest_ref=refmod.parse("other/app:1"))
        # Anonymous pull of what was pushed.
        back = LayoutRepo(str(tmp_path / "back"), create=True)
        copy(refmod.parse("other/app:1"), anon, back)
        assert back.fsck() == []
        # Deleting needs the delete permission.
        with pytest.raises(PermissionDenied):
            alice.delete_ref("team/app", "1")
    finally:
        srv.stop()


def test_auth_off_for_reads_without_anonymous_read(tmp_path, src):
    srv = SrepoHttp(str(tmp_path / "repo"), str(tmp_path), anonymous_read=False)
    try:
        st, hd, body = request(srv.url + "/v2/_catalog", token=None)
        assert st == 401 and "WWW-Authenticate" in hd
        st, _, _ = request(srv.url + "/v2/_catalog", token=RO_TOKEN)
        assert st == 200
    finally:
        srv.stop()


def test_tls(tmp_path, src):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    srv = SrepoHttp(str(tmp_path / "repo"), str(tmp_path),
                    extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    url = f"https://127.0.0.1:{srv.port}"
    try:
        make_image(src, "tls/app", "1", extra_layers=[os.urandom(5 << 20)])
        with pytest.raises(TransportError):
            HttpRepo(url, token=TOKEN).list_refs("tls/app")  # unknown CA: refused
        copy(refmod.parse("tls/app:1"), src, HttpRepo(url, token=TOKEN, ca_file=str(cert)))
        back = LayoutRepo(str(tmp_path / "back"), create=True)
        copy(refmod.parse("tls/app:1"), HttpRepo(url, insecure=True), back)
        assert back.fsck() == []
        if SKOPEO:
            p = subprocess.run([SKOPEO, "inspect", "--tls-verify=false", "--raw",
                                f"docker://127.0.0.1:{srv.port}/tls/app:1"], capture_output=True,
                               timeout=60)
            assert p.returncode == 0, p.stderr
    finally:
        srv.stop()


# crashes, shutdown, gc -------------------------------------------------------------------------------
def test_kill9_during_upload_then_restart(tmp_path, src):
    srv = SrepoHttp(str(tmp_path / "repo"), str(tmp_path))
    try:
        data = os.urandom(4 << 20)
        d = digestmod.of_bytes(data)
        c = conn(srv)
        r, _ = call(c, "POST", "/v2/crash/blobs/uploads/")
        loc = r.getheader("Location")
        r, _ = call(c, "PATCH", loc, data[:1 << 20], {"Content-Range": f"0-{(1 << 20) - 1}"})
        assert r.status == 202
        # A second PATCH is on the wire when the server dies.
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall((f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"Content-Length: {3 << 20}\r\n\r\n").encode() + data[1 << 20:2 << 20])
        time.sleep(0.2)
        srv.kill9()
        s.close()
        repo = LayoutRepo(srv.root)
        assert not repo.has_blob(d) and repo.fsck() == []
        srv.start()
        # The session survived: resume from where the server's file ends.
        c = conn(srv)
        r, _ = call(c, "GET", loc)
        assert r.status == 204
        have = int(r.getheader("Range").split("-")[1]) + 1
        assert have in (1 << 20, 2 << 20)
        r, body = call(c, "PUT", f"{loc}?digest={d}", data[have:],
                       {"Content-Range": f"{have}-{len(data) - 1}"})
        assert r.status == 201, body
        assert repo.has_blob(d)
        # And a whole image push goes through after the restart.
        make_image(src, "crash/app", "1", extra_layers=[data])
        copy(refmod.parse("crash/app:1"), src, HttpRepo(srv.url, token=TOKEN))
        assert repo.fsck() == []
        assert srv.stop() == 0  # SIGTERM: clean exit
    finally:
        srv.stop()


def test_gc_spares_live_sessions_and_digest_pushed_manifests(tmp_path, src):
    srv = SrepoHttp(str(tmp_path / "repo"), str(tmp_path))
    try:
        remote = HttpRepo(srv.url, token=TOKEN)
        keep = make_image(src, "gc/app", "1")
        copy(refmod.parse("gc/app:1"), src, remote)
        c = conn(srv)
        orphan = push_blob(c, "gc/app", b"nobody references me")
        # A manifest pushed by digest only (like skopeo pushes an index's children).
        lone = make_image(src, "gc/lone", "x")
        copy(refmod.parse("gc/lone:x"), src, remote)
        call(c, "DELETE", "/v2/gc/lone/manifests/x")
        lb = src.read_blob(lone)
        r, _ = call(c, "PUT", f"/v2/gc/lone/manifests/{lone}", lb, {"Content-Type": oci.MANIFEST})
        assert r.status == 201
        # An upload in progress.
        r, _ = call(c, "POST", "/v2/gc/app/blobs/uploads/")
        loc = r.getheader("Location")
        call(c, "PATCH", loc, b"half of something")
        old = time.time() - 7200
        repo = LayoutRepo(srv.root)
        for dirpath, _, files in os.walk(os.path.join(srv.root, "tmp")):
            for f in files:
                os.utime(os.path.join(dirpath, f), (old, old))
        p = subprocess.run(["srepo-server", "gc", "--root", srv.root, "--grace", "0"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "removed 1 blob" in p.stdout
        assert not repo.has_blob(orphan)
        assert repo.fsck() == []
        for d in json.loads(repo.read_blob(keep))["layers"]:
            assert repo.has_blob(d["digest"])
        r, _ = call(c, "GET", f"/v2/gc/lone/manifests/{lone}")
        assert r.status == 200
        r, _ = call(c, "GET", loc)
        assert r.status == 204  # the session survived gc
        data = b"half of something" + b" and the rest"
        r, body = call(c, "PUT", f"{loc}?digest={digestmod.of_bytes(data)}", b" and the rest")
        assert r.status == 201, body
    finally:
        srv.stop()


def test_access_log_and_bad_cli_input(door, tmp_path):
    request(door.url + "/v2/_catalog")
    with open(door.log) as f:
        log = f.read()
    assert '"GET /v2/_catalog HTTP/1.1" 200' in log
    p = subprocess.run(["srepo-server", "--root", str(tmp_path / "r"), "--http", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "needs --token-file" in p.stderr
    assert "Traceback" not in p.stderr
    p = subprocess.run(["srepo-server", "gc", "--root", str(tmp_path)], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    tok = tmp_path / "tok"
    tok.write_text("short\n")
    p = subprocess.run(["srepo-server", "--root", str(tmp_path / "r"), "--http", "127.0.0.1:0",
                        "--token-file", str(tok)], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "too short" in p.stderr and "Traceback" not in p.stderr


def test_basic_auth_header_parsing():
    from srepo_server.http_auth import Authenticator, parse_token_file
    g = parse_token_file("abcdefgh1 read,write team/*\n# c\nabcdefgh2\n")
    assert g["abcdefgh1"].can("write", "team/x") and not g["abcdefgh1"].can("write", "teamx")
    assert not g["abcdefgh1"].can("delete", "team/x") and g["abcdefgh2"].can("delete", "a")
    a = Authenticator(anonymous_read=True)
    assert a.authenticate("Basic " + base64.b64encode(b":").decode()).who == "-"
    assert a.authenticate("Basic !!!") is None


def test_eight_pulls_and_four_pushes_at_once(door, src, tmp_path):
    import concurrent.futures as cf
    for i in range(4):
        make_image(src, f"conc/push{i}", "1", extra_layers=[os.urandom(1 << 20)])
    make_image(src, "conc/pull", "1", extra_layers=[os.urandom(2 << 20)])
    copy(refmod.parse("conc/pull:1"), src, HttpRepo(door.url, token=TOKEN))

    def push(i: int) -> str:
        return copy(refmod.parse(f"conc/push{i}:1"), src, HttpRepo(door.url, token=TOKEN)).digest

    def pull(i: int) -> str:
        back = LayoutRepo(str(tmp_path / f"pull{i}"), create=True)
        res = copy(refmod.parse("conc/pull:1"), HttpRepo(door.url), back)
        assert back.fsck() == []
        return res.digest

    with cf.ThreadPoolExecutor(12) as pool:
        futs = [pool.submit(push, i) for i in range(4)] + [pool.submit(pull, i) for i in range(8)]
        digests = [f.result(timeout=120) for f in futs]
    assert len(set(digests[4:])) == 1
    repo = LayoutRepo(door.root)
    for i in range(4):
        assert repo.get_ref(f"conc/push{i}", "1") == digests[i]


def test_gc_during_a_push(tmp_path, src):
    import threading

    from srepo_server import http_store
    srv = SrepoHttp(str(tmp_path / "repo"), str(tmp_path))
    try:
        make_image(src, "gcpush/app", "1", extra_layers=[os.urandom(6 << 20) for _ in range(3)])
        repo = LayoutRepo(srv.root)
        stop = threading.Event()
        runs = []

        def collect() -> None:
            while not stop.is_set():
                runs.append(http_store.gc(repo, grace=3600))

        t = threading.Thread(target=collect)
        t.start()
        try:
            copy(refmod.parse("gcpush/app:1"), src, HttpRepo(srv.url, token=TOKEN))
        finally:
            stop.set()
            t.join(30)
        assert runs and repo.fsck() == []
        assert http_store.gc(repo, grace=3600) == (0, 0)
        assert repo.get_ref("gcpush/app", "1") == src.get_ref("gcpush/app", "1")
    finally:
        srv.stop()


def test_cocker_cli_push_and_pull_over_http(door, store, cocker, tmp_path):
    d = make_image(store, "cli/app", "1.0")
    env = {"COCKER_REGISTRY_TOKEN": TOKEN}
    p = cocker("image", "push", "cli/app:1.0", "--repo", door.url + "/team", env=env)
    assert d in p.stdout
    assert LayoutRepo(door.root).get_ref("team/cli/app", "1.0") == d
    store.delete_ref("cli/app", "1.0")
    p = cocker("image", "pull", "cli/app", "--repo", door.url + "/team", env=env)
    assert store.get_ref("cli/app", "1.0") == d
    rows = json.loads(cocker("image", "search", "--repo", door.url + "/team", "--json",
                             env=env).stdout)
    mine = [r for r in rows if r["name"] == "cli/app"]  # other tests share this door
    assert [(r["version"], r["digest"]) for r in mine] == [("1.0", d)]
    assert mine[0]["size"] > 0  # read through the registry's per-name scope
    p = cocker("image", "push", "cli/app:1.0", "--repo", door.url + "/team", check=False,
               env={"COCKER_REGISTRY_TOKEN": "not-a-valid-token"})
    assert p.returncode != 0 and "Traceback" not in p.stderr


def test_httprepo_bearer_token_flow_against_docker_registry(src, tmp_path):
    from tests.support.http_servers import TokenRegistry
    reg = TokenRegistry(str(tmp_path))
    try:
        d = make_image(src, "tok/app", "1", extra_layers=[os.urandom(5 << 20)])
        with pytest.raises(AuthError):
            copy(refmod.parse("tok/app:1"), src, HttpRepo(reg.url))  # no credentials
        with pytest.raises(AuthError):
            copy(refmod.parse("tok/app:1"), src,
                 HttpRepo(reg.url, username=reg.USER, password="wrong"))
        remote = HttpRepo(reg.url, username=reg.USER, password=reg.PASSWORD)
        copy(refmod.parse("tok/app:1"), src, remote)
        assert "repository:tok/app:pull,push" in reg.issued
        back = LayoutRepo(str(tmp_path / "back"), create=True)
        copy(refmod.parse("tok/app:1"),
             HttpRepo(reg.url, username=reg.USER, password=reg.PASSWORD), back)
        assert back.get_ref("tok/app", "1") == d and back.fsck() == []
    finally:
        reg.stop()


def test_malformed_requests_get_json_errors(door):
    def raw(data: bytes) -> bytes:
        s = socket.create_connection(("127.0.0.1", door.port), timeout=10)
        try:
            s.sendall(data)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out
        finally:
            s.close()

    out = raw(b"GARBAGE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b'"errors"' in out
    r, _ = call(conn(door), "POST", "/v2/junk/blobs/uploads/")
    loc = r.getheader("Location")
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    out = raw(f"PATCH {loc} HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
              "ZZ\r\nhello\r\n".encode())
    assert out.startswith(b"HTTP/1.1 400") and b"BLOB_UPLOAD_INVALID" in out
    out = raw(f"PATCH {loc} HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: gzip\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 501") and b"UNSUPPORTED" in out
    r, _ = call(conn(door), "GET", "/v2/_catalog")
    assert r.status == 200
