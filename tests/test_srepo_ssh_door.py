"""srepo-server's own SSH door, for real: a server process on 127.0.0.1 with its own host key
and authorized_keys, reached through `srepo://` by the CLI and by the copy routine."""

from __future__ import annotations

import os
import threading
import time

import pytest

from common.errors import AuthError, PermissionDenied
from registry.oci import digest as digestmod
from registry.oci.reference import parse
from registry.repo.copy import copy
from registry.repo.layout import LayoutRepo
from registry.transports.ssh import connect as ssh
from tests.support.srepo import start_door
from tests.support.sshd import keygen
from tests.test_smart_protocol import make_image

KEYS = {
    "admin": 'srepo-perms="all"',
    "rw": 'srepo-perms="read,write"',
    "ro": "",  # no options: read only
    "team": 'srepo-perms="read,write" srepo-prefixes="team/*"',
}


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    d = start_door(str(tmp_path_factory.mktemp("door")), KEYS)
    try:
        yield d
    finally:
        d.stop()


def test_cli_push_pull(door, tmp_path, cocker):
    a = str(tmp_path / "a")
    b = str(tmp_path / "b")
    from registry.repo.store import Store
    digest = make_image(Store(a), "web", "1.0", sizes=(300_000, 5000))
    env = door.client_env("rw")
    url = door.url()
    cocker("image", "push", "web:1.0", "--repo", url, env={**env, "COCKER_HOME": a})
    assert door.log and "generated a new host key" in door.read_log()
    assert LayoutRepo(door.root).get_ref("web", "1.0") == digest
    out = cocker("image", "search", "--repo", url, "--json", env={**env, "COCKER_HOME": b})
    assert "web" in out.stdout
    cocker("image", "pull", "web", "--repo", url, env={**env, "COCKER_HOME": b})
    assert Store(b).get_ref("web", "1.0") == digest
    assert Store(b).fsck() == []
    # A second push sends nothing and is quick.
    t0 = time.monotonic()
    cocker("image", "push", "web:1.0", "--repo", url, env={**env, "COCKER_HOME": a})
    assert time.monotonic() - t0 < 10


def test_read_only_key_cannot_push(door, tmp_path, cocker):
    from registry.repo.store import Store
    home = str(tmp_path / "h")
    make_image(Store(home), "ro-try", "1")
    p = cocker("image", "push", "ro-try:1", "--repo", door.url(), check=False,
               env={**door.client_env("ro"), "COCKER_HOME": home})
    assert p.returncode != 0
    assert "may not write" in p.stderr and "Traceback" not in p.stderr
    assert LayoutRepo(door.root).get_ref("ro-try", "1") is None
    with door.open("ro") as r:  # but it can read
        assert isinstance(r.list_refs(), list)


def test_prefix_limited_key(door, tmp_path):
    local = LayoutRepo(str(tmp_path / "l"), create=True)
    make_image(local, "app", "1")
    with door.open("team") as r:
        with pytest.raises(PermissionDenied):
            copy(parse("app:1"), local, r)
        copy(parse("app:1"), local, r, dest_ref=parse("team/app:1"))
        assert all(x.name.startswith("team/") for x in r.list_refs())
    with door.open("team", prefix="team") as r:  # srepo://host:port/team: a namespace
        copy(parse("app:1"), local, r, dest_ref=parse("app:2"))
        assert {x.version for x in r.list_refs("app")} == {"1", "2"}
    with door.open("team", prefix="other") as r:
        with pytest.raises(PermissionDenied):
            copy(parse("app:1"), local, r)
    assert LayoutRepo(door.root).get_ref("team/app", "2") == local.get_ref("app", "1")
    assert LayoutRepo(door.root).get_ref("app", "1") is None


def test_unknown_key_refused(door, tmp_path):
    stranger = keygen(str(tmp_path / "stranger"), "stranger@test")
    from registry.transports.srepo.transport import open_srepo
    with pytest.raises(AuthError):
        open_srepo(door.url(), identity=stranger, known_hosts=door.known_hosts, config_path=None)
    assert "refused: not in authorized_keys" in door.read_log()


def test_only_the_protocol_is_served(door):
    client = ssh.connect("127.0.0.1", door.port, "x", identity=door.keys["admin"],
                         known_hosts=door.known_hosts, config_path=None)
    try:
        rc, out, err = ssh.run(client, "sh -c id")
        assert rc == 127 and b"only speaks the smart protocol" in err and out == b""
    finally:
        client.close()


def test_concurrent_pulls_and_pushes(door, tmp_path):
    src = LayoutRepo(str(tmp_path / "src"), create=True)
    make_image(src, "shared", "1", sizes=(1 << 20, 200_000, 3000))
    with door.open("admin") as r:
        copy(parse("shared:1"), src, r)
    for i in range(4):
        make_image(src, f"pushed{i}", "1", sizes=(500_000, 1000), seed=bytes([i]))
    errors: list[BaseException] = []

    def pull(i: int) -> None:
        try:
            dst = LayoutRepo(str(tmp_path / f"pull{i}"), create=True)
            with door.open("rw") as r:
                copy(parse("shared"), r, dst)
            assert dst.fsck() == []
        except BaseException as e:  # collected and reported
            errors.append(e)

    def push(i: int) -> None:
        try:
            with door.open("rw") as r:
                copy(parse(f"pushed{i}:1"), src, r)
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=pull, args=(i,)) for i in range(8)]
    ts += [threading.Thread(target=push, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert errors == []
    server = LayoutRepo(door.root)
    for i in range(4):
        assert server.get_ref(f"pushed{i}", "1") == src.get_ref(f"pushed{i}", "1")
    assert server.fsck() == []


def test_gc_during_a_push(door, tmp_path):
    src = LayoutRepo(str(tmp_path / "src"), create=True)
    make_image(src, "gcpush", "1", sizes=(400_000, 300_000, 200_000))
    # Real garbage, old enough to be collected.
    junk = os.urandom(5000)
    jd = digestmod.of_bytes(junk)
    server = LayoutRepo(door.root)
    server.put_blob_bytes(jd, junk)
    old = time.time() - 7200
    os.utime(server.blob_path(jd), (old, old))
    collected: list[tuple[int, int]] = []
    with door.open("admin") as admin, door.open("rw") as r:
        def gc_now(_digest: str) -> None:
            if not collected:  # after the first blob landed, before the ref exists
                collected.append(admin.gc(grace=0))
        copy(parse("gcpush:1"), src, r, jobs=1, on_blob=gc_now)
        assert r.resolve(parse("gcpush:1")).digest == src.get_ref("gcpush", "1")
    assert collected and collected[0][0] >= 1 and not server.has_blob(jd)
    assert server.fsck() == []


def test_kill_during_upload_then_retry(tmp_path):
    d = start_door(str(tmp_path / "door"), {"admin": 'srepo-perms="all"'})
    try:
        data = os.urandom(12 << 20)
        dg = digestmod.of_bytes(data)
        partial = os.path.join(d.root, "tmp", "uploads", digestmod.hex_of(dg) + ".partial")
        r = d.open("admin")
        w = r.upload(dg, len(data))
        w.write(data[:6 << 20])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
                not os.path.exists(partial) or os.path.getsize(partial) < 6 << 20):
            time.sleep(0.02)
        d.kill()  # kill -9 in the middle of the upload
        try:
            r.close()
        except Exception:  # the connection is dead, as expected
            pass
        server = LayoutRepo(d.root)
        assert not server.has_blob(dg) and server.fsck() == []
        d.start()
        with d.open("admin") as r2:
            w = r2.upload(dg, len(data))
            assert w.offset == 6 << 20  # the retry continues
            w.write(data[w.offset:])
            w.commit()
            assert r2.blob_size(dg) == len(data)
        assert server.fsck() == []
        assert d.stop() == 0  # SIGTERM: a clean exit
        assert "stopped" in d.read_log()
    finally:
        d.stop()


def test_idle_connections_do_not_block_others(door, tmp_path):
    import socket
    idle = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", door.port), timeout=5))
        local = LayoutRepo(str(tmp_path / "l"), create=True)
        make_image(local, "busy", "1")
        t0 = time.monotonic()
        with door.open("rw") as r:
            copy(parse("busy:1"), local, r)
            assert r.get_ref("busy", "1") == local.get_ref("busy", "1")
        assert time.monotonic() - t0 < 20
    finally:
        for s in idle:
            s.close()
