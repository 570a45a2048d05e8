"""Copies are faithful (issue 13): manifest and config bytes move as they are on import and
export, so an image keeps its digest; index.json entries carry the manifest's real media
type (skopeo reads the result); new manifests have one serialiser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from builder import exporters, importers
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.repo import image as imagemod
from registry.repo.store import Store
from tests.support.http_servers import tar_gz
from tests.support.tools import tool

SKOPEO = tool("skopeo")


def _run(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{' '.join(cmd)}: {p.stderr}"
    return p.stdout


def foreign_layout(path: str, *, media: str = "oci") -> tuple[str, bytes, bytes]:
    """An OCI image layout as another tool writes it: a config that is not canonical JSON
    (indented, keys in its own order, fields cocker does not know), a manifest with
    annotations. (manifest digest, manifest bytes, config bytes)."""
    gz, raw = tar_gz({"etc/motd": b"faithful\n"})
    config = {"os": "linux", "architecture": oci.go_arch(),
              "rootfs": {"type": "layers", "diff_ids": [digestmod.of_bytes(raw)]},
              "config": {"Cmd": ["/bin/sh"], "Labels": {"z": "1", "a": "2"}},
              "created": "2025-01-02T03:04:05.123456789Z", "x-vendor": {"b": 1, "a": 2}}
    config_bytes = json.dumps(config, indent=4).encode()
    layer_type, config_type, manifest_type = (
        (oci.LAYER_GZIP, oci.CONFIG, oci.MANIFEST) if media == "oci"
        else (oci.DOCKER_LAYER_GZIP, oci.DOCKER_CONFIG, oci.DOCKER_MANIFEST))
    manifest = {"schemaVersion": 2, "mediaType": manifest_type,
                "config": oci.descriptor(config_type, config_bytes),
                "layers": [oci.descriptor(layer_type, gz)]}
    if media == "oci":
        manifest["annotations"] = {"org.opencontainers.image.source": "https://example.org/x",
                                   "org.example.note": "kept"}
    manifest_bytes = json.dumps(manifest, indent=3).encode()
    md = digestmod.of_bytes(manifest_bytes)
    os.makedirs(os.path.join(path, "blobs", "sha256"))
    for data in (gz, config_bytes, manifest_bytes):
        with open(os.path.join(path, "blobs", "sha256", digestmod.hex_of(
                digestmod.of_bytes(data))), "wb") as f:
            f.write(data)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [
        oci.descriptor(manifest_type, manifest_bytes, None, {oci.REF_NAME: "1.0"})]}
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(index, f)
    return md, manifest_bytes, config_bytes


def test_import_of_a_foreign_oci_layout_keeps_its_digest_and_annotations(tmp_path):
    md, manifest_bytes, config_bytes = foreign_layout(str(tmp_path / "layout"))
    store = Store(str(tmp_path / "home"))
    res = importers.import_image(store, str(tmp_path / "layout"), "app:1.0")
    assert res.digest == md and store.get_ref("app", "1.0") == md
    assert store.read_blob(md) == manifest_bytes
    cd = digestmod.of_bytes(config_bytes)
    assert store.read_blob(cd) == config_bytes
    img = imagemod.load(store, "app:1.0")
    assert img.manifest["annotations"]["org.example.note"] == "kept"
    assert store.fsck() == []


@pytest.mark.parametrize("fmt,dest", [("oci", "out"), ("oci", "out.tar")])
def test_export_then_import_elsewhere_keeps_the_digest(tmp_path, fmt, dest):
    md, manifest_bytes, _ = foreign_layout(str(tmp_path / "layout"))
    a = Store(str(tmp_path / "a"))
    importers.import_image(a, str(tmp_path / "layout"), "app:1.0")
    out = exporters.export_image(a, "app:1.0", str(tmp_path / dest), fmt)
    b = Store(str(tmp_path / "b"))
    res = importers.import_image(b, out, "app:1.0")
    assert res.digest == md and b.read_blob(md) == manifest_bytes


def test_export_of_a_docker_schema2_image_to_an_oci_layout_is_readable(tmp_path):
    """index.json named a docker schema2 manifest application/vnd.oci.image.manifest.v1+json,
    which skopeo refuses. An OCI layout's readers take OCI manifests only, so the export
    writes the OCI manifest of the same config and layer bytes, and names its real type."""
    md, manifest_bytes, config_bytes = foreign_layout(str(tmp_path / "layout"), media="docker")
    store = Store(str(tmp_path / "home"))
    assert importers.import_image(store, str(tmp_path / "layout"), "app:1.0").digest == md
    out = exporters.export_image(store, "app:1.0", str(tmp_path / "out"), "oci")
    with open(os.path.join(out, "index.json")) as f:
        (entry,) = json.load(f)["manifests"]
    with open(os.path.join(out, "blobs", "sha256", digestmod.hex_of(entry["digest"])), "rb") as f:
        written = f.read()
    assert entry["mediaType"] == oci.manifest_media_type(written) == oci.MANIFEST
    m = json.loads(written)
    docker = json.loads(manifest_bytes)
    assert m["config"]["digest"] == digestmod.of_bytes(config_bytes)
    assert [d["digest"] for d in m["layers"]] == [d["digest"] for d in docker["layers"]]
    assert [d["mediaType"] for d in m["layers"]] == [oci.LAYER_GZIP]
    if SKOPEO:
        info = json.loads(_run("skopeo", "inspect", f"oci:{out}:1.0"))
        assert info["Digest"] == entry["digest"]
        _run("skopeo", "copy", "-q", f"oci:{out}:1.0", f"dir:{tmp_path / 'dir'}")


def test_build_staging_and_publishing_serialise_a_manifest_alike(tmp_path):
    """builder/build.py's intermediate images and publish wrote two different JSON texts
    for one content: two digests for one image."""
    store = Store(str(tmp_path / "home"))
    gz, raw = tar_gz({"a": b"1"})
    store.put_blob_bytes(digestmod.of_bytes(gz), gz)
    layers = [oci.descriptor(oci.LAYER_GZIP, gz)]
    config = oci.new_config([digestmod.of_bytes(raw)], created="2025-01-01T00:00:00Z")
    staged, _ = imagemod.stage(store, config, layers)
    assert imagemod.publish(store, "x", "1", config, layers).digest == staged
