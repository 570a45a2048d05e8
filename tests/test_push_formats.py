"""push --compression gzip|zstd and --format oci|v2s2: for clients without zstd and
registries without OCI manifests; layers already right keep their digests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from builder import exporters, importers
from registry.oci import manifest as oci
from registry.repo import image as imagemod
from registry.repo.layout import LayoutRepo
from registry.repo.store import Store
from tests.support.codec import snapshot
from tests.support.http_servers import DockerRegistry
from tests.support.tools import tool

SKOPEO = tool("skopeo")


@pytest.fixture
def local(home, tmp_path):
    """A store with app:1 (one zstd layer, packed by cocker) and a directory repo."""
    src = tmp_path / "rootfs"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "motd").write_text("hello\n")
    (src / "bin").mkdir()
    (src / "bin" / "tool").write_bytes(os.urandom(50_000))
    store = Store(home)
    importers.import_image(store, str(src), "app:1")
    return store, str(tmp_path / "remote"), snapshot(str(src))


def _remote_manifest(url: str, name: str, version: str) -> dict:
    repo = LayoutRepo(url)
    return json.loads(repo.read_blob(repo.get_ref(name, version)))


def _tree_after_pull(url: str, ref: str, tmp_path) -> dict:
    store = Store(str(tmp_path / "pulled-home"))
    from registry.oci import reference as refmod
    from registry.repo.copy import copy
    copy(refmod.parse(ref), LayoutRepo(url), store)
    out = str(tmp_path / f"flat-{ref.replace(':', '_')}")
    exporters.export_image(store, ref, out, "rootfs")
    return snapshot(out)


def test_push_gzip_for_clients_without_zstd(local, cocker, tmp_path):
    store, url, tree = local
    before = imagemod.load(store, "app:1")
    cocker("image", "push", "app:1", "--repo", url, "--init", "--compression", "gzip")
    m = _remote_manifest(url, "app", "1")
    assert [d["mediaType"] for d in m["layers"]] == [oci.LAYER_GZIP]
    assert m["config"]["digest"] == before.config_digest  # same config: same diff_ids
    assert imagemod.load(store, "app:1").digest == before.digest  # the store is untouched
    with open(os.path.join(url, "blobs", "sha256", m["layers"][0]["digest"][7:]), "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    assert _tree_after_pull(url, "app:1", tmp_path) == tree


def test_push_in_the_compression_it_has_keeps_the_digest(local, cocker):
    store, url, _ = local
    cocker("image", "push", "app:1", "--repo", url, "--init", "--compression", "zstd")
    assert LayoutRepo(url).get_ref("app", "1") == imagemod.load(store, "app:1").digest


def test_push_docker_schema2_and_back(local, cocker, tmp_path):
    store, url, tree = local
    cocker("image", "push", "app:1", "--repo", url, "--init", "--format", "v2s2")
    m = _remote_manifest(url, "app", "1")
    assert m["mediaType"] == oci.DOCKER_MANIFEST
    assert m["config"]["mediaType"] == oci.DOCKER_CONFIG
    assert [d["mediaType"] for d in m["layers"]] == [oci.DOCKER_LAYER_GZIP]
    assert _tree_after_pull(url, "app:1", tmp_path) == tree
    p = cocker("image", "push", "app:1", "--repo", url, "--format", "v2s2", "--compression",
               "zstd", check=False)
    assert p.returncode == 2 and "no zstd" in p.stderr
    # From schema 2 back to OCI: the gzip layer is kept byte for byte.
    other = str(tmp_path / "oci-again")
    env = {"COCKER_HOME": str(tmp_path / "pulled-home")}
    cocker("image", "push", "app:1", "--repo", other, "--init", "--format", "oci", env=env)
    back = _remote_manifest(other, "app", "1")
    assert back["mediaType"] == oci.MANIFEST
    assert [d["digest"] for d in back["layers"]] == [d["digest"] for d in m["layers"]]
    assert [d["mediaType"] for d in back["layers"]] == [oci.LAYER_GZIP]


def test_schema2_push_to_a_distribution_registry(local, cocker, tmp_path):
    reg = DockerRegistry(str(tmp_path))
    try:
        cocker("image", "push", "app:1", "--repo", reg.url, "--format", "v2s2")
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{reg.hostport}/app:1"], capture_output=True,
                             text=True, check=True).stdout
        m = json.loads(raw)
        assert m["mediaType"] == oci.DOCKER_MANIFEST
        assert m["layers"][0]["mediaType"] == oci.DOCKER_LAYER_GZIP
    finally:
        reg.stop()
