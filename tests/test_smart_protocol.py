"""The smart protocol: the one handler over socket pairs (threads) and a real
`srepo-server --stdio` subprocess, driven by SmartRepo and by hand-made frames."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.errors import (
    Conflict,
    DigestMismatch,
    InvalidReference,
    NotARepository,
    NotFound,
    PermissionDenied,
    TransportError,
    UsageError,
)
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci.reference import parse
from registry.repo.copy import copy
from registry.repo.image import publish
from registry.repo.layout import LayoutRepo
from registry.transports.smart.client import SmartRepo
from srepo_server.access import Access
from srepo_server.handler import serve


def make_image(repo: LayoutRepo, name: str, version: str, sizes=(3000, 200_000),
               seed: bytes = b"") -> str:
    """An image with random layers of the given sizes; returns the manifest digest."""
    layers = []
    for n in sizes:
        data = seed + os.urandom(n)
        d = digestmod.of_bytes(data)
        repo.put_blob_bytes(d, data)
        layers.append(oci.descriptor(oci.LAYER_TAR, d, len(data)))
    cfg = oci.new_config([x["digest"] for x in layers])
    return publish(repo, name, version, cfg, layers, force=True).digest


class Served:
    """A handler thread on one end of a socketpair; `connect()` gives more connections."""

    def __init__(self, root: str, access: Access | None = None, namespace: str | None = None):
        self.repo = LayoutRepo(root, create=True)
        self.access, self.namespace = access, namespace
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        self.log: list[str] = []

    def pair(self) -> socket.socket:
        a, b = socket.socketpair()
        self.socks += [a, b]

        def run() -> None:
            with a.makefile("rb") as r, a.makefile("wb") as w:
                serve(r, w, self.repo, self.access, namespace=self.namespace,
                      log=self.log.append)
            a.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)
        return b

    def client(self, **kw) -> SmartRepo:
        b = self.pair()
        return SmartRepo(b.makefile("rb"), b.makefile("wb"), url="pair", closer=b.close, **kw)

    def raw(self) -> Raw:
        return Raw(self.pair())

    def close(self) -> None:
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        for t in self.threads:
            t.join(5)


class Raw:
    """Hand-made frames, to say what a well-behaved client never would."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.r = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, frame) -> dict:
        self.send((frame if isinstance(frame, bytes) else json.dumps(frame).encode()) + b"\n")
        return self.reply()

    def reply(self) -> dict:
        line = self.r.readline()
        assert line, "server closed the connection"
        return json.loads(line)

    def closed(self) -> bool:
        self.sock.settimeout(5)
        return self.r.read(1) == b""


@pytest.fixture
def served(tmp_path):
    s = Served(str(tmp_path / "server"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def local(tmp_path):
    return LayoutRepo(str(tmp_path / "local"), create=True)


def test_push_pull_list_resolve(served, local, tmp_path):
    d1 = make_image(local, "app", "1.9.1")
    d2 = make_image(local, "app", "1.10.0")
    with served.client() as r:
        assert r.server_info["version"] == 1 and "put-blob-resume" in r.server_info["capabilities"]
        for v in ("1.9.1", "1.10.0"):
            res = copy(parse(f"app:{v}"), local, r)
            assert res.published
        # Again: nothing to send.
        assert copy(parse("app:1.10.0"), local, r).blobs_sent == 0
        assert {(x.name, x.version, x.digest) for x in r.list_refs()} == {
            ("app", "1.9.1", d1), ("app", "1.10.0", d2)}
        assert r.resolve(parse("app")).version == "1.10.0"  # newest, by version order
        assert r.resolve(parse("app:1.9.1")).digest == d1
        assert r.get_ref("app", "9") is None
        with pytest.raises(NotFound):
            r.resolve(parse("nope"))
        assert [x.version for x in r.list_refs(pattern="app:1.9*")] == ["1.9.1"]
        assert r.list_refs(prefix="zzz") == []
        back = LayoutRepo(str(tmp_path / "back"), create=True)
        copy(parse("app"), r, back)
        assert back.get_ref("app", "1.10.0") == d2
    assert served.repo.fsck() == [] and back.fsck() == []


def test_missing_batch_and_sizes(served, local):
    make_image(local, "a", "1")
    blobs = local.all_blobs()
    absent = digestmod.of_bytes(b"absent")
    with served.client() as r:
        assert r.missing_blobs(blobs + [absent, absent]) == blobs + [absent]
        copy(parse("a:1"), local, r)
        assert r.missing_blobs(blobs + [absent]) == [absent]
        for d in blobs:
            assert r.blob_size(d) == local.blob_size(d)
        assert r.blob_size(absent) is None


def test_get_blob_offset_and_early_close(served, local):
    make_image(local, "a", "1", sizes=(3 << 20,))
    layer = max(local.all_blobs(), key=local.blob_size)
    data = Path(local.blob_path(layer)).read_bytes()
    with served.client() as r:
        copy(parse("a:1"), local, r)
        with r.open_blob(layer, 1000) as f:
            assert f.read() == data[1000:]
        f = r.open_blob(layer)
        assert f.read(10) == data[:10]
        f.close()  # the rest is drained: the connection stays in step
        assert r.blob_size(layer) == len(data)
        with pytest.raises(NotFound):
            r.open_blob(digestmod.of_bytes(b"x"))
        assert r.get_ref("a", "1")


def test_resume_after_a_cut(served):
    data = os.urandom(5 << 20)
    d = digestmod.of_bytes(data)
    b = served.pair()
    r1 = SmartRepo(b.makefile("rb"), b.makefile("wb"))
    w = r1.upload(d, len(data))
    assert w.offset == 0
    w.write(data[:2 << 20])
    w.write(data[2 << 20:3 << 20])
    b.shutdown(socket.SHUT_RDWR)  # the connection is cut mid-blob
    b.close()
    served.threads[-1].join(10)
    assert not served.repo.has_blob(d)  # nothing partial is visible
    with served.client() as r2:
        w = r2.upload(d, len(data))
        assert w.offset == 3 << 20  # resumes where the cut left it
        w.write(data[w.offset:])
        w.commit()
        assert r2.blob_size(d) == len(data)
    assert served.repo.fsck() == []


def test_upload_abort_keeps_partial(served):
    data = os.urandom(1 << 20)
    d = digestmod.of_bytes(data)
    with served.client() as r:
        w = r.upload(d, len(data))
        w.write(data[:1000])
        w.abort()
        assert not r.has_blob(d)
        w = r.upload(d, len(data))
        assert w.offset == 1000
        w.write(data[1000:])
        w.commit()
        assert r.has_blob(d)
        # An existing blob: the server says so and no bytes travel.
        w = r.upload(d, len(data))
        assert w.offset == len(data)
        w.commit()


def test_compare_and_swap(served, local):
    d1 = make_image(local, "app", "1")
    d2 = make_image(local, "app", "2")
    with served.client() as r:
        copy(parse("app:1"), local, r)
        copy(parse("app:2"), local, r)
        with pytest.raises(Conflict):
            r.put_ref("app", "1", d2, expect=None)  # must not exist
        with pytest.raises(Conflict):
            r.put_ref("app", "1", d2, expect=d2)  # holds d1, not d2
        r.put_ref("app", "1", d2, expect=d1)
        assert r.get_ref("app", "1") == d2
        with pytest.raises(Conflict):
            r.delete_ref("app", "1", expect=d1)
        r.delete_ref("app", "1", expect=d2)
        assert r.get_ref("app", "1") is None
        with pytest.raises(NotFound):
            r.delete_ref("app", "1")


def test_dangling_ref_refused(served, local):
    make_image(local, "app", "1")
    with served.client() as r:
        # The manifest alone, without its config and layers.
        md = local.get_ref("app", "1")
        r.put_blob_bytes(md, local.read_blob(md))
        with pytest.raises(NotFound, match="missing blob"):
            r.put_ref("app", "1", md)
        with pytest.raises(NotFound):
            r.put_ref("app", "1", digestmod.of_bytes(b"no such manifest"))
        assert r.list_refs() == []


def test_corrupt_blob_refused(served):
    good = os.urandom(300_000)
    d = digestmod.of_bytes(good)
    bad = bytearray(good)
    bad[1234] ^= 0xFF
    with served.client() as r:
        with pytest.raises(DigestMismatch):
            r.put_blob_bytes(d, bytes(bad))
        assert not r.has_blob(d) and not os.path.exists(served.repo.blob_path(d))
        with pytest.raises(DigestMismatch):  # wrong size
            r.put_blob_bytes(d, good + b"x")
        r.put_blob_bytes(d, good)  # the bad bytes did not poison a resume
        assert r.read_blob(d) == good


def test_path_traversal_refused(served, tmp_path):
    raw = served.raw()
    assert raw.call({"op": "hello", "versions": [1]})["ok"]
    bad_names = ["../etc", "a/../../b", "/abs", "a//b", "A", "a/", "x" * 300, "..", "a\x00b"]
    for name in bad_names:
        for op in ({"op": "get-ref", "name": name, "version": "1"},
                   {"op": "list", "name": name},
                   {"op": "put-ref", "name": name, "version": "1", "digest": "sha256:" + "a" * 64},
                   {"op": "delete-ref", "name": name, "version": "1"},
                   {"op": "resolve", "ref": name + ":1"}):
            rep = raw.call(op)
            assert rep["ok"] is False and rep["error"] == "InvalidReference", (op, rep)
    for version in ("../../x", "a/b", "", ".hidden", "v" * 200):
        rep = raw.call({"op": "get-ref", "name": "app", "version": version})
        assert rep["error"] == "InvalidReference", version
    bad_digests = ["sha256:../../../etc/passwd", "sha256:" + "A" * 64, "md5:" + "a" * 32,
                   "sha256:" + "a" * 63, "../sha256:" + "a" * 64, "sha256:" + "a" * 64 + "/x"]
    for dg in bad_digests:
        for op in ({"op": "get-blob", "digest": dg}, {"op": "blob-size", "digest": dg},
                   {"op": "put-blob", "digest": dg, "size": 1},
                   {"op": "missing", "digests": ["sha256:" + "b" * 64, dg]}):
            rep = raw.call(op)
            assert rep["ok"] is False and rep["error"] == "InvalidReference", (op, rep)
    # Nothing was created outside the repository (or inside it, bar its skeleton).
    assert sorted(os.listdir(tmp_path)) == ["server"]
    assert raw.call({"op": "list"}) == {"ok": True, "refs": []}


def test_malformed_frames_answered_and_server_keeps_serving(served):
    raw = served.raw()
    cases = [b"this is not json", b"[1,2,3]", b'"str"', b"{}", b'{"op": "fly"}',
             b'{"op": 42}', b'{"op": "get-ref"}', b'{"op": "get-ref", "name": 1, "version": "1"}',
             b'{"op": "get-blob", "digest": "sha256:' + b"a" * 64 + b'", "offset": true}',
             b'{"op": "missing", "digests": "sha256:x"}', b'{"op": "hello", "versions": [99]}',
             b'{"op": "put-ref", "name": "a", "version": "1", "digest": "sha256:' + b"a" * 64
             + b'", "expect": 5}', b'\xff\xfe\x00garbage', b'{"op": "gc", "grace": "soon"}']
    for c in cases:
        rep = raw.call(c)
        assert rep["ok"] is False and rep["message"], (c, rep)
    assert raw.call({"op": "hello", "versions": [1]})["ok"]
    assert raw.call({"op": "list"})["ok"]
    # A blob offset outside the blob.
    data = b"hello"
    d = digestmod.of_bytes(data)
    served.repo.put_blob_bytes(d, data)
    rep = raw.call({"op": "get-blob", "digest": d, "offset": 6})
    assert rep["ok"] is False
    rep = raw.call({"op": "get-blob", "digest": d, "offset": 2, "length": 2})
    assert rep["length"] == 2 and raw.r.read(2) == b"ll"
    assert raw.call({"op": "blob-size", "digest": d})["size"] == 5


def test_oversized_frame_and_chunk_close_the_connection(served):
    raw = served.raw()
    raw.send(b"{" + b" " * (4 << 20) + b"\n")
    rep = raw.reply()
    assert rep["ok"] is False and "longer" in rep["message"]
    assert raw.closed()
    # A chunk header announcing more than the limit: error frame, then closed.
    raw = served.raw()
    d = digestmod.of_bytes(b"z" * 10)
    assert raw.call({"op": "put-blob", "digest": d, "size": 10})["offset"] == 0
    raw.send(struct.pack(">I", 1 << 30))
    rep = raw.reply()
    assert rep["ok"] is False and "limit" in rep["message"]
    assert raw.closed()
    assert not served.repo.has_blob(d)
    # Other connections are unaffected.
    with served.client() as r:
        assert r.list_refs() == []


def test_access_checks(tmp_path, local):
    make_image(local, "team/app", "1")
    make_image(local, "other", "1")
    full = Served(str(tmp_path / "srv"))
    with full.client() as r:
        copy(parse("team/app:1"), local, r)
        copy(parse("other:1"), local, r)
    full.close()
    ro = Served(str(tmp_path / "srv"), Access(read=True))
    with ro.client() as r:
        assert len(r.list_refs()) == 2
        with pytest.raises(PermissionDenied):
            r.put_blob_bytes(digestmod.of_bytes(b"q"), b"q")
        with pytest.raises(PermissionDenied):
            r.delete_ref("other", "1")
        with pytest.raises(PermissionDenied):
            r.gc()
    ro.close()
    team = Served(str(tmp_path / "srv"), Access.parse("read,write", "team/*"))
    with team.client() as r:
        assert [x.name for x in r.list_refs()] == ["team/app"]  # others are invisible
        with pytest.raises(PermissionDenied):
            r.resolve(parse("other:1"))
        with pytest.raises(PermissionDenied):
            copy(parse("other:1"), local, r, dest_ref=parse("other:2"))
        copy(parse("other:1"), local, r, dest_ref=parse("team/other:2"))
        with pytest.raises(PermissionDenied):
            r.delete_ref("team/other", "2")  # no delete permission
    team.close()
    wo = Served(str(tmp_path / "srv"), Access(read=False, write=True))
    with wo.client() as r:
        copy(parse("other:1"), local, r, dest_ref=parse("other:3"))  # a push works
        with pytest.raises(PermissionDenied):
            r.list_refs()
        with pytest.raises(PermissionDenied):
            r.open_blob(local.get_ref("other", "1"))
    wo.close()


def test_namespace(tmp_path, local):
    make_image(local, "app", "1")
    s = Served(str(tmp_path / "srv"), namespace="team")
    try:
        with s.client() as r:
            copy(parse("app:1"), local, r)
            assert [(x.name, x.version) for x in r.list_refs()] == [("app", "1")]
            assert r.resolve(parse("app")).name == "app"
        assert s.repo.get_ref("team/app", "1") == local.get_ref("app", "1")
        assert s.repo.get_ref("app", "1") is None
    finally:
        s.close()


def test_threads_share_one_connection(served, local, tmp_path):
    make_image(local, "many", "1", sizes=(10_000, 20_000, 500_000, 1 << 20, 7, 3000))
    with served.client() as r:  # no opener: the copy routine's 4 threads take turns
        copy(parse("many:1"), local, r, jobs=4)
        back = LayoutRepo(str(tmp_path / "back"), create=True)
        copy(parse("many:1"), r, back, jobs=4)
        assert back.fsck() == [] and back.get_ref("many", "1")
        # A thread that holds the only connection and asks again gets an error, not a hang.
        f = r.open_blob(local.get_ref("many", "1"))
        with pytest.raises(UsageError):
            r.list_refs()
        f.close()
        assert r.list_refs()


def test_opener_gives_parallel_connections(served, local):
    make_image(local, "par", "1", sizes=(1 << 20, 1 << 20, 1 << 20))
    b = served.pair()

    def opener():
        s = served.pair()
        return s.makefile("rb"), s.makefile("wb"), s.close

    with SmartRepo(b.makefile("rb"), b.makefile("wb"), opener=opener, max_connections=3) as r:
        copy(parse("par:1"), local, r, jobs=3)
        held = r.open_blob(local.get_ref("par", "1"))  # holds the first connection
        got: list = []
        t = threading.Thread(target=lambda: got.append(r.list_refs()))
        t.start()
        t.join(10)
        assert got and got[0][0].name == "par"  # answered on a second connection
        assert r._count == 2
        held.close()
    assert served.repo.fsck() == []


def test_same_blob_uploaded_by_two_clients(served):
    data = os.urandom(2 << 20)
    d = digestmod.of_bytes(data)
    errors: list[BaseException] = []

    def push() -> None:
        try:
            with served.client() as r:
                r.put_blob_bytes(d, data)
        except BaseException as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=push) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert errors == []
    assert served.repo.fsck() == [] and served.repo.has_blob(d)


def test_gc_spares_young_and_leased_blobs(served, local):
    make_image(local, "app", "1")
    orphan = os.urandom(1000)
    od = digestmod.of_bytes(orphan)
    with served.client() as r:
        copy(parse("app:1"), local, r)
        r.put_blob_bytes(od, orphan)
        old = time.time() - 7200
        os.utime(served.repo.blob_path(od), (old, old))
        with served.client() as admin:
            # The pushing connection leases what it sent until it closes.
            assert admin.gc(grace=0) == (0, 0)
    deadline = time.monotonic() + 10
    while os.listdir(os.path.join(served.repo.root, "tmp", "leases")) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    with served.client() as admin:
        assert admin.gc(grace=0) == (1, 1000)  # the server honours the grace it is given
        assert not admin.has_blob(od) and admin.resolve(parse("app:1"))
    assert served.repo.fsck() == []


# a real subprocess: srepo-server --stdio ----------------------------------------------
def _stdio(root: str, *extra: str, wrapper: list[str] | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "srepo_server.main", "--stdio", "--root", root, *extra]
    return subprocess.Popen((wrapper or []) + argv, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _smart(p: subprocess.Popen, **kw) -> SmartRepo:
    def closer() -> None:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return SmartRepo(p.stdout, p.stdin, closer=closer, **kw)


def test_stdio_subprocess_round_trip(tmp_path, local):
    d = make_image(local, "app", "1", sizes=(2 << 20, 100))
    root = str(tmp_path / "remote")
    LayoutRepo(root, create=True)
    p = _stdio(root)
    try:
        with _smart(p) as r:
            copy(parse("app:1"), local, r)
            assert r.resolve(parse("app")).digest == d
            with pytest.raises(DigestMismatch):
                r.put_blob_bytes(digestmod.of_bytes(b"a"), b"b")
            back = LayoutRepo(str(tmp_path / "back"), create=True)
            copy(parse("app:1"), r, back)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert back.fsck() == [] and LayoutRepo(root).fsck() == []


def test_stdio_not_a_repository(tmp_path):
    p = _stdio(str(tmp_path / "nothing"))
    try:
        # the class crosses the protocol: clients tell "no repo here" from "no such image"
        with pytest.raises(NotARepository, match="not a cocker/OCI repository"):
            _smart(p)
        assert p.wait(10) != 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_stdio_banner_noise_skipped_and_perms(tmp_path, local):
    make_image(local, "app", "1")
    root = str(tmp_path / "remote")
    LayoutRepo(root, create=True)
    # A login shell that prints a banner on stdout before the server starts.
    p = _stdio(root, "--perms", "read", wrapper=["sh", "-c", 'echo "Welcome!"; exec "$@"', "sh"])
    try:
        with _smart(p) as r:
            assert r.server_info["access"]["write"] is False
            with pytest.raises(PermissionDenied):
                copy(parse("app:1"), local, r)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_stdio_client_vanishes_mid_upload(tmp_path):
    root = str(tmp_path / "remote")
    repo = LayoutRepo(root, create=True)
    data = os.urandom(3 << 20)
    d = digestmod.of_bytes(data)
    p = _stdio(root)
    r = _smart(p)
    w = r.upload(d, len(data))
    w.write(data[:1 << 20])
    p.stdin.close()  # the client goes away mid-blob
    assert p.wait(10) == 0
    assert not repo.has_blob(d)
    p2 = _stdio(root)
    with _smart(p2) as r2:
        w = r2.upload(d, len(data))
        assert w.offset == 1 << 20
        w.write(data[w.offset:])
        w.commit()
    p2.wait(10)
    assert repo.fsck() == [] and repo.has_blob(d)


def test_client_reports_transport_errors(served):
    b = served.pair()
    r = SmartRepo(b.makefile("rb"), b.makefile("wb"))
    b.shutdown(socket.SHUT_RDWR)
    with pytest.raises(TransportError):
        r.list_refs()
    with pytest.raises(InvalidReference):
        r.blob_size("sha256:nothex")


def test_channel_stream_framing():
    from registry.wire.channel import ChannelStream
    a, b = socket.socketpair()
    try:
        s = ChannelStream(b)
        a.sendall(b"one\ntwo" + b"x" * 100 + b"\n" + b"y" * 50)
        assert s.readline(1000) == b"one\n"
        assert s.readline(10) == b"twoxxxxxxx"  # cut at the limit, like io.BufferedReader
        assert s.readline(1000) == b"x" * 93 + b"\n"
        assert s.read(20) == b"y" * 20
        def feed() -> None:
            a.sendall(b"z" * (3 << 20))
            a.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=feed)
        t.start()
        assert s.read(30) == b"y" * 30
        assert s.read(3 << 20) == b"z" * (3 << 20)
        assert s.read(5) == b"" and s.readline(10) == b""
        t.join(10)
    finally:
        a.close()
        b.close()


def test_smart_repo_over_channel_stream(served, local, tmp_path):
    from registry.wire.channel import ChannelStream
    make_image(local, "cs", "1", sizes=(2 << 20, 10))
    s = ChannelStream(served.pair())
    with SmartRepo(s, s, closer=s.close) as r:
        copy(parse("cs:1"), local, r)
        back = LayoutRepo(str(tmp_path / "back"), create=True)
        copy(parse("cs:1"), r, back)
    assert back.fsck() == [] and back.get_ref("cs", "1") == local.get_ref("cs", "1")
