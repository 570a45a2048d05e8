"""OCI (and Docker schema 2) media types, manifests, configs and descriptors."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from common.errors import CorruptImage
from registry.oci import digest as digestmod

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

MANIFEST_TYPES = (MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (INDEX, DOCKER_LIST)
REF_NAME = "org.opencontainers.image.ref.name"

COMPRESSION_OF = {
    LAYER_TAR: "none",
    LAYER_GZIP: "gzip",
    LAYER_ZSTD: "zstd",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_TAR: "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
# A docker schema2 layer type and its OCI equivalent (same bytes).
OCI_LAYER_FOR_DOCKER = {
    DOCKER_LAYER_GZIP: LAYER_GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}
LAYER_TYPE_FOR = {"none": LAYER_TAR, "gzip": LAYER_GZIP, "zstd": LAYER_ZSTD}
CONFIG_TYPES = (CONFIG, DOCKER_CONFIG)
# RFC 6838 type/subtype (with +suffix and parameters): the spec's rule for any descriptor.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/"
                         r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(;.{0,512})?\Z")
MAX_MANIFEST_BYTES = 4 << 20  # what distribution accepts


def canonical_json(obj: Any) -> bytes:
    """Stable bytes for an object, so equal content gives an equal digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def descriptor(media_type: str, data_or_digest: bytes | str, size: int | None = None,
               annotations: dict | None = None) -> dict:
    if isinstance(data_or_digest, bytes):
        d, size = digestmod.of_bytes(data_or_digest), len(data_or_digest)
    else:
        d = digestmod.validate(data_or_digest)
    out: dict[str, Any] = {"mediaType": media_type, "digest": d, "size": int(size or 0)}
    if annotations:
        out["annotations"] = annotations
    return out


def go_arch() -> str:
    m = os.uname().machine.lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(m, m)


def parse_json(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptImage(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise CorruptImage(f"{what} nests its JSON too deeply") from None
    if not isinstance(obj, dict):
        raise CorruptImage(f"{what} is not a JSON object")
    return obj


def check_descriptor(desc: Any, what: str) -> dict:
    if not isinstance(desc, dict) or not isinstance(desc.get("mediaType", ""), str):
        raise CorruptImage(f"{what}: malformed descriptor")
    mt = desc.get("mediaType")
    if mt is not None and not _MEDIA_TYPE.match(mt):
        raise CorruptImage(f"{what}: {mt[:80]!r} is not a media type")
    if not digestmod.is_valid(desc.get("digest")):
        raise CorruptImage(f"{what}: invalid digest {desc.get('digest')!r}")
    size = desc.get("size")
    if not isinstance(size, int) or size < 0:
        raise CorruptImage(f"{what}: invalid size {size!r}")
    return desc


def parse_manifest(data: bytes) -> dict:
    """A validated image manifest or index (the kinds a ref may point at).

    Unknown layer media types are kept (the spec: an implementation that stores or copies
    manifests must not fail on them; they may be an artifact's): `check_image` is what
    refuses them where layers are unpacked. A layer listed twice is refused here, at every
    door: overlay cannot stack a directory on itself."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise CorruptImage(f"manifest of {len(data)} bytes refused (at most "
                           f"{MAX_MANIFEST_BYTES})")
    m = parse_json(data, "manifest")
    mt = m.get("mediaType")
    if mt is not None and mt not in MANIFEST_TYPES + INDEX_TYPES:
        raise CorruptImage(f"unsupported manifest media type {str(mt)[:80]!r}")
    if is_index(m):
        if "layers" in m or "config" in m:
            # one reader would walk it as an index, another as an image: refuse both
            raise CorruptImage("an image index with layers or a config is ambiguous; refused")
        if not isinstance(m.get("manifests"), list):
            raise CorruptImage("image index has no manifests list")
        for i, d in enumerate(m["manifests"]):
            check_descriptor(d, f"index entry {i}")
        return m
    if "manifests" in m:
        raise CorruptImage("an image manifest with a manifests list is ambiguous; refused")
    check_descriptor(m.get("config"), "manifest config")
    layers = m.get("layers")
    if not isinstance(layers, list):
        raise CorruptImage("manifest has no layers list")
    seen: dict[str, int] = {}
    for i, d in enumerate(layers):
        check_descriptor(d, f"manifest layer {i + 1}")
        first = seen.setdefault(d["digest"], i)
        if first != i:
            raise CorruptImage(f"manifest lists layer {d['digest']} twice (layers {first + 1} "
                               f"and {i + 1}); an image cannot stack a layer on itself")
    return m


def check_image(m: dict, what: str = "image") -> None:
    """Refuse a manifest whose layers cocker cannot unpack (unknown media types: an
    artifact, or a format of the future) with a message naming the first such layer."""
    if is_index(m):
        return
    cmt = (m.get("config") or {}).get("mediaType")
    if cmt not in CONFIG_TYPES + (None,):
        raise CorruptImage(f"{what} is an artifact (config media type {cmt!r}), not an "
                           "image cocker can run or import")
    for i, d in enumerate(m.get("layers") or []):
        if d.get("mediaType") not in COMPRESSION_OF:
            raise CorruptImage(f"{what}: layer {i + 1} has media type {d.get('mediaType')!r}, "
                               "which is not a layer format cocker knows")


def check_diff_ids(diff_ids: Any, n: int, what: str = "image config") -> list[str]:
    """The config's rootfs.diff_ids, checked: one valid digest per layer, none twice."""
    if not isinstance(diff_ids, list) or len(diff_ids) != n:
        raise CorruptImage(f"{what}: rootfs.diff_ids does not match the manifest's layers")
    seen: set[str] = set()
    for d in diff_ids:
        if not digestmod.is_valid(d):
            raise CorruptImage(f"{what}: invalid diff_id {str(d)[:80]!r}")
        if d in seen:
            raise CorruptImage(f"{what}: layer content {d} appears twice in rootfs.diff_ids; "
                               "an image cannot stack a layer on itself")
        seen.add(d)
    return diff_ids


def ref_entry(refname: str, digest: str, manifest_bytes: bytes) -> dict:
    """The image-layout index entry naming one ref."""
    return descriptor(manifest_media_type(manifest_bytes), digest, len(manifest_bytes),
                      {REF_NAME: refname})


def index_with(index_bytes: bytes | None, refname: str, entry: dict | None) -> list[dict] | None:
    """The image-layout index's manifests with `refname`'s entry replaced by `entry` (or
    dropped when None), sorted by ref name; None when the index is unreadable (rebuild it)."""
    try:
        index = parse_json(index_bytes or b"", "index.json")
    except CorruptImage:
        return None
    manifests = [m for m in index.get("manifests", []) if isinstance(m, dict)
                 and (m.get("annotations") or {}).get(REF_NAME) != refname]
    if entry is not None:
        manifests.append(entry)
    manifests.sort(key=lambda m: (m.get("annotations") or {}).get(REF_NAME, ""))
    return manifests


def is_index(m: dict) -> bool:
    """An image index (by its media type; without one, by having manifests and no layers):
    the one rule every reader of a parsed manifest uses."""
    mt = m.get("mediaType")
    if mt is not None:
        return mt in INDEX_TYPES
    return "manifests" in m and "layers" not in m


def referenced_blobs(m: dict) -> list[str]:
    """Digests a manifest or index needs to be complete (one level deep)."""
    if is_index(m):
        return [d["digest"] for d in m["manifests"]]
    return [m["config"]["digest"]] + [d["digest"] for d in m["layers"]]


def manifest_media_type(data: bytes) -> str:
    m = parse_json(data, "manifest")
    mt = m.get("mediaType")
    if mt:
        return mt
    return INDEX if "manifests" in m else MANIFEST


def new_config(diff_ids: list[str], *, created: str | None = None, base: dict | None = None,
               history: list[dict] | None = None) -> dict:
    """An OCI image config, keeping `base`'s runtime settings and history when given."""
    cfg: dict[str, Any] = {
        "architecture": (base or {}).get("architecture") or go_arch(),
        "os": (base or {}).get("os") or "linux",
        "config": dict((base or {}).get("config") or {}),
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": list(history if history is not None else (base or {}).get("history") or []),
    }
    if created:
        cfg["created"] = created
    if base and base.get("author"):
        cfg["author"] = base["author"]
    return cfg


def new_manifest(config_bytes: bytes, layers: list[dict], annotations: dict | None = None) -> dict:
    m: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(CONFIG, config_bytes),
        "layers": layers,
    }
    if annotations:
        m["annotations"] = annotations
    return m
