"""The directory repository: refs with compare-and-swap, verified resumable uploads, gc, fsck."""

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from common.errors import Conflict, DigestMismatch, NotARepository, NotFound
from registry.oci import digest as dg
from registry.oci import manifest as oci
from registry.oci.reference import parse
from registry.repo import image as im
from registry.repo.copy import copy
from registry.repo.layout import LayoutRepo


def _image(repo, name, version, payload=b"layer-bytes"):
    d = dg.of_bytes(payload)
    repo.put_blob_bytes(d, payload)
    cfg = oci.new_config([d])
    return im.publish(repo, name, version, cfg, [oci.descriptor(oci.LAYER_TAR, payload)])


def test_publish_list_resolve_newest(tmp_path):
    repo = LayoutRepo(str(tmp_path / "r"), create=True)
    for v in ("1.9.1", "1.10.0", "_"):
        _image(repo, "app", v, v.encode())
    _image(repo, "app/sub", "1.0")
    assert [x.version for x in repo.list_refs("app")] and {x.name for x in repo.list_refs()} == {"app", "app/sub"}
    assert {x.version for x in repo.list_refs("app")} == {"1.9.1", "1.10.0", "_"}
    assert repo.resolve(parse("app")).version == "1.10.0"
    index = json.loads(Path(tmp_path / "r" / "index.json").read_text())
    names = sorted(m["annotations"][oci.REF_NAME] for m in index["manifests"])
    assert names == ["app/sub:1.0", "app:1.10.0", "app:1.9.1", "app:_"]
    assert json.loads(Path(tmp_path / "r" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


def test_not_a_repo(tmp_path):
    with pytest.raises(NotARepository):
        LayoutRepo(str(tmp_path))


def test_compare_and_swap(tmp_path):
    repo = LayoutRepo(str(tmp_path), create=True)
    a = _image(repo, "x", "1", b"a")
    b = _image(repo, "y", "1", b"b")
    with pytest.raises(Conflict):
        repo.put_ref("x", "1", b.digest, expect=None)
    with pytest.raises(Conflict):
        repo.put_ref("x", "1", b.digest, expect=b.digest)
    repo.put_ref("x", "1", b.digest, expect=a.digest)
    assert repo.get_ref("x", "1") == b.digest
    with pytest.raises(Conflict):
        repo.delete_ref("x", "1", expect=a.digest)
    repo.delete_ref("x", "1", expect=b.digest)
    assert repo.get_ref("x", "1") is None


def test_dangling_ref_refused(tmp_path):
    repo = LayoutRepo(str(tmp_path), create=True)
    cfg = oci.canonical_json(oci.new_config(["sha256:" + "1" * 64]))
    repo.put_blob_bytes(dg.of_bytes(cfg), cfg)
    m = oci.canonical_json(oci.new_manifest(cfg, [oci.descriptor(oci.LAYER_TAR, "sha256:" + "2" * 64, 5)]))
    repo.put_blob_bytes(dg.of_bytes(m), m)
    with pytest.raises(NotFound):
        repo.put_ref("x", "1", dg.of_bytes(m))
    assert repo.list_refs() == []


def test_upload_verifies_and_resumes(tmp_path):
    repo = LayoutRepo(str(tmp_path), create=True)
    data = os.urandom(3 << 20)
    d = dg.of_bytes(data)
    w = repo.upload(d, len(data))
    w.write(data[:1 << 20])
    w.abort()  # cut off
    assert not repo.has_blob(d)
    w = repo.upload(d, len(data))
    assert w.offset == 1 << 20
    w.write(data[w.offset:])
    w.commit()
    assert repo.read_blob(d, limit=8 << 20) == data
    bad = repo.upload("sha256:" + "f" * 64, 4)
    bad.write(b"evil")
    with pytest.raises(DigestMismatch):
        bad.commit()
    assert not repo.has_blob("sha256:" + "f" * 64)


def test_digest_is_validated_before_paths(tmp_path):
    repo = LayoutRepo(str(tmp_path), create=True)
    for evil in ("sha256:../../etc/passwd", "sha256:" + "A" * 64, "../x"):
        with pytest.raises(Exception) as e:
            repo.blob_size(evil)
        assert "invalid digest" in str(e.value)


def test_gc_keeps_reachable_and_fresh(tmp_path):
    repo = LayoutRepo(str(tmp_path), create=True)
    img = _image(repo, "x", "1", b"kept")
    orphan = dg.of_bytes(b"orphan")
    repo.put_blob_bytes(orphan, b"orphan")
    assert repo.gc()[0] == 0  # young blobs survive: a push may be about to publish them
    removed, _ = repo.gc(grace=0)
    assert removed == 1 and not repo.has_blob(orphan)
    assert repo.has_blob(img.digest) and repo.fsck() == []


def test_fsck_finds_corruption(tmp_path):
    repo = LayoutRepo(str(tmp_path), create=True)
    img = _image(repo, "x", "1", b"payload")
    with open(repo.blob_path(img.layers[0]["digest"]), "wb") as f:
        f.write(b"tampered")
    problems = repo.fsck()
    assert any("corrupt" in p for p in problems)


def test_copy_between_layouts_sends_only_missing(tmp_path):
    a = LayoutRepo(str(tmp_path / "a"), create=True)
    b = LayoutRepo(str(tmp_path / "b"), create=True)
    _image(a, "app", "1.0", b"base")
    r1 = copy(parse("app"), a, b)
    assert r1.blobs_sent == 3 and b.get_ref("app", "1.0") == a.get_ref("app", "1.0")
    r2 = copy(parse("app:1.0"), a, b)
    assert r2.blobs_sent == 0 and not r2.published


def _publish_many(root, version):
    repo = LayoutRepo(root)
    _image(repo, "race", version, version.encode() * 1000)


def test_concurrent_publishers(tmp_path):
    root = str(tmp_path / "r")
    LayoutRepo(root, create=True)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_publish_many, args=(root, f"1.{i}")) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    repo = LayoutRepo(root)
    assert {r.version for r in repo.list_refs("race")} == {f"1.{i}" for i in range(8)}
    assert len(json.loads(Path(os.path.join(root, "index.json")).read_text())["manifests"]) == 8
    assert repo.fsck() == []


def test_index_follows_each_ref_change_and_heals(tmp_path):
    repo = LayoutRepo(str(tmp_path), create=True)
    a = _image(repo, "x", "1", b"a")
    _image(repo, "x", "2", b"b")
    repo.put_ref("y", "1", a.digest)
    repo.delete_ref("x", "2")

    def names():
        index = json.loads(Path(tmp_path / "index.json").read_text())
        return [(m["annotations"][oci.REF_NAME], m["digest"]) for m in index["manifests"]]
    assert names() == [("x:1", a.digest), ("y:1", a.digest)]
    (tmp_path / "index.json").write_text("{torn")  # unreadable: rebuilt from the refs
    repo.put_ref("z", "1", a.digest)
    assert names() == [("x:1", a.digest), ("y:1", a.digest), ("z:1", a.digest)]
