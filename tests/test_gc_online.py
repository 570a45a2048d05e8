"""gc that is safe while people push and pull (issue 13): the defects found on the first
version, each against real repositories (directory, SFTP and the smart protocol through a
real sshd, srepo-server's HTTP door as a subprocess)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pytest

from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci.reference import parse
from registry.repo.copy import copy
from registry.repo.image import publish
from registry.repo.layout import LayoutRepo
from registry.repo.repository import LEASES, Repository
from registry.transports.remotes import open_repo
from srepo_server import http_store
from tests.support.http_calls import call, conn, push_blob
from tests.support.http_servers import SrepoHttp
from tests.support.sshd import scripts_dir, sshd

KINDS = ["dir", "sftp", "smart"]
OLD = time.time() - 7 * 24 * 3600


def layer(n: int) -> bytes:
    return os.urandom(n)


def make_image(repo: Repository, name: str, version: str, layers: list[bytes]) -> str:
    descs = []
    for data in layers:
        repo.put_blob_bytes(digestmod.of_bytes(data), data)
        descs.append(oci.descriptor(oci.LAYER_TAR, data))
    cfg = oci.new_config([x["digest"] for x in descs])
    return publish(repo, name, version, cfg, descs, force=True).digest


def age(root: str, digest: str) -> None:
    p = os.path.join(root, "blobs", "sha256", digestmod.hex_of(digest))
    os.utime(p, (OLD, OLD))


@contextmanager
def open_dst(kind: str, root: str, sshd) -> Iterator[Repository]:
    if kind == "dir":
        with open_repo(root, init=True) as r:
            yield r
        return
    url = sshd.url(root) + f"?mode={kind}"
    if kind == "smart":
        url += "&command=" + os.path.join(scripts_dir(), "srepo-server")
    with open_repo(url, init=True, **sshd.connect_kwargs()) as r:
        yield r


def no_leases(root: str, timeout: float = 10) -> None:
    """A server's lease goes when its connection's handler sees the end of the stream."""
    deadline = time.monotonic() + timeout
    d = os.path.join(root, "tmp", "leases")
    while os.path.isdir(d) and os.listdir(d) and time.monotonic() < deadline:
        time.sleep(0.05)


# gc during a push -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_gc_between_missing_check_and_publish_keeps_the_blobs_the_push_was_told_exist(
        tmp_path, sshd, kind):
    """The push is told the old base layer exists; a gc (grace 0) runs before the manifest
    lands. Before leases, the base layer was swept and the push failed with NotFound."""
    root = str(tmp_path / "remote")
    src = LayoutRepo(str(tmp_path / "src"), create=True)
    base, new = layer(300_000), layer(5000)
    digest = make_image(src, "app", "2", [base, new])
    server = LayoutRepo(root, create=True)
    server.put_blob_bytes(digestmod.of_bytes(base), base)  # unreferenced, old: garbage
    age(root, digestmod.of_bytes(base))
    swept = []

    def gc_now(_blob: str) -> None:
        swept.append(LayoutRepo(root).gc(grace=0))

    with open_dst(kind, root, sshd) as dst:
        res = copy(parse("app:2"), src, dst, on_blob=gc_now)
        assert res.published and res.blobs_skipped == 1
        assert swept and swept[0][0] == 0
        assert dst.get_ref("app", "2") == digest
    no_leases(root)
    assert server.fsck() == []
    assert LayoutRepo(root).gc(grace=0) == (0, 0)  # everything is referenced now


@pytest.mark.parametrize("kind", KINDS)
def test_gc_grace_zero_is_honoured_once_the_push_is_over(tmp_path, sshd, kind):
    """`repo gc --grace 0` through the smart protocol used the server's 600 s floor and
    removed nothing where SFTP removed the orphans; now every backend removes them."""
    root = str(tmp_path / "remote")
    src = LayoutRepo(str(tmp_path / "src"), create=True)
    make_image(src, "app", "1", [layer(4000)])
    orphans = [layer(1000 + i) for i in range(3)]
    with open_dst(kind, root, sshd) as dst:
        copy(parse("app:1"), src, dst)
        for o in orphans:
            dst.put_blob_bytes(digestmod.of_bytes(o), o)
    no_leases(root)
    with open_dst(kind, root, sshd) as dst:
        assert dst.gc(grace=3600) == (0, 0)  # young: a push may be about to publish them
        removed, freed = dst.gc(grace=0)
        assert (removed, freed) == (3, sum(len(o) for o in orphans))
        assert dst.resolve(parse("app:1"))
    assert LayoutRepo(root).fsck() == []


# same content, twice at once ----------------------------------------------------------------
def test_same_content_pushed_twice_at_once_both_succeed(tmp_path):
    """The loser of the compare-and-swap used to fail with 'already exists' although the
    ref holds exactly what it wanted."""
    src = LayoutRepo(str(tmp_path / "src"), create=True)
    digest = make_image(src, "app", "1", [layer(2000)])
    root = str(tmp_path / "dst")
    LayoutRepo(root, create=True)

    class Racing(LayoutRepo):
        """The other push publishes between this one's ref check and its put_ref."""

        def put_ref(self, name, version, d, expect=None):
            res = copy(parse("app:1"), src, LayoutRepo(root), force=False)
            assert res.published
            super().put_ref(name, version, d, expect)

    res = copy(parse("app:1"), src, Racing(root), force=False)
    assert not res.published and LayoutRepo(root).get_ref("app", "1") == digest


# digest-only manifests ------------------------------------------------------------------------
@pytest.fixture
def door(tmp_path):
    srv = SrepoHttp(str(tmp_path / "door-repo"), str(tmp_path))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", ["dir", "sftp"])
def test_gc_keeps_a_manifest_pushed_by_digest_through_the_http_door(door, tmp_path, sshd,
                                                                     kind):
    """`skopeo copy docker://host/name@sha256:...` and multi-arch children are pushed by
    digest only; `cocker repo gc` on the directory or over SFTP used to delete them."""
    c = conn(door)
    data = layer(3000)
    ld = push_blob(c, "app", data)
    cfg = oci.canonical_json(oci.new_config([ld]))
    push_blob(c, "app", cfg)
    manifest = oci.canonical_json(oci.new_manifest(cfg, [oci.descriptor(oci.LAYER_TAR, data)]))
    md = digestmod.of_bytes(manifest)
    r, body = call(c, "PUT", f"/v2/app/manifests/{md}", manifest,
                   {"Content-Type": oci.MANIFEST})
    assert r.status == 201, body
    for d in (ld, digestmod.of_bytes(cfg), md):
        age(door.root, d)
    with open_dst(kind, door.root, sshd) as repo:
        assert repo.gc(grace=0) == (0, 0)
    assert LayoutRepo(door.root).missing_blobs([ld, md]) == []
    r, body = call(c, "GET", f"/v2/app/manifests/{md}", headers={"Accept": oci.MANIFEST})
    assert r.status == 200 and body == manifest
    # Deleted by digest, it is garbage like any other.
    r, _ = call(c, "DELETE", f"/v2/app/manifests/{md}")
    assert r.status == 202
    assert http_store.gc(LayoutRepo(door.root), grace=0)[0] == 3


# srepo-server --gc-interval -------------------------------------------------------------------
def test_srepo_server_collects_garbage_on_its_own(tmp_path):
    root = str(tmp_path / "repo")
    repo = LayoutRepo(root, create=True)
    digest = make_image(repo, "app", "1", [layer(3000)])
    orphan = layer(1234)
    od = digestmod.of_bytes(orphan)
    repo.put_blob_bytes(od, orphan)
    age(root, od)
    srv = SrepoHttp(root, str(tmp_path), extra=["--gc-interval", "0.2", "--gc-grace", "60"])
    try:
        deadline = time.monotonic() + 20
        while repo.has_blob(od) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not repo.has_blob(od)
        assert repo.get_ref("app", "1") == digest and repo.fsck() == []
    finally:
        srv.stop()


def test_a_push_to_a_repository_without_leases_resends_what_a_gc_took(tmp_path):
    """Where no lease protects a push (a registry whose gc runs on its own host), the blob
    it was told exists can vanish before the manifest lands: the push sends it again and
    publishes, instead of failing with NotFound."""
    root = str(tmp_path / "remote")
    src = LayoutRepo(str(tmp_path / "src"), create=True)
    base, new = layer(300_000), layer(5000)
    digest = make_image(src, "app", "2", [base, new])
    server = LayoutRepo(root, create=True)
    server.put_blob_bytes(digestmod.of_bytes(base), base)
    age(root, digestmod.of_bytes(base))

    class Unleased(LayoutRepo):
        def capabilities(self) -> frozenset[str]:
            return super().capabilities() - {LEASES}

        def lease(self, digests):
            return nullcontext()

    res = copy(parse("app:2"), src, Unleased(root),
               on_blob=lambda _d: LayoutRepo(root).gc(grace=0))
    assert res.published and server.get_ref("app", "2") == digest
    assert server.fsck() == []
