"""`cocker image export REF DEST --format oci|docker-archive|cockerimage|rootfs`.

Every format is written beside DEST under a temporary name and renamed into place, so an
interrupted export never leaves something that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
from typing import Any

from builder import archive_formats as af
from builder.importers import NAME_ANNOTATION
from common.errors import AlreadyExists, CorruptImage, UsageError
from common.fsutil import atomic_write
from registry.layer import tar_codec as layer_tar
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.repo import convert
from registry.repo import copy as copymod
from registry.repo import image as imagemod
from registry.repo.image import Image
from registry.repo.layout import LayoutRepo, is_layout
from registry.repo.store import Store
from registry.transports.legacy import names as legacy_names

EXPORT_FORMATS = ("oci", "docker-archive", "cockerimage", "rootfs")


def guess_format(dest: str) -> str:
    return "cockerimage" if dest.endswith(af.COCKERIMAGE_SUFFIX) else "oci"


def export_image(store: Store, ref: str, dest: str, fmt: str | None = None, *,
                 compression: str = "keep", progress: Any = None) -> str:
    """Write image REF to DEST in `fmt`; returns the path written.

    `compression` (oci only): "keep" the store's layer blobs (same digests), or recompress
    them to "gzip" (for older readers such as umoci 0.4) or "zstd"."""
    if compression not in ("keep", "gzip", "zstd"):
        raise UsageError(f"unknown layer compression {compression!r}: use keep, gzip or zstd")
    fmt = fmt or guess_format(dest)
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    img = imagemod.load(store, ref)
    if fmt == "oci":
        if dest.endswith(".tar"):
            return _to_file(dest, lambda tmp: _oci_tar(store, img, tmp, compression, progress))
        return _oci_dir(store, img, dest, compression, progress)
    if fmt == "docker-archive":
        return _to_file(dest, lambda tmp: _docker_archive(store, img, tmp))
    if fmt == "cockerimage":
        if os.path.isdir(dest):
            dest = os.path.join(dest, cockerimage_name(img))
        return _to_file(dest, lambda tmp: _packed_rootfs(store, img, tmp, "gzip"))
    for ext, comp in ((".tar", "none"), (".tar.gz", "gzip"), (".tgz", "gzip"),
                      (".tar.zst", "zstd")):
        if dest.endswith(ext):
            return _to_file(dest, lambda tmp, comp=comp: _packed_rootfs(store, img, tmp, comp))
    return _rootfs_dir(store, img, dest)


def cockerimage_name(img: Image) -> str:
    """C cocker's file name: `author=name:version.cockerimage` (no version part for `_`)."""
    return legacy_names.filename(img.name, img.version)


def _tmp_beside(dest: str) -> str:
    d = os.path.dirname(os.path.abspath(dest))
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, f".{os.path.basename(dest)}.cocker-tmp.{os.getpid()}")


def _to_file(dest: str, write: Any) -> str:
    if os.path.isdir(dest):
        raise AlreadyExists(f"{dest} is a directory")
    tmp = _tmp_beside(dest)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest


# --- OCI layout --------------------------------------------------------------------------

def _oci_dir(store: Store, img: Image, dest: str, compression: str, progress: Any) -> str:
    """Copy into an OCI layout. In a layout cocker does not manage, index.json names the
    image by its version alone (what `skopeo oci:DIR:TAG` and `umoci --image DIR:TAG`
    use for a plain layout), with the full name kept in io.cocker.image.name."""
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise AlreadyExists(f"{dest} exists and is not a directory")
    managed = is_layout(dest) and os.path.isdir(os.path.join(dest, "refs"))
    if os.path.exists(dest) and not is_layout(dest) and os.listdir(dest):
        raise AlreadyExists(f"{dest} exists and is not an OCI layout")
    old_entries: list[dict] = []
    if is_layout(dest) and not managed:
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(dest, "index.json")) as f:
                old_entries = list(json.load(f).get("manifests") or [])
    repo = LayoutRepo(dest, create=True)
    if img.manifest.get("mediaType") == oci.DOCKER_MANIFEST:
        digest = _as_oci(store, img, repo, compression)
    elif compression == "keep" or all(oci.COMPRESSION_OF.get(d["mediaType"]) == compression
                                    for d in img.layers):
        copymod.copy(img.ref, store, repo, progress=progress)
        digest = img.digest
    else:
        digest = _recompressed(store, img, repo, compression)
    if managed:
        return dest
    raw = repo.read_blob(digest)
    # The manifest's own media type: a docker schema2 image stays one, and skopeo and umoci
    # refuse an entry that claims another type than the blob it names.
    entry = oci.descriptor(oci.manifest_media_type(raw), digest, len(raw),
                           {oci.REF_NAME: img.version, NAME_ANNOTATION: str(img.ref)})
    kept = [e for e in old_entries
            if (e.get("annotations") or {}).get(oci.REF_NAME) != img.version]
    index = {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": kept + [entry]}
    atomic_write(os.path.join(dest, "index.json"), json.dumps(index, indent=1).encode())
    # cocker's own bookkeeping is not part of a plain layout.
    shutil.rmtree(os.path.join(dest, "refs"), ignore_errors=True)
    shutil.rmtree(os.path.join(dest, "tmp"), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(dest, ".lock"))
    return dest


def _as_oci(store: Store, img: Image, repo: LayoutRepo, compression: str) -> str:
    """A docker schema2 image as the OCI manifest of the same config and layer bytes: an OCI
    layout's readers (skopeo, umoci) take only OCI manifests, as `skopeo copy` converts."""
    if compression != "keep" and not all(
            oci.COMPRESSION_OF.get(d["mediaType"]) == compression for d in img.layers):
        return _recompressed(store, img, repo, compression)
    descs = []
    for desc in img.layers:
        copymod.copy_blob(store, repo, desc["digest"], desc["size"])
        descs.append({**desc, "mediaType": oci.OCI_LAYER_FOR_DOCKER.get(desc["mediaType"],
                                                                        desc["mediaType"])})
    return imagemod.publish(repo, img.name, img.version, store.read_blob(img.config_digest),
                            descs, force=True,
                            annotations=img.manifest.get("annotations") or None).digest


def _recompressed(store: Store, img: Image, repo: LayoutRepo, compression: str) -> str:
    """The image again in `repo` with its layers recompressed; same diff_ids and config."""
    descs = []
    for desc, diff in zip(img.layers, img.diff_ids, strict=True):
        if oci.COMPRESSION_OF.get(desc["mediaType"]) == compression:
            copymod.copy_blob(store, repo, desc["digest"], desc["size"])
            descs.append({**desc, "mediaType": oci.OCI_LAYER_FOR_DOCKER.get(
                desc["mediaType"], desc["mediaType"])})
            continue
        descs.append(convert.recompress(store, repo, desc, diff, compression).descriptor())
    published = imagemod.publish(repo, img.name, img.version,
                                 store.read_blob(img.config_digest), descs, force=True,
                                 annotations=img.manifest.get("annotations") or None)
    return published.digest


def _oci_tar(store: Store, img: Image, tmp: str, compression: str, progress: Any) -> None:
    scratch = tempfile.mkdtemp(prefix="export.", dir=store.tmp_dir)
    try:
        layout = os.path.join(scratch, "layout")
        _oci_dir(store, img, layout, compression, progress)
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for name in ("oci-layout", "index.json"):
                tf.add(os.path.join(layout, name), name, filter=_plain)
            tf.add(os.path.join(layout, "blobs"), "blobs", recursive=False, filter=_plain)
            tf.add(os.path.join(layout, "blobs", "sha256"), "blobs/sha256", recursive=False,
                   filter=_plain)
            for h in sorted(os.listdir(os.path.join(layout, "blobs", "sha256"))):
                tf.add(os.path.join(layout, "blobs", "sha256", h), f"blobs/sha256/{h}",
                       filter=_plain)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _plain(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


# --- docker save format ------------------------------------------------------------------

def _docker_archive(store: Store, img: Image, tmp: str) -> None:
    """manifest.json + <config>.json + <diff_id>/layer.tar (uncompressed, as `docker save`
    writes and `docker load` / `podman load` / skopeo's docker-archive read)."""
    config_raw = store.read_blob(img.config_digest)
    config_name = digestmod.hex_of(img.config_digest) + ".json"
    layer_names: list[str] = []
    scratch = tempfile.mkdtemp(prefix="export.", dir=store.tmp_dir)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            _add_bytes(tf, config_name, config_raw)
            seen: set[str] = set()
            for desc, diff in zip(img.layers, img.diff_ids, strict=True):
                name = digestmod.hex_of(diff) + "/layer.tar"
                layer_names.append(name)
                if diff in seen:
                    continue
                seen.add(diff)
                plain = os.path.join(scratch, "layer.tar")
                with store.open_blob(desc["digest"]) as src, open(plain, "wb") as out:
                    r = layer_tar.open_layer(src)
                    h = digestmod.Verifier(diff)
                    while chunk := r.read(layer_tar.CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                    h.check()
                _add_bytes(tf, digestmod.hex_of(diff) + "/VERSION", b"1.0")
                tf.add(plain, name, filter=_plain)
                os.unlink(plain)
            manifest = [{"Config": config_name, "RepoTags": [str(img.ref)],
                         "Layers": layer_names}]
            _add_bytes(tf, "manifest.json", json.dumps(manifest).encode())
            if layer_names:
                repos = {img.name: {img.version: layer_names[-1].split("/")[0]}}
                _add_bytes(tf, "repositories", json.dumps(repos).encode())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    import io
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    tf.addfile(ti, io.BytesIO(data))


# --- flattened root filesystem ---------------------------------------------------------

def flatten(store: Store, img: Image, dest: str) -> None:
    """Apply every layer, bottom to top, into `dest` (whiteouts delete)."""
    for i, (desc, diff) in enumerate(zip(img.layers, img.diff_ids, strict=True)):
        with store.open_blob(desc["digest"]) as f:
            got = layer_tar.unpack(f, dest, whiteouts="apply")
        if got != diff:
            raise CorruptImage(f"{img.ref}: layer {i + 1} unpacks to {digestmod.short(got)}, "
                               f"the config says {digestmod.short(diff)}")


def _packed_rootfs(store: Store, img: Image, tmp: str, compression: str) -> None:
    scratch = tempfile.mkdtemp(prefix="export.", dir=store.tmp_dir)
    try:
        root = os.path.join(scratch, "root")
        flatten(store, img, root)
        with open(tmp, "wb", buffering=layer_tar.CHUNK) as f:
            layer_tar.pack_dir(root, f, compression=compression)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _rootfs_dir(store: Store, img: Image, dest: str) -> str:
    if os.path.lexists(dest) and not (os.path.isdir(dest) and not os.listdir(dest)):
        raise AlreadyExists(f"{dest} already exists; give a new or empty directory")
    tmp = _tmp_beside(dest)
    try:
        flatten(store, img, tmp)
        if os.path.isdir(dest):
            os.rmdir(dest)
        os.rename(tmp, dest)
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
