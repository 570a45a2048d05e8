"""An image version made fit for another reader: layers recompressed (gzip for clients
without zstd) and/or the manifest written as docker schema 2 (registries and engines that
predate OCI manifests).

The converted manifest, config and layers are written into the same repository, with no
ref: the caller copies the result under the original name and version. Nothing changes
(the same digest comes back) when the image already is what was asked for, and every
layer already in the wanted compression keeps its blob and digest.
"""

from __future__ import annotations

import contextlib
import os

from common.errors import CorruptImage, UsageError
from registry.layer import tar_codec
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.repo.layout import LayoutRepo
from registry.repo.repository import RefRecord, Repository

COMPRESSIONS = ("gzip", "zstd")
OCI = "oci"
V2S2 = "v2s2"
FORMATS = (OCI, V2S2)

# (format, compression) -> the layer media type that says so.
_LAYER_TYPE = {
    (OCI, "none"): oci.LAYER_TAR, (OCI, "gzip"): oci.LAYER_GZIP, (OCI, "zstd"): oci.LAYER_ZSTD,
    (V2S2, "none"): oci.DOCKER_LAYER_TAR, (V2S2, "gzip"): oci.DOCKER_LAYER_GZIP,
}
_DOCKER_FOR_OCI_LAYER = {v: k for k, v in oci.OCI_LAYER_FOR_DOCKER.items()}


def _format_of(manifest: dict) -> str:
    return V2S2 if manifest.get("mediaType") == oci.DOCKER_MANIFEST else OCI


def _layer_type(desc: dict, fmt: str, compression: str, recompressed: bool) -> str:
    """The media type of a layer in `fmt`; a kept layer keeps its kind (a foreign or
    non-distributable layer stays one) under the other format's name."""
    mt = desc["mediaType"]
    if not recompressed:
        if fmt == OCI and mt in oci.OCI_LAYER_FOR_DOCKER:
            return oci.OCI_LAYER_FOR_DOCKER[mt]
        if fmt == V2S2 and mt in _DOCKER_FOR_OCI_LAYER:
            return _DOCKER_FOR_OCI_LAYER[mt]
        if (fmt == OCI) == mt.startswith("application/vnd.oci."):
            return mt
    return _LAYER_TYPE[(fmt, compression)]


def recompress(src: Repository, dest: LayoutRepo, desc: dict, diff_id: str,
               compression: str) -> tar_codec.PackedLayer:
    """Layer `desc` of `src` recompressed into `dest` (the same tar bytes, so the same
    diff_id, which is checked against the config's)."""
    tmp = dest.new_tmp_path("recompress")
    try:
        with src.open_blob(desc["digest"]) as f, open(tmp, "wb") as out:
            packed = tar_codec.pack_tar_stream(f, out, compression=compression)
        if packed.diff_id != diff_id:
            raise CorruptImage(f"layer {digestmod.short(desc['digest'])} decompresses to "
                               f"{digestmod.short(packed.diff_id)}, not "
                               f"{digestmod.short(diff_id)} as its config says")
        dest.ingest(tmp, packed.digest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return packed


def convert(repo: LayoutRepo, rec: RefRecord, *, compression: str | None = None,
            fmt: str | None = None) -> RefRecord:
    """`rec` as an image whose layers are `compression` and whose manifest is `fmt`
    (None: as they are); the same record when nothing needs to change."""
    if compression is None and fmt is None:
        return rec
    if compression not in (None,) + COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}: use gzip or zstd")
    if fmt not in (None,) + FORMATS:
        raise UsageError(f"unknown manifest format {fmt!r}: use oci or v2s2")
    what = f"{rec.name}:{rec.version}"
    m = oci.parse_manifest(repo.read_blob(rec.digest))
    if oci.is_index(m):
        raise UsageError(f"{what} is a multi-platform index: it can only be copied as it is "
                         "(without --compression or --format)")
    oci.check_image(m, what)
    want_fmt = fmt or _format_of(m)
    if want_fmt == V2S2 and compression == "zstd":
        raise UsageError("docker schema 2 has no zstd layers: use --compression gzip, or "
                         "--format oci")
    config_bytes = repo.read_blob(m["config"]["digest"])
    config = oci.parse_json(config_bytes, f"{what}: image config")
    diff_ids = oci.check_diff_ids((config.get("rootfs") or {}).get("diff_ids"),
                                  len(m["layers"]), f"{what}: image config")
    changed = want_fmt != _format_of(m)
    layers = []
    for desc, diff_id in zip(m["layers"], diff_ids, strict=True):
        have = oci.COMPRESSION_OF[desc["mediaType"]]
        want = compression or have
        if want_fmt == V2S2 and want == "zstd":
            want = "gzip"  # the format has no zstd type: gzip is what its readers take
        if want == have:
            new = desc
        else:
            packed = recompress(repo, repo, desc, diff_id, want)
            new = {"mediaType": desc["mediaType"], "digest": packed.digest, "size": packed.size}
        changed = changed or new is not desc
        out = {**new, "mediaType": _layer_type(desc, want_fmt, want, new is not desc)}
        if want_fmt == V2S2:
            out.pop("annotations", None)  # schema 2 descriptors carry none
        layers.append(out)
    if not changed:
        return rec
    manifest: dict = {
        "schemaVersion": 2,
        "mediaType": oci.DOCKER_MANIFEST if want_fmt == V2S2 else oci.MANIFEST,
        "config": {"mediaType": oci.DOCKER_CONFIG if want_fmt == V2S2 else oci.CONFIG,
                   "digest": m["config"]["digest"], "size": m["config"]["size"]},
        "layers": layers,
    }
    if want_fmt == OCI and m.get("annotations"):
        manifest["annotations"] = m["annotations"]
    data = oci.canonical_json(manifest)
    oci.parse_manifest(data)
    digest = digestmod.of_bytes(data)
    repo.put_blob_bytes(digest, data)
    return RefRecord(rec.name, rec.version, digest)
