"""Validation at every door: descriptor sizes, media types, layers listed twice, deep JSON.

Images are made by the real importer and exported as OCI layouts, then tampered with
the way a hostile archive would be; the refusals are project errors, one line each, and
the store keeps its refs.
"""

from __future__ import annotations

import json
import os

import pytest

from builder import exporters, importers
from common.errors import CockerError, CorruptImage
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import copy as copymod
from registry.repo import image as imagemod
from registry.repo.layout import LayoutRepo
from runtime.fs import layers as layersmod

LAYER = oci.LAYER_ZSTD


@pytest.fixture
def two_layer_layout(store, tmp_path):
    """An exported OCI layout of a two-layer image (two imports, a second layer on top)."""
    for i in (1, 2):
        src = tmp_path / f"rootfs{i}"
        src.mkdir()
        (src / f"file{i}").write_text(f"content {i}\n")
        importers.import_image(store, str(src), f"part{i}:1")
    one = imagemod.load(store, "part1:1")
    two = imagemod.load(store, "part2:1")
    config = oci.new_config(one.diff_ids + two.diff_ids)
    imagemod.publish(store, "both", "1", config, one.layers + two.layers)
    out = str(tmp_path / "layout")
    exporters.export_image(store, "both:1", out, "oci")
    return out


class Layout:
    """Read, change and re-link the manifest of a one-image OCI layout."""

    def __init__(self, root: str) -> None:
        self.root = root
        with open(os.path.join(root, "index.json")) as f:
            self.index = json.load(f)
        self.desc = self.index["manifests"][0]
        self.manifest = json.loads(self.blob(self.desc["digest"]))

    def path(self, d: str) -> str:
        return os.path.join(self.root, "blobs", "sha256", digestmod.hex_of(d))

    def blob(self, d: str) -> bytes:
        with open(self.path(d), "rb") as f:
            return f.read()

    def put(self, data: bytes) -> str:
        d = digestmod.of_bytes(data)
        with open(self.path(d), "wb") as f:
            f.write(data)
        return d

    def config(self) -> dict:
        return json.loads(self.blob(self.manifest["config"]["digest"]))

    def set_config(self, cfg: dict) -> None:
        data = json.dumps(cfg).encode()
        self.manifest["config"] = oci.descriptor(oci.CONFIG, self.put(data), len(data))

    def save(self) -> None:
        data = json.dumps(self.manifest).encode()
        self.desc.update(digest=self.put(data), size=len(data))
        with open(os.path.join(self.root, "index.json"), "w") as f:
            json.dump(self.index, f)


def refs_of(store) -> list:
    return sorted((r.name, r.version, r.digest) for r in store.list_refs())


def refused_import(store, layout: str, match: str) -> None:
    before = refs_of(store)
    with pytest.raises(CockerError, match=match):
        importers.import_image(store, layout, "tampered:1")
    assert refs_of(store) == before


def test_wrong_layer_size_is_refused(store, two_layer_layout):
    lay = Layout(two_layer_layout)
    lay.manifest["layers"][1]["size"] -= 7
    lay.save()
    refused_import(store, two_layer_layout, "bytes its descriptor says")


def test_layer_larger_than_declared_is_refused(store, two_layer_layout):
    lay = Layout(two_layer_layout)
    lay.manifest["layers"][0]["size"] += 100
    lay.save()
    refused_import(store, two_layer_layout, "descriptor says")


def test_wrong_config_size_is_refused(store, two_layer_layout):
    lay = Layout(two_layer_layout)
    lay.manifest["config"]["size"] += 1
    lay.save()
    refused_import(store, two_layer_layout, "config .* descriptor says")


def test_wrong_manifest_size_in_the_index_is_refused(store, two_layer_layout):
    lay = Layout(two_layer_layout)
    lay.save()
    lay.desc["size"] += 3
    with open(os.path.join(two_layer_layout, "index.json"), "w") as f:
        json.dump(lay.index, f)
    refused_import(store, two_layer_layout, "manifest .* descriptor says")


def test_unknown_layer_media_type_is_refused_at_import(store, two_layer_layout):
    lay = Layout(two_layer_layout)
    lay.manifest["layers"][1]["mediaType"] = "application/vnd.example.layer.v9+brotli"
    lay.save()
    refused_import(store, two_layer_layout, r"layer 2 has media type .*vnd\.example")


def test_malformed_media_type_is_refused(store, two_layer_layout):
    lay = Layout(two_layer_layout)
    lay.manifest["layers"][0]["mediaType"] = "not a media type"
    lay.save()
    refused_import(store, two_layer_layout, "is not a media type")


def test_duplicate_layer_is_refused_at_import(store, two_layer_layout):
    lay = Layout(two_layer_layout)
    cfg = lay.config()
    lay.manifest["layers"][1] = lay.manifest["layers"][0]
    cfg["rootfs"]["diff_ids"][1] = cfg["rootfs"]["diff_ids"][0]
    lay.set_config(cfg)
    lay.save()
    refused_import(store, two_layer_layout, "twice")


def test_duplicate_diff_id_is_refused(store, two_layer_layout):
    """Two different blobs of the same content would share one layer tree: ELOOP again."""
    lay = Layout(two_layer_layout)
    cfg = lay.config()
    cfg["rootfs"]["diff_ids"][1] = cfg["rootfs"]["diff_ids"][0]
    lay.set_config(cfg)
    lay.save()
    refused_import(store, two_layer_layout, "appears twice in rootfs.diff_ids")


def test_publish_refuses_a_layer_twice(store, two_layer_layout):
    img = imagemod.load(store, "part1:1")
    before = refs_of(store)
    with pytest.raises(CorruptImage, match="twice"):
        imagemod.publish(store, "dup", "1", oci.new_config(img.diff_ids * 2), img.layers * 2)
    assert refs_of(store) == before


def _plant(repo: LayoutRepo, name: str, version: str, manifest: dict) -> str:
    """A ref to a manifest written behind the repository's back (as a hostile remote
    would serve it): blob and ref file only."""
    data = json.dumps(manifest).encode()
    d = digestmod.of_bytes(data)
    with open(os.path.join(repo.root, "blobs", "sha256", digestmod.hex_of(d)), "wb") as f:
        f.write(data)
    path = repo.ref_path(name, version)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(d + "\n")
    return d


def test_pull_of_a_manifest_with_a_layer_twice_is_refused(store, two_layer_layout, tmp_path):
    remote = LayoutRepo(str(tmp_path / "remote"), create=True)
    copymod.copy(refmod.parse("both:1"), store, remote)
    m = json.loads(remote.read_blob(remote.get_ref("both", "1")))
    m["layers"][1] = m["layers"][0]
    _plant(remote, "dup", "1", m)
    before = refs_of(store)
    with pytest.raises(CorruptImage, match="twice"):
        copymod.copy(refmod.parse("dup:1"), remote, store)
    assert refs_of(store) == before


def test_artifacts_are_copied_but_not_run(store, tmp_path):
    """The spec: copying must not fail on unknown media types; running refuses clearly."""
    remote = LayoutRepo(str(tmp_path / "remote"), create=True)
    cfg = b"{}"
    sig = b"a signature"
    for data in (cfg, sig):
        remote.put_blob_bytes(digestmod.of_bytes(data), data)
    manifest = {"schemaVersion": 2, "mediaType": oci.MANIFEST,
                "artifactType": "application/vnd.example.sig",
                "config": oci.descriptor("application/vnd.oci.empty.v1+json", cfg),
                "layers": [oci.descriptor("application/vnd.example.sig.v1", sig)]}
    data = json.dumps(manifest).encode()
    remote.put_blob_bytes(digestmod.of_bytes(data), data)
    remote.put_ref("sig", "1", digestmod.of_bytes(data))
    copymod.copy(refmod.parse("sig:1"), remote, store)
    assert store.get_ref("sig", "1") == digestmod.of_bytes(data)
    with pytest.raises(CorruptImage, match="artifact"):
        oci.check_image(manifest, "sig:1")


def test_running_an_image_with_an_unknown_layer_type_is_refused(store, two_layer_layout):
    img = imagemod.load(store, "both:1")
    img.manifest["layers"][0]["mediaType"] = "application/vnd.example.layer"
    with pytest.raises(CorruptImage, match="layer 1 has media type"):
        layersmod.ensure_layers(store, img)


def test_deeply_nested_json_is_a_corrupt_image():
    with pytest.raises(CorruptImage, match="nests"):
        oci.parse_manifest(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(CorruptImage, match="bytes refused"):
        oci.parse_manifest(b" " * (oci.MAX_MANIFEST_BYTES + 1))


def test_indexes_nested_too_deep_are_refused(store, tmp_path):
    remote = LayoutRepo(str(tmp_path / "remote"), create=True)
    cfg = b"{}"
    remote.put_blob_bytes(digestmod.of_bytes(cfg), cfg)
    data = json.dumps({"schemaVersion": 2, "mediaType": oci.MANIFEST,
                       "config": oci.descriptor(oci.CONFIG, cfg), "layers": []}).encode()
    mt = oci.MANIFEST
    for _ in range(copymod.MAX_INDEX_DEPTH + 2):
        remote.put_blob_bytes(digestmod.of_bytes(data), data)
        data = json.dumps({"schemaVersion": 2, "mediaType": oci.INDEX,
                           "manifests": [oci.descriptor(mt, data)]}).encode()
        mt = oci.INDEX
    remote.put_blob_bytes(digestmod.of_bytes(data), data)
    remote.put_ref("deep", "1", digestmod.of_bytes(data))
    with pytest.raises(CorruptImage, match="nest deeper"):
        copymod.copy(refmod.parse("deep:1"), remote, store)
    assert store.get_ref("deep", "1") is None


@pytest.mark.parametrize("doc", [
    {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": [], "config": None, "layers": []},
    {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": [], "layers": [False]},
    {"schemaVersion": 2, "mediaType": oci.MANIFEST, "manifests": [], "layers": [],
     "config": oci.descriptor(oci.CONFIG, b"{}")},
])
def test_ambiguous_index_or_manifest_is_refused(doc):
    """Found by the fuzz suite's long mode: an 'index' with layers passed as an index, then
    every reader that asked is_index() walked it as an image (KeyError, TypeError)."""
    with pytest.raises(CorruptImage, match="ambiguous"):
        oci.parse_manifest(json.dumps(doc).encode())
