"""Import and export in every format, and interop with skopeo, umoci and podman."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from builder import archive_formats as af
from builder import exporters, importers
from common.errors import CockerError, Conflict, CorruptImage, UsageError
from registry.repo import image as imagemod
from registry.repo.store import Store
from tests.conftest import make_busybox_rootfs, run_cocker
from tests.support.codec import snapshot
from tests.support.tools import tool

SKOPEO = tool("skopeo")
UMOCI = tool("umoci")
PODMAN = tool("podman")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One store with bb:1.0 (zstd, from a busybox tree) shared by the module's tests."""
    base = tmp_path_factory.mktemp("io")
    rootfs = make_busybox_rootfs(str(base / "rootfs"))
    with open(os.path.join(rootfs, "etc", "motd"), "w") as f:
        f.write("hello\n")
    store = Store(str(base / "home"))
    res = importers.import_image(store, rootfs, "bb:1.0")

    class World:
        pass

    w = World()
    w.base, w.rootfs, w.store, w.digest = str(base), rootfs, store, res.digest
    w.expected = snapshot(rootfs)
    return w


def _flat(store: Store, ref: str, where: str) -> dict:
    exporters.export_image(store, ref, where, "rootfs")
    return snapshot(where)


def _fresh(tmp_path) -> Store:
    return Store(str(tmp_path / "home2"))


def test_detect(world, tmp_path):
    assert af.detect(world.rootfs) == af.ROOTFS_DIR
    out = str(tmp_path / "x.tar")
    subprocess.run(["tar", "-C", world.rootfs, "-cf", out, "."], check=True)
    assert af.detect(out) == af.ROOTFS_TAR
    exporters.export_image(world.store, "bb:1.0", str(tmp_path / "o.tar"), "oci")
    assert af.detect(str(tmp_path / "o.tar")) == af.OCI_TAR
    exporters.export_image(world.store, "bb:1.0", str(tmp_path / "d.tar"), "docker-archive")
    assert af.detect(str(tmp_path / "d.tar")) == af.DOCKER_ARCHIVE
    with pytest.raises(CockerError):
        af.detect(str(tmp_path / "missing"))


@pytest.mark.parametrize("kind", ["tar", "gzip", "zstd"])
def test_rootfs_tarballs_match_the_directory(world, tmp_path, kind):
    """tar keeps whole-second mtimes and numeric owners, so every route gives one layer."""
    out = str(tmp_path / f"rootfs.{kind}")
    cmd = {"tar": "tar -C {r} -cf {o} .", "gzip": "tar -C {r} -czf {o} .",
           "zstd": "tar -C {r} -c . | zstd -q -T0 -o {o}"}[kind]
    subprocess.run(cmd.format(r=world.rootfs, o=out), shell=True, check=True)
    store = _fresh(tmp_path)
    res = importers.import_image(store, out, "bb:1.0")
    img = imagemod.load(store, "bb:1.0")
    assert img.diff_ids == imagemod.load(world.store, "bb:1.0").diff_ids
    assert res.format == af.ROOTFS_TAR
    assert _flat(store, "bb:1.0", str(tmp_path / "flat")) == world.expected


@pytest.mark.parametrize("fmt,dest", [("oci", "layout"), ("oci", "layout.tar"),
                                      ("docker-archive", "image.tar"),
                                      ("cockerimage", "bb:1.0.cockerimage"),
                                      ("rootfs", "tree"), ("rootfs", "tree.tar.gz")])
def test_export_then_import_round_trip(world, tmp_path, fmt, dest):
    path = exporters.export_image(world.store, "bb:1.0", str(tmp_path / dest), fmt)
    store = _fresh(tmp_path)
    ref = None if fmt in ("oci", "cockerimage") else "bb:1.0"  # those name themselves
    res = importers.import_image(store, path, ref)
    assert res.ref == "bb:1.0"
    if fmt in ("oci", "docker-archive"):
        assert res.digest == world.digest  # same config, same layer bytes
    assert _flat(store, "bb:1.0", str(tmp_path / "flat")) == world.expected
    assert store.fsck() == []
    assert not [n for n in os.listdir(tmp_path) if "cocker-tmp" in n]


def test_docker_dir_and_cli_format_lists(world, tmp_path):
    from cocker.commands import image_io
    assert image_io.IMPORT_FORMATS == af.FORMATS
    assert image_io.EXPORT_FORMATS == exporters.EXPORT_FORMATS
    path = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "d.tar"), "docker-archive")
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    subprocess.run(["tar", "-C", str(extracted), "-xf", path], check=True)
    store = _fresh(tmp_path)
    res = importers.import_image(store, str(extracted))
    assert res.format == af.DOCKER_DIR and res.ref == "bb:1.0" and res.digest == world.digest


def test_plain_oci_layout_names_the_version(world, tmp_path):
    out = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "l"), "oci")
    index = json.loads(Path(os.path.join(out, "index.json")).read_text())
    (m,) = index["manifests"]
    assert m["annotations"]["org.opencontainers.image.ref.name"] == "1.0"
    assert m["annotations"][importers.NAME_ANNOTATION] == "bb:1.0"
    assert sorted(os.listdir(out)) == ["blobs", "index.json", "oci-layout"]


def test_docker_25_style_layout_names_itself(world, tmp_path):
    layout = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "l"), "oci")
    index_path = os.path.join(layout, "index.json")
    index = json.loads(Path(index_path).read_text())
    index["manifests"][0]["annotations"] = {
        "org.opencontainers.image.ref.name": "latest",
        "io.containerd.image.name": "docker.io/library/busybox:latest"}
    Path(index_path).write_text(json.dumps(index))
    assert importers.import_image(_fresh(tmp_path), layout).ref == "busybox:latest"


def test_multi_image_archive_needs_a_choice(world, tmp_path):
    store = _fresh(tmp_path)
    src = Store(str(tmp_path / "src"))
    first = importers.import_image(src, world.rootfs, "bb:1.0")
    importers.import_image(src, world.rootfs, "other:2.0", compression="gzip")
    layout = str(tmp_path / "l")
    for ref in ("bb:1.0", "other:2.0"):
        exporters.export_image(src, ref, layout, "oci")
    with pytest.raises(UsageError, match="--source-ref"):
        importers.import_image(store, layout, None)
    res = importers.import_image(store, layout, None, source_ref="2.0")
    assert res.ref == "other:2.0"
    assert importers.import_image(store, layout, "bb:1.0").digest == first.digest


@pytest.mark.root
def test_rootfs_device_nodes_are_left_to_the_runtime(world, tmp_path):
    rootfs = str(tmp_path / "rootfs")
    shutil.copytree(world.rootfs, rootfs, symlinks=True)
    os.mknod(os.path.join(rootfs, "dev", "null"), 0o20666, os.makedev(1, 3))
    tarball = str(tmp_path / "rootfs.tar")
    subprocess.run(["tar", "-C", rootfs, "-cf", tarball, "."], check=True)
    store = _fresh(tmp_path)
    for i, src in enumerate((rootfs, tarball)):
        importers.import_image(store, src, f"dev:{i}")
        assert _flat(store, f"dev:{i}", str(tmp_path / f"flat{i}")) == world.expected


def test_legacy_cockerimage_from_c_cocker(world, tmp_path):
    """The C cocker ran `cd rlayer && tar --force-local -czf name:ver.cockerimage *`."""
    path = str(tmp_path / "calvin=tool:1.2.cockerimage")
    subprocess.run(f"cd {world.rootfs} && tar --force-local -czf '{path}' *", shell=True,
                   check=True)
    unversioned = str(tmp_path / "legacy.cockerimage")
    shutil.copy(path, unversioned)
    store = _fresh(tmp_path)
    assert importers.import_image(store, path).ref == "calvin/tool:1.2"
    assert importers.import_image(store, unversioned).ref == "legacy:_"
    assert _flat(store, "calvin/tool:1.2", str(tmp_path / "flat")) == world.expected
    exported = exporters.export_image(store, "calvin/tool:1.2", str(tmp_path), "cockerimage")
    assert os.path.basename(exported) == "calvin=tool:1.2.cockerimage"


def test_failed_imports_leave_no_ref(world, tmp_path):
    store = _fresh(tmp_path)
    good = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "d.tar"),
                                  "docker-archive")
    # A docker archive whose config lies about the layer's diff_id.
    bad = str(tmp_path / "bad.tar")
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for ti in src.getmembers():
            data = src.extractfile(ti).read() if ti.isreg() else None
            if ti.name.endswith(".json") and ti.name != "manifest.json":
                cfg = json.loads(data)
                cfg["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
                data = json.dumps(cfg).encode()
                ti.size = len(data)
            dst.addfile(ti, io.BytesIO(data) if data is not None else None)
    with pytest.raises(CorruptImage, match="config says"):
        importers.import_image(store, bad, "bad:1")
    # An OCI layout with a flipped byte in its layer.
    layout = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "l"), "oci")
    layer = imagemod.load(world.store, "bb:1.0").layers[0]["digest"].split(":")[1]
    p = os.path.join(layout, "blobs", "sha256", layer)
    data = bytearray(Path(p).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(p).write_bytes(bytes(data))
    with pytest.raises(CockerError):
        importers.import_image(store, layout, "bad:2")
    assert store.list_refs() == []
    assert store.fsck() == []
    assert sorted(os.listdir(store.tmp_dir)) == ["leases", "uploads"]
    assert os.listdir(os.path.join(store.tmp_dir, "leases")) == []


def test_existing_ref_needs_force(world, tmp_path):
    with pytest.raises(Conflict):
        importers.import_image(world.store, world.rootfs, "bb:1.0")
    store = _fresh(tmp_path)
    importers.import_image(store, world.rootfs, "again:1")
    with pytest.raises(Conflict):
        importers.import_image(store, world.rootfs, "again:1")
    assert importers.import_image(store, world.rootfs, "again:1", force=True).ref == "again:1"


def test_cli_import_export(world, tmp_path):
    env = {"COCKER_HOME": str(tmp_path / "clihome"), "COCKER_QUIET": "1"}
    p = run_cocker("image", "import", world.rootfs, "cli:0.1", "--json", env=env)
    out = json.loads(p.stdout)
    assert out["ref"] == "cli:0.1" and out["digest"].startswith("sha256:")
    dest = str(tmp_path / "cli.tar")
    run_cocker("image", "export", "cli:0.1", dest, "--format", "docker-archive", env=env)
    bad = run_cocker("image", "export", "nope:1", str(tmp_path / "x"), env=env, check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    os.makedirs(tmp_path / "full")
    (tmp_path / "full" / "f").write_text("x")
    bad = run_cocker("image", "export", "cli:0.1", str(tmp_path / "full"), "--format", "rootfs",
                     env=env, check=False)
    assert bad.returncode != 0 and "already exists" in bad.stderr
    bad = run_cocker("image", "import", str(tmp_path / "full" / "f"), "x:1", env=env,
                     check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1


# --- peers ------------------------------------------------------------------------------

def _run(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{' '.join(cmd)}: {p.stderr}"
    return p.stdout


def test_skopeo_reads_cocker_exports(world, tmp_path):
    layout = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "l"), "oci")
    info = json.loads(_run("skopeo", "inspect", f"oci:{layout}:1.0"))
    assert info["Digest"] == world.digest
    _run("skopeo", "copy", "-q", f"oci:{layout}:1.0", f"dir:{tmp_path / 'dir'}")
    assert os.path.exists(tmp_path / "dir" / "manifest.json")
    # The local store itself is a layout skopeo can read with name:version refs.
    info = json.loads(_run("skopeo", "inspect", f"oci:{world.store.root}:bb:1.0"))
    assert info["Digest"] == world.digest
    arch = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "l.tar"), "oci")
    assert json.loads(_run("skopeo", "inspect", f"oci-archive:{arch}:1.0"))["Digest"] == \
        world.digest
    dock = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "d.tar"),
                                  "docker-archive")
    info = json.loads(_run("skopeo", "inspect", f"docker-archive:{dock}"))
    assert info["Layers"] == imagemod.load(world.store, "bb:1.0").diff_ids  # uncompressed


def test_cocker_imports_what_skopeo_writes(world, tmp_path):
    layout = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "l"), "oci",
                                    compression="gzip")
    _run("skopeo", "copy", "-q", f"oci:{layout}:1.0", f"oci:{tmp_path / 'sk'}:tag")
    _run("skopeo", "copy", "-q", f"oci:{layout}:1.0",
         f"docker-archive:{tmp_path / 'sk.tar'}:team/app:2.0")
    store = _fresh(tmp_path)
    a = importers.import_image(store, str(tmp_path / "sk"), "from-oci:1")
    b = importers.import_image(store, str(tmp_path / "sk.tar"))
    assert b.ref == "team/app:2.0" and b.format == af.DOCKER_ARCHIVE
    for ref in (a.ref, b.ref):
        assert _flat(store, ref, str(tmp_path / ref.replace("/", "_"))) == world.expected


@pytest.mark.root
def test_umoci_round_trip(world, tmp_path):
    # umoci 0.4 cannot read zstd layers: export them as gzip for it.
    layout = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "l"), "oci",
                                    compression="gzip")
    assert "cocker image import" in _run("umoci", "stat", "--image", f"{layout}:1.0")
    # umoci also addresses the store itself by its name:version ref.names.
    assert "cocker image import" in _run("umoci", "stat", "--image",
                                         f"{world.store.root}:bb:1.0")
    bundle = str(tmp_path / "bundle")
    _run("umoci", "unpack", "--image", f"{layout}:1.0", bundle)
    assert snapshot(os.path.join(bundle, "rootfs")) == world.expected
    with open(os.path.join(bundle, "rootfs", "etc", "added-by-umoci"), "w") as f:
        f.write("umoci\n")
    os.unlink(os.path.join(bundle, "rootfs", "etc", "motd"))
    _run("umoci", "repack", "--image", f"{layout}:1.1", bundle)
    store = _fresh(tmp_path)
    res = importers.import_image(store, layout, "bb:1.1", source_ref="1.1")
    assert len(res.layers) == 2
    flat = _flat(store, "bb:1.1", str(tmp_path / "flat"))
    assert "etc/added-by-umoci" in flat and "etc/motd" not in flat


@pytest.mark.root
def test_podman_load_and_save(world, tmp_path):
    dock = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "d.tar"),
                                  "docker-archive")
    short = tempfile.mkdtemp(prefix="cocker-pod.", dir="/tmp")  # podman: runroot < 50 chars
    pod = ["podman", "--root", os.path.join(short, "root"), "--runroot", os.path.join(short, "run"),
           "--storage-driver", "vfs", "--events-backend", "none", "--cgroup-manager", "cgroupfs"]
    try:
        assert "bb:1.0" in _run(*pod, "load", "-i", dock)
        _run(*pod, "save", "--format", "oci-archive", "-o", str(tmp_path / "p.tar"),
             "localhost/bb:1.0")
        store = _fresh(tmp_path)
        res = importers.import_image(store, str(tmp_path / "p.tar"))
        assert res.ref == "localhost/bb:1.0"
        assert _flat(store, res.ref, str(tmp_path / "flat")) == world.expected
    finally:
        subprocess.run([*pod, "system", "reset", "--force"], capture_output=True, timeout=60)
        shutil.rmtree(short, ignore_errors=True)
