"""Squash: merge an image's layers (all, or those above a base version) into one.

Without a base the layers are unpacked onto each other with their whiteouts applied and
the flat tree is packed: a one-layer image with no whiteouts at all.

With `--since BASE` the lower layers stay, so the squashed layer must still delete (and
hide) what the merged upper layers deleted from them. Each upper layer is unpacked in
overlay form (whiteouts as char 0/0 devices, opaque dirs as xattrs) and merged into an
accumulator with overlay's own rules, so the accumulator is exactly the upper dir one
overlay would have produced:
  - a whiteout replaces whatever the accumulator had there (and stays: BASE may have it);
  - an opaque dir replaces the accumulator's entry;
  - a plain dir merges into an accumulator dir, and otherwise lands as an OPAQUE dir when
    the accumulator had a file, link or whiteout there (those hid BASE's entry, and so must
    the squashed dir);
  - anything else replaces the accumulator's entry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from typing import Any

from builder import meta, versioning
from builder.treediff import OPAQUE
from builder.versioning import NewVersion
from common.errors import DigestMismatch, UsageError
from registry.layer import tar_codec as layer_tar
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.repo import image as imagemod
from registry.repo.image import Image


def squash_to(store, src: str, newref: str, *, bump: str | None = None,
              since: str | None = None, force: bool = False, message: str | None = None,
              progress: Any = None) -> Image:
    """What `cocker image squash REF NEWREF` does: pick the version NEWREF (or --bump) names,
    squash into it."""
    target = versioning.target(store, newref, bump, force=force)
    return squash(store, src, target, since=since, force=force, message=message,
                  progress=progress)


def squash(store, src: str, target: NewVersion, *, since: str | None = None,
           force: bool = False, message: str | None = None, author: str | None = None,
           progress: Any = None) -> Image:
    img = imagemod.load(store, src)
    keep = 0
    if since:
        base = imagemod.load(store, since)
        keep = len(base.diff_ids)
        if img.diff_ids[:keep] != base.diff_ids or keep > len(img.diff_ids):
            raise UsageError(f"{since} is not a base of {src}: its layers are not the first "
                             f"layers of {src}")
    if len(img.diff_ids) - keep < 1:
        raise UsageError(f"{src} has no layers above {since or 'the bottom'} to squash")
    layer, diff_id = squash_layers(store, img.layers[keep:], img.diff_ids[keep:],
                                   keep_whiteouts=keep > 0, progress=progress)
    created = meta.timestamp(meta.source_date_epoch())
    hist = meta.layer_history(img.config)
    pos, seen = 0, 0
    while pos < len(hist) and seen < keep:
        if not hist[pos].get("empty_layer"):
            seen += 1
        pos += 1
    merged = [dict(h, empty_layer=True) for h in hist[pos:]]
    n = len(img.diff_ids) - keep
    by = f"cocker image squash {src} --since {since}" if since else f"cocker image squash {src}"
    entry = meta.history_entry(created, by, author=author,
                               comment=message or f"{n} layer(s) squashed into one")
    config = oci.new_config(img.diff_ids[:keep] + [diff_id], created=created, base=img.config,
                            history=hist[:pos] + merged + [entry])
    if author:
        config["author"] = author
    return imagemod.publish(store, target.name, target.version, config,
                            img.layers[:keep] + [layer], force=force,
                            annotations=meta.parent_annotations(img.digest, src))


def squash_layers(store, layers: list[dict], diff_ids: list[str], *, keep_whiteouts: bool,
                  progress: Any = None) -> tuple[dict, str]:
    """One layer (descriptor, diff_id) equivalent to `layers` stacked bottom -> top."""
    if len(layers) == 1:
        return layers[0], diff_ids[0]
    sde = meta.source_date_epoch()
    work = tempfile.mkdtemp(prefix="squash.", dir=store.tmp_dir)
    try:
        acc = os.path.join(work, "acc")
        os.mkdir(acc)
        for i, (desc, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
            if keep_whiteouts:
                tree = os.path.join(work, f"l{i}")
                os.mkdir(tree)
                _unpack(store, desc, diff_id, tree, "overlay")
                merge_overlay(acc, tree)
                shutil.rmtree(tree)
            else:
                _unpack(store, desc, diff_id, acc, "apply")
        packed = layer_tar.pack_into(store, acc, overlay_upper=keep_whiteouts,
                                     source_date_epoch=sde, progress=progress)
        return packed.descriptor(), packed.diff_id
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack(store, desc: dict, diff_id: str, dest: str, whiteouts: str) -> None:
    with store.open_blob(digestmod.validate(desc["digest"])) as f:
        got = layer_tar.unpack(f, dest, whiteouts=whiteouts)
    if got != diff_id:
        raise DigestMismatch(f"layer {desc['digest']} unpacks to diff_id {got}, "
                             f"the config says {diff_id}")


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove(path: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def merge_overlay(acc: str, layer: str) -> None:
    """Move the overlay-form tree `layer` onto the overlay-form tree `acc` (module doc)."""
    for name in sorted(os.listdir(layer)):
        src, dst = os.path.join(layer, name), os.path.join(acc, name)
        sst, dst_st = os.lstat(src), _lstat(os.path.join(acc, name))
        if stat.S_ISDIR(sst.st_mode) and not _is_opaque(src) and dst_st is not None \
                and stat.S_ISDIR(dst_st.st_mode):
            merge_overlay(dst, src)
            _copy_dir_meta(src, dst, sst)
            continue
        hide = stat.S_ISDIR(sst.st_mode) and dst_st is not None
        if dst_st is not None:
            _remove(dst, dst_st)
        os.rename(src, dst)
        if hide and not _is_opaque(dst):
            os.setxattr(dst, OPAQUE, b"y", follow_symlinks=False)


def _copy_dir_meta(src: str, dst: str, st: os.stat_result) -> None:
    """The upper layer's directory attributes win, as in the overlay; opaqueness stays."""
    src_x = {n for n in os.listxattr(src, follow_symlinks=False) if n != OPAQUE}
    for n in os.listxattr(dst, follow_symlinks=False):
        if n != OPAQUE and n not in src_x:
            with contextlib.suppress(OSError):
                os.removexattr(dst, n)
    for n in src_x:
        with contextlib.suppress(OSError):
            os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=False))
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
