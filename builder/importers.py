"""`cocker image import SOURCE [REF]`: any supported format into the local store.

Atomic: layer blobs go in first (verified), then one `registry.repo.image.publish` writes the
config and manifest and, last, the ref. A failure leaves no ref behind (orphan blobs are
gc's business).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from builder import archive_formats as af
from builder.versioning import NewVersion
from common.errors import CockerError, Conflict, CorruptImage, DigestMismatch, NotFound, UsageError
from registry.layer import tar_codec as layer_tar
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import image as imagemod
from registry.repo.store import Store

DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
NAME_ANNOTATION = "io.cocker.image.name"  # full name:version, kept in exported layouts


@dataclass
class ImportResult:
    name: str
    version: str
    digest: str
    format: str
    layers: list[str] = field(default_factory=list)
    dropped_devices: int = 0     # device nodes left out (a rootfs's /dev: the runtime makes it)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "name": self.name, "version": self.version,
                "digest": self.digest, "format": self.format, "layers": self.layers,
                "dropped_devices": self.dropped_devices}


def _now() -> str:
    sde = os.environ.get("SOURCE_DATE_EPOCH", "")
    t = int(sde) if sde.isdigit() else time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _target(ref: str | None, fallback: str | None) -> NewVersion:
    text = ref or fallback
    if not text:
        raise UsageError("no REF given and the source names no image; "
                         "say which name:version to import as")
    r = refmod.parse(text)
    if r.digest:
        raise UsageError(f"{text}: import needs name[:version], not a digest")
    return NewVersion(r.name, r.version if r.version is not None else refmod.UNVERSIONED)


def _parse_or_none(text: str | None) -> str | None:
    if not text:
        return None
    try:
        r = refmod.parse(text)
        return str(r) if not r.digest else None
    except CockerError:
        return None


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------

class _TeeReader:
    """Reads `src`, hashing and copying every byte into `out` on the way."""

    def __init__(self, src: BinaryIO, out: BinaryIO) -> None:
        self.src, self.out = src, out
        self.h = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        if data:
            self.h.update(data)
            self.size += len(data)
            self.out.write(data)
        return data

    def drain(self) -> None:
        while self.read(layer_tar.CHUNK):
            pass


class _SizedReader:
    """Refuses a stream longer or shorter than its descriptor says, as the bytes arrive
    (a wrong size is caught before a byte too many is stored)."""

    def __init__(self, src: BinaryIO, size: int, what: str) -> None:
        self.src, self.size, self.what = src, size, what
        self.got = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.got += len(data)
        if self.got > self.size:
            raise CorruptImage(f"{self.what}: more than the {self.size} bytes its descriptor "
                               "says")
        if not data and n != 0 and self.got != self.size:
            raise CorruptImage(f"{self.what}: {self.got} bytes, but its descriptor says "
                               f"{self.size}")
        return data


def ingest_layer(store: Store, src: BinaryIO, diff_id: str, *, digest: str | None = None,
                 size: int | None = None, compression: str = "zstd", progress: Any = None,
                 what: str = "layer") -> dict:
    """Put one foreign layer into the store and return its OCI descriptor.

    Already gzip/zstd: kept byte for byte (same digest), after checking in one pass that
    it hashes to `digest`, has `size` bytes and decompresses to `diff_id`. Uncompressed:
    compressed with `compression` (the diff_id is still checked)."""
    digestmod.validate(diff_id)
    if size is not None:
        src = _SizedReader(src, size, what)  # type: ignore[assignment]
    kind, stream = layer_tar.sniff(src)
    tmp = store.new_tmp_path("import")
    try:
        with open(tmp, "wb", buffering=layer_tar.CHUNK) as out:
            if kind == "none":
                packed = layer_tar.pack_tar_stream(stream, out, compression=compression,
                                                   progress=progress)
                got_diff, got_digest, size = packed.diff_id, packed.digest, packed.size
                media_type = packed.media_type
            else:
                tee = _TeeReader(stream, out)
                got_diff, _ = layer_tar.layer_diff_id(tee)  # type: ignore[arg-type]
                tee.drain()
                got_digest, size = "sha256:" + tee.h.hexdigest(), tee.size
                media_type = oci.LAYER_TYPE_FOR[kind]
                if digest and got_digest != digest:
                    raise DigestMismatch(f"{what}: content hashes to "
                                         f"{digestmod.short(got_digest)}, not "
                                         f"{digestmod.short(digest)}")
        if got_diff != diff_id:
            raise CorruptImage(f"{what}: uncompressed content hashes to "
                               f"{digestmod.short(got_diff)} but the config says "
                               f"{digestmod.short(diff_id)}")
        store.ingest(tmp, got_digest)
        return oci.descriptor(media_type, got_digest, size)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------
# Image archives (OCI layout, docker save)
# --------------------------------------------------------------------------------------

@dataclass
class _Raw:
    """The bytes an OCI archive holds for its manifest and config: kept as they are, so the
    imported image has the digest it had there."""

    manifest_bytes: bytes
    config_bytes: bytes
    manifest: dict


@dataclass
class _Candidate:
    names: list[str]            # how the archive calls it (ref.name, RepoTags)
    default_ref: str | None     # what to import it as when no REF is given
    load: Any                   # () -> (config, [(open(), diff_id, digest|None, size)], _Raw)


def _blob_name(d: str) -> str:
    return "blobs/sha256/" + digestmod.hex_of(d)


def _oci_candidates(files: af.ArchiveFiles) -> list[_Candidate]:
    index = oci.parse_json(files.read("index.json"), "index.json")
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise CorruptImage("index.json has no manifests list")
    out = []
    for i, desc in enumerate(manifests):
        oci.check_descriptor(desc, f"index.json entry {i}")
        ann = desc.get("annotations") or {}
        refname = ann.get(oci.REF_NAME)
        names = [n for n in (refname, ann.get(NAME_ANNOTATION),
                             ann.get("io.containerd.image.name")) if n]
        # cocker's own name, a cocker store's "name:version", or docker >= 25's full name.
        default = (_parse_or_none(ann.get(NAME_ANNOTATION))
                   or (_parse_or_none(refname) if refname and ":" in refname else None)
                   or _parse_or_none(_strip_docker_host(ann.get("io.containerd.image.name")
                                                        or "")))
        out.append(_Candidate(names, default, lambda d=desc: _load_oci(files, d)))
    return out


def _load_oci(files: af.ArchiveFiles, desc: dict,
              blob_name: Callable[[str], str] = _blob_name) -> tuple[dict, list, _Raw | None]:
    raw = files.read(blob_name(desc["digest"]))
    _verify(raw, desc, "manifest")
    return _load_manifest(files, raw, digestmod.short(desc["digest"]), blob_name)


def _load_manifest(files: af.ArchiveFiles, raw: bytes, what: str,
                   blob_name: Callable[[str], str]) -> tuple[dict, list, _Raw | None]:
    m = oci.parse_manifest(raw)
    if oci.is_index(m):
        arch = oci.go_arch()
        pick = [d for d in m["manifests"]
                if (d.get("platform") or {}).get("architecture", arch) == arch
                and (d.get("platform") or {}).get("os", "linux") == "linux"]
        if not pick:
            raise NotFound(f"image index has no manifest for linux/{arch}")
        return _load_oci(files, pick[0], blob_name)
    oci.check_image(m, f"manifest {what}")
    craw = files.read(blob_name(m["config"]["digest"]))
    _verify(craw, m["config"], "config")
    config = oci.parse_json(craw, "image config")
    diff_ids = _diff_ids(config, len(m["layers"]))
    layers = [(lambda d=d: files.open(blob_name(d["digest"])), diff, d["digest"], d["size"])
              for d, diff in zip(m["layers"], diff_ids, strict=True)]
    return config, layers, _Raw(raw, craw, m)


def _skopeo_candidates(files: af.ArchiveFiles) -> list[_Candidate]:
    """skopeo's `dir:` holds one image: its manifest.json (by no digest: whatever it
    hashes to) and blobs named by bare hex; it records no name, so REF is needed."""
    return [_Candidate([], None, lambda: _load_manifest(
        files, files.read("manifest.json"), "manifest.json", digestmod.hex_of))]


def _docker_candidates(files: af.ArchiveFiles) -> list[_Candidate]:
    data = files.read("manifest.json")
    try:
        import json
        entries = json.loads(data)
    except ValueError as e:
        raise CorruptImage(f"manifest.json is not valid JSON: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise CorruptImage("manifest.json lists no images")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or not isinstance(
                entry.get("Layers"), list):
            raise CorruptImage("manifest.json: malformed entry")
        tags = [t for t in (entry.get("RepoTags") or []) if isinstance(t, str)]
        default = next((p for p in (_parse_or_none(_strip_docker_host(t)) for t in tags) if p),
                       None)
        out.append(_Candidate(tags, default, lambda entry=entry: _load_docker(files, entry)))
    return out


def _strip_docker_host(tag: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/", "localhost/"):
        if tag.startswith(prefix):
            return tag[len(prefix):]
    return tag


def _load_docker(files: af.ArchiveFiles, entry: dict) -> tuple[dict, list, _Raw | None]:
    config = oci.parse_json(files.read(entry["Config"]), "image config")
    diff_ids = _diff_ids(config, len(entry["Layers"]))
    layers = []
    for path, diff in zip(entry["Layers"], diff_ids, strict=True):
        if not isinstance(path, str):
            raise CorruptImage("manifest.json: malformed layer path")
        # docker >= 25 names layers blobs/sha256/<digest>: then the digest is known.
        dig = None
        if path.startswith("blobs/sha256/") and digestmod.is_valid("sha256:" + path[13:]):
            dig = "sha256:" + path[13:]
        layers.append((lambda p=path: files.open(p), diff, dig, None))
    return config, layers, None


def _verify(data: bytes, desc: dict, what: str) -> None:
    d = desc["digest"]
    if len(data) != desc["size"]:
        raise CorruptImage(f"{what} {digestmod.short(d)} has {len(data)} bytes, but its "
                           f"descriptor says {desc['size']}")
    if digestmod.of_bytes(data) != d:
        raise DigestMismatch(f"{what} {digestmod.short(d)} does not match its digest")


def _diff_ids(config: dict, n: int) -> list[str]:
    return oci.check_diff_ids((config.get("rootfs") or {}).get("diff_ids"), n)


def _choose(cands: list[_Candidate], source_ref: str | None, ref: str | None) -> _Candidate:
    if source_ref:
        hits = [c for c in cands if source_ref in c.names]
        if not hits:
            raise NotFound(f"no image called {source_ref!r} in the archive; it holds: "
                           + _listing(cands))
        return hits[0]
    if len(cands) == 1:
        return cands[0]
    if ref:
        r = refmod.parse(ref)
        wanted = {ref, str(r), r.version or ""} - {""}
        hits = [c for c in cands if wanted & set(c.names) or c.default_ref == str(r)]
        if len(hits) == 1:
            return hits[0]
    raise UsageError(f"the archive holds {len(cands)} images; choose one with --source-ref "
                     f"({_listing(cands)})")


def _listing(cands: list[_Candidate]) -> str:
    return ", ".join(c.names[0] if c.names else "(unnamed)" for c in cands) or "nothing"


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------

STDIN = "-"


@contextlib.contextmanager
def _spooled(store: Store, stream: BinaryIO) -> Iterator[str]:
    """`stream` copied into the store's scratch space (archives are read out of order),
    removed afterwards whatever happens."""
    tmp = store.new_tmp_path("stdin")
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(stream, out, layer_tar.CHUNK)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def import_image(store: Store, source: str, ref: str | None = None, *,
                 source_ref: str | None = None, compression: str = "zstd", force: bool = False,
                 fmt: str | None = None, progress: Any = None,
                 stdin: BinaryIO | None = None, label: str | None = None) -> ImportResult:
    """Import SOURCE (any format of builder.archive_formats, detected unless `fmt`);
    SOURCE `-` reads a tar (rootfs, OCI or docker archive) from `stdin`. `label` names
    the source in the image's history (default: SOURCE's file name)."""
    if source == STDIN:
        if stdin is None:
            raise UsageError("import from '-' needs the data on standard input")
        if ref is None:
            raise UsageError("import from standard input needs a REF to import as")
        with _spooled(store, stdin) as path:
            res = import_image(store, path, ref, source_ref=source_ref, compression=compression,
                               force=force, fmt=fmt, progress=progress, label="-")
        return res
    fmt = fmt or af.detect(source)
    if fmt not in af.FORMATS:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(af.FORMATS)}")
    if ref is not None:
        target = _target(ref, None)
        _refuse_existing(store, target, force)
    dropped = 0
    if fmt in (af.ROOTFS_DIR, af.ROOTFS_TAR, af.COCKERIMAGE):
        fallback = af.name_from_cockerimage(source) if fmt == af.COCKERIMAGE else None
        target = _target(ref, fallback)
        _refuse_existing(store, target, force)
        layer, dropped = _import_rootfs(store, source, fmt, compression, progress)
        created = _now()
        config = oci.new_config([layer.diff_id], created=created, history=[{
            "created": created,
            "created_by": "cocker image import "
                          + (label or os.path.basename(os.path.normpath(source)))}])
        config["config"] = {"Env": list(DEFAULT_ENV), "Cmd": ["/bin/sh"]}
        descs = [layer.descriptor()]
    else:
        with af.open_archive(source, fmt, store.tmp_dir) as files:
            cands = (_oci_candidates(files) if fmt in (af.OCI_DIR, af.OCI_TAR)
                     else _skopeo_candidates(files) if fmt == af.SKOPEO_DIR
                     else _docker_candidates(files))
            cand = _choose(cands, source_ref, ref)
            target = _target(ref, cand.default_ref)
            _refuse_existing(store, target, force)
            config, layers, raw = cand.load()
            descs = []
            for i, (opener, diff, dig, size) in enumerate(layers):
                with opener() as stream:
                    descs.append(ingest_layer(store, stream, diff, digest=dig, size=size,
                                              compression=compression, progress=None,
                                              what=f"layer {i + 1}/{len(layers)}"))
        if raw is not None:
            return _publish_faithful(store, target, raw, descs, fmt, force)
    img = imagemod.publish(store, target.name, target.version, config, descs, force=force)
    return ImportResult(target.name, target.version, img.digest, fmt,
                        [d["digest"] for d in descs], dropped)


def _publish_faithful(store: Store, target: NewVersion, raw: _Raw, descs: list[dict], fmt: str,
                      force: bool) -> ImportResult:
    """Keep the archive's config bytes, and its manifest bytes when every layer was kept
    as it was (an uncompressed layer is compressed on the way in: then a new manifest,
    with the original's annotations)."""
    version = target.version
    # Same digests, same bytes (a docker layer type names the same gzip as the OCI one).
    kept = [d["digest"] for d in raw.manifest["layers"]] == [d["digest"] for d in descs]
    if kept:
        store.put_blob_bytes(digestmod.of_bytes(raw.config_bytes), raw.config_bytes)
        img = imagemod.publish_manifest(store, target.name, version, raw.manifest_bytes,
                                        force=force)
    else:
        img = imagemod.publish(store, target.name, version, raw.config_bytes, descs,
                               force=force, annotations=raw.manifest.get("annotations"))
    return ImportResult(target.name, version, img.digest, fmt,
                        [d["digest"] for d in descs])


def _refuse_existing(store: Store, target: NewVersion, force: bool) -> None:
    if not force and store.get_ref(target.name, target.version) is not None:
        raise Conflict(f"{target} already exists in the local store; use --force to replace it")


def _import_rootfs(store: Store, source: str, fmt: str, compression: str,
                   progress: Any) -> tuple[layer_tar.PackedLayer, int]:
    """The layer, and how many device nodes were left out of it."""
    if fmt == af.ROOTFS_DIR:
        # Device nodes would make the image unusable (unpacking refuses them): a rootfs's
        # /dev is the runtime's business, as for tarballs below.
        packed = layer_tar.pack_into(store, source, compression=compression, progress=progress,
                                     skip_devices=True)
        return packed, packed.skipped_devices
    # A tarball is made safe and normal by a round trip through a scratch tree: the safe
    # unpacker refuses anything hostile, the packer makes it reproducible. Whiteouts
    # (`.wh.` files, or char 0/0 nodes in a legacy cocker layer) survive as overlay form.
    scratch = tempfile.mkdtemp(prefix="import.", dir=store.tmp_dir)
    try:
        with open(source, "rb") as f:
            unpacked = layer_tar.unpack_layer(f, os.path.join(scratch, "root"),
                                              whiteouts="overlay", skip_devices=True)
        return layer_tar.pack_into(store, os.path.join(scratch, "root"),
                                   compression=compression, overlay_upper=True,
                                   progress=progress), unpacked.skipped_devices
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
