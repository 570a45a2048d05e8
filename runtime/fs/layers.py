"""Layer trees: each layer unpacked once under `layers/<diff_id hex>/`, shared by every container.

A tree is unpacked into a temporary directory next to its final place, its diff_id checked, then
renamed into place, so a tree that exists is complete. An flock per diff_id keeps two processes
from unpacking the same layer at once. Trees are treated as read-only overlay lower dirs.
"""

from __future__ import annotations

import contextlib
import os
import time

from common.errors import DigestMismatch
from common.fsutil import flock
from registry.oci import digest as digestmod
from registry.oci import manifest as oci

TMP_PREFIX = ".tmp-"
LOCK_PREFIX = ".lock-"


def tree_path(store, diff_id: str) -> str:
    return os.path.join(store.layers_dir, digestmod.hex_of(digestmod.validate(diff_id)))


def ensure_layers(store, image, progress=None) -> list[str]:
    """Layer trees of `image`, bottom -> top, unpacking the ones not there yet."""
    diff_ids = image.diff_ids
    layers = image.layers
    what = f"{image.name}:{image.version}"
    oci.check_image(image.manifest, what)
    oci.check_diff_ids(diff_ids, len(layers), f"{what}: image config")
    out = []
    for desc, diff_id in zip(layers, diff_ids, strict=True):
        path = tree_path(store, diff_id)
        if not os.path.isdir(path):
            _unpack_one(store, desc["digest"], diff_id, path, progress)
        out.append(path)
    return out


def _unpack_one(store, blob_digest: str, diff_id: str, path: str, progress=None) -> None:
    import shutil

    from registry.layer import tar_codec as layer_tar
    hexid = os.path.basename(path)
    with flock(os.path.join(store.layers_dir, LOCK_PREFIX + hexid), what=f"layer {hexid[:12]}"):
        if os.path.isdir(path):          # another process finished it while we waited
            return
        tmp = os.path.join(store.layers_dir, f"{TMP_PREFIX}{hexid[:16]}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o755)
        try:
            with store.open_blob(digestmod.validate(blob_digest)) as stream:
                got = layer_tar.unpack(stream, tmp, whiteouts="overlay")
            if got != diff_id:
                raise DigestMismatch(f"layer {blob_digest}: unpacked content has diff_id {got}, "
                                     f"the image config says {diff_id}")
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def used_diff_ids(store) -> set[str]:
    """diff_id hexes of every stored image and every container's pinned image."""
    from registry.repo import image as imagemod
    from registry.repo.repository import RefRecord
    used: set[str] = set()
    for img in imagemod.list_images(store):
        used.update(digestmod.hex_of(d) for d in img.diff_ids)
    for cname, digest in store.container_pins().items():
        try:
            img = imagemod.load_record(store, RefRecord(cname, "_", digest))
            used.update(digestmod.hex_of(d) for d in img.diff_ids)
        except Exception:       # noqa: BLE001 - a container whose image blobs are gone still pins its record
            pass
        rec = store.paths.container_record(cname)
        with contextlib.suppress(OSError, ValueError):
            import json
            with open(rec) as f:
                for d in json.load(f).get("layers") or []:
                    used.add(str(d).split(":")[-1])
    return used


def gc(store, dry_run: bool = False, grace: float = 3600.0) -> int:
    """Remove layer trees no image or container uses; returns how many (would) go."""
    import shutil
    used = used_diff_ids(store)
    n = 0
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(store.layers_dir):
            if entry.name.startswith(TMP_PREFIX):
                # an unpack that died; young ones may be in progress
                if now - entry.stat(follow_symlinks=False).st_mtime > grace:
                    n += 1
                    if not dry_run:
                        shutil.rmtree(entry.path, ignore_errors=True)
                continue
            if entry.name.startswith(".") or entry.name in used:
                continue
            if not digestmod.is_valid("sha256:" + entry.name):
                continue
            n += 1
            if not dry_run:
                _remove_tree(store, entry.path)
    return n


def _remove_tree(store, path: str) -> None:
    import shutil
    hexid = os.path.basename(path)
    with flock(os.path.join(store.layers_dir, LOCK_PREFIX + hexid), what=f"layer {hexid[:12]}"):
        # rename first so a reader never sees a half-deleted tree under the real name
        doomed = os.path.join(store.layers_dir, f"{TMP_PREFIX}gc-{hexid[:16]}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
