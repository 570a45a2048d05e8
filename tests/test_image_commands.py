"""The image commands as users run them: ls, inspect, history, tag, rm, gc, fsck, import."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder import importers
from registry.oci import reference as refmod
from registry.repo.store import Store

VERSIONS = ["_", "1.9.1", "1.10.0", "2.0.0-rc1", "2.0.0", "1.2"]


def one_line_error(p: subprocess.CompletedProcess) -> None:
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("cocker: "), p.stderr
    assert "Traceback" not in p.stderr


@pytest.fixture
def versions(home, busybox_rootfs):
    """app in several versions (sharing one layer): two imported, the rest tagged."""
    store = Store(home)
    first = importers.import_image(store, busybox_rootfs, f"app:{VERSIONS[0]}")
    importers.import_image(store, busybox_rootfs, f"app:{VERSIONS[1]}")
    for v in VERSIONS[2:]:
        store.put_ref("app", v, first.digest)
    return store


def test_ls_orders_versions_and_json_fields(versions, cocker):
    out = json.loads(cocker("image", "ls", "--json").stdout)
    assert [i["version"] for i in out] == ["_", "1.2", "1.9.1", "1.10.0", "2.0.0-rc1", "2.0.0"]
    for i in out:
        assert {"name", "version", "digest", "layers", "size", "created"} <= set(i)
        assert i["name"] == "app" and i["digest"].startswith("sha256:")
        assert isinstance(i["size"], int) and i["layers"][0].startswith("sha256:")
    assert len({tuple(i["layers"]) for i in out}) == 1  # versions share the layer
    table = cocker("image", "ls").stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "VERSION"] and "MB" in table[1]


def test_bare_name_means_newest(versions, cocker):
    info = json.loads(cocker("image", "inspect", "app", "--json").stdout)
    assert info["version"] == "2.0.0"
    for k in ("name", "version", "digest", "layers", "size", "created"):
        assert k in info
    text = cocker("image", "inspect", "app:1.9.1").stdout
    assert "app:1.9.1" in text and "Layers:" in text


def test_history(versions, cocker):
    out = cocker("image", "history", "app:1.2").stdout
    assert "cocker image import" in out
    assert json.loads(cocker("image", "history", "app:1.2", "--json").stdout)[0]["created_by"]


def test_tag_rm_gc_fsck(versions, cocker):
    d = json.loads(cocker("image", "inspect", "app:1.2", "--json").stdout)["digest"]
    cocker("image", "tag", "app:1.2", "copy:9.9")
    assert json.loads(cocker("image", "inspect", "copy:9.9", "--json").stdout)["digest"] == d
    one_line_error(cocker("image", "tag", "app:1.2", "copy:9.9", check=False))  # exists
    cocker("image", "tag", "app:2.0.0", "copy:9.9", "--force")
    cocker("image", "rm", "app", "--all-versions")
    cocker("image", "rm", "copy:9.9")
    assert json.loads(cocker("image", "ls", "--json").stdout) == []
    out = cocker("image", "gc", "--grace", "0").stdout
    assert "removed" in out and not os.listdir(os.path.join(versions.root, "blobs", "sha256"))
    assert cocker("image", "fsck").stdout.startswith("ok: 0 blob(s)")


def test_fsck_finds_corruption(versions, cocker):
    blob = versions.all_blobs()[0]
    with open(versions.blob_path(blob), "ab") as f:
        f.write(b"rot")
    p = cocker("image", "fsck", check=False)
    assert p.returncode == 1 and "corrupt" in p.stdout


@pytest.mark.parametrize("args,needle", [
    (("image", "inspect", "missing:1"), "not found"),
    (("image", "inspect", "Bad_Name"), "invalid"),
    (("image", "tag", "app:1.2", "x:"), "invalid"),
    (("image", "rm", "nope"), "not found"),
    (("image", "import", "/nonexistent/path", "a:1"), "no such file"),
])
def test_bad_input_is_one_line(versions, cocker, args, needle):
    p = cocker(*args, check=False)
    one_line_error(p)
    assert needle in p.stderr.lower()


def test_corrupt_archive_is_one_line_and_leaves_store_as_it_was(versions, cocker, tmp_path):
    before = sorted(os.listdir(os.path.join(versions.root, "blobs", "sha256")))
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    one_line_error(cocker("image", "import", str(bad), "broken:1", check=False))
    (tmp_path / "manifest.json").write_text("[not json")
    one_line_error(cocker("image", "import", str(tmp_path), "broken:2", check=False))
    assert [r.version for r in versions.list_refs("broken")] == []
    assert sorted(os.listdir(os.path.join(versions.root, "blobs", "sha256"))) == before
    assert versions.fsck() == []


def test_lock_held_by_another_process(versions, cocker):
    fd = os.open(os.path.join(versions.root, ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        p = cocker("image", "tag", "app:1.2", "locked:1", check=False,
                   env={"COCKER_LOCK_TIMEOUT": "0.3"})
        one_line_error(p)
        assert "locked" in p.stderr
    finally:
        os.close(fd)
    assert versions.get_ref("locked", "1") is None


def test_concurrent_imports_into_one_store(home, busybox_rootfs, tmp_path):
    """Several processes import at once (some the same content, one the same ref):
    every ref lands, nothing is corrupt."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "hello").write_text("hi\n")
    jobs = [(busybox_rootfs, f"par:{i}") for i in range(4)] + [(str(other), "small:1")]
    env = dict(os.environ, COCKER_HOME=home, COCKER_QUIET="1")
    procs = [subprocess.Popen([sys.executable, "-m", "cocker.main", "image", "import", src, ref,
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for src, ref in jobs]
    same = [subprocess.Popen([sys.executable, "-m", "cocker.main", "image", "import", str(other),
                              "race:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert json.loads(out)["digest"].startswith("sha256:")
    results = [p.communicate(timeout=120) + (p.returncode,) for p in same]
    assert sorted(r[2] for r in results) in ([0, 0], [0, 1])  # one may lose the race...
    for _out, err, rc in results:
        if rc:
            assert "already exists" in err and err.count("\n") == 1  # ...cleanly
    store = Store(home)
    refs = {f"{r.name}:{r.version}" for r in store.list_refs()}
    assert refs == {f"par:{i}" for i in range(4)} | {"small:1", "race:1"}
    assert store.fsck() == []
    index = json.loads(Path(os.path.join(home, "index.json")).read_text())
    assert len(index["manifests"]) == len(refs)


@pytest.mark.root
def test_full_disk_is_one_line_and_leaves_no_ref(busybox_rootfs, tmp_path, cocker):
    home = tmp_path / "tiny"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(home)], check=True)
    try:
        p = cocker("image", "import", busybox_rootfs, "big:1", check=False,
                   env={"COCKER_HOME": str(home)})
        one_line_error(p)
        assert "no space left" in p.stderr
        store = Store(str(home))
        assert store.list_refs() == [] and store.fsck() == []
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)


@pytest.mark.root
def test_rm_refuses_a_version_a_container_was_created_from(versions, cocker):
    """Even when another tag names the same image: the container was made from this version."""
    cocker("container", "create", "--name", "pinned", "app:1.9.1", "true")
    try:
        cocker("image", "tag", "app:1.9.1", "alias:1")
        p = cocker("image", "rm", "app:1.9.1", check=False)
        one_line_error(p)
        assert "pinned" in p.stderr and "--force" in p.stderr
        assert versions.resolve(refmod.parse("app:1.9.1"))
        cocker("image", "rm", "alias:1")            # a tag nobody was created from goes
        cocker("image", "rm", "app:1.9.1", "--force")
        assert "1.9.1" not in [i["version"] for i in json.loads(cocker("image", "ls", "app",
                                                                        "--json").stdout)]
    finally:
        cocker("container", "rm", "-f", "pinned", check=False)
