"""Import from skopeo's `dir:` layout and from standard input; the device-node notice."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from builder import archive_formats as af
from builder import exporters, importers
from common.errors import UsageError
from registry.repo.store import Store
from tests.support.tools import tool
from tests.test_import_export import _flat, world

SKOPEO = tool("skopeo")


@pytest.fixture
def skopeo_dir(world, tmp_path):
    layout = exporters.export_image(world.store, "bb:1.0", str(tmp_path / "l"), "oci")
    out = tmp_path / "skopeo-dir"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}:1.0", f"dir:{out}"], check=True,
                   capture_output=True)
    return str(out)


def test_import_a_skopeo_dir(world, skopeo_dir, tmp_path):
    assert af.detect(skopeo_dir) == af.SKOPEO_DIR
    store = Store(str(tmp_path / "home"))
    res = importers.import_image(store, skopeo_dir, "from-dir:1")
    assert res.format == af.SKOPEO_DIR and res.digest == world.digest  # faithful: same bytes
    assert _flat(store, "from-dir:1", str(tmp_path / "flat")) == world.expected


def test_skopeo_dir_with_a_tampered_layer_is_refused(world, skopeo_dir, tmp_path):
    store = Store(str(tmp_path / "home"))
    biggest = max((os.path.join(skopeo_dir, n) for n in os.listdir(skopeo_dir)),
                  key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.seek(100)
        f.write(b"tampered")
    p = subprocess.run(["python3", "-m", "cocker.main", "--home", store.root, "image", "import",
                        skopeo_dir, "bad:1"], capture_output=True, text=True,
                       env=dict(os.environ, COCKER_QUIET="1"))
    assert p.returncode == 4 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert store.list_refs() == []


@pytest.mark.parametrize("fmt", ["oci", "docker-archive", "rootfs"])
def test_import_from_stdin(world, tmp_path, cocker, fmt):
    tar = str(tmp_path / "image.tar")
    exporters.export_image(world.store, "bb:1.0", tar, fmt)
    home = str(tmp_path / "home")
    with open(tar, "rb") as f:
        p = subprocess.run(["python3", "-m", "cocker.main", "--home", home, "image", "import",
                            "-", "piped:1", "--json"], stdin=f, capture_output=True,
                           env=dict(os.environ, COCKER_QUIET="1"))
    assert p.returncode == 0, p.stderr
    store = Store(home)
    assert _flat(store, "piped:1", str(tmp_path / "flat")) == world.expected
    assert set(os.listdir(store.tmp_dir)) <= {"uploads", "leases"}  # the spooled copy is gone


def test_import_from_stdin_needs_a_ref(store):
    with open(os.devnull, "rb") as empty, pytest.raises(UsageError, match="REF"):
        importers.import_image(store, "-", None, stdin=empty)


@pytest.mark.root
def test_rootfs_dir_import_counts_dropped_devices(world, tmp_path, cocker):
    rootfs = str(tmp_path / "rootfs")
    shutil.copytree(world.rootfs, rootfs, symlinks=True)
    for name, minor in (("null", 3), ("zero", 5)):
        os.mknod(os.path.join(rootfs, "dev", name), 0o20666, os.makedev(1, minor))
    p = cocker("--home", str(tmp_path / "home"), "image", "import", rootfs, "dev:1")
    notices = [line for line in p.stderr.splitlines() if "device" in line]
    assert len(notices) == 1 and "2" in notices[0], p.stderr
