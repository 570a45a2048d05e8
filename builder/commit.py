"""Container -> new image version (`cocker container commit NAME REF`).

The container's overlay upper dir becomes ONE new layer on top of the layers of the image
version the container was created from (its pinned manifest digest), with whiteouts for
deletions and opaque directories. The container and the base image are left as they were
(unlike the original cocker's to_image, which consumed the container).

A running container is frozen (cgroup freezer) while its upper dir is read, so the layer
is a consistent snapshot; without `pause` a running container is refused. An upper dir
that carries overlay redirect/metacopy xattrs is not a plain diff: then the merged view is
diffed against the lower layers instead (see builder.treediff).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from builder import changes as changesmod
from builder import meta, treediff, versioning
from builder.changes import Change
from builder.versioning import NewVersion
from common.errors import CockerError, Conflict, UsageError
from registry.layer import tar_codec as layer_tar
from registry.oci import reference as refmod
from registry.repo import image as imagemod
from registry.repo.image import Image
from registry.repo.repository import RefRecord


class NothingToCommit(CockerError):
    """The container's filesystem is unchanged and no config change was asked for."""


@dataclass
class CommitResult:
    image: Image
    layer: dict | None          # the new layer's descriptor, None for a config-only version
    method: str                 # "upper" | "diff (<why>)" | "config only"

    def summary(self) -> dict[str, Any]:
        return {"reference": f"{self.image.name}:{self.image.version}",
                "digest": self.image.digest,
                "layers": [d["digest"] for d in self.image.layers],
                "new_layer": self.layer["digest"] if self.layer else None,
                "method": self.method}


def base_image(store, digest: str, image_text: str) -> Image:
    """The image version a container was created from, by its pinned digest."""
    try:
        ref = refmod.parse(image_text)
        name, version = ref.name, ref.version or digest
    except CockerError:
        name, version = "unknown", digest
    return imagemod.load_record(store, RefRecord(name, version, digest))


def commit_to(store, name: str, ref: str, *, bump: str | None = None,
              change_texts: Iterable[str] = (), message: str | None = None,
              author: str | None = None, pause: bool = False, force: bool = False,
              allow_empty: bool = False, progress: Any = None) -> CommitResult:
    """What `cocker container commit NAME REF` does: parse the --change texts, pick the
    version REF (or --bump) names, commit."""
    changes = [changesmod.parse_change(c) for c in change_texts]
    target = versioning.target(store, ref, bump, force=force)
    return commit(store, name, target, message=message, author=author, changes=changes,
                  pause=pause, force=force, allow_empty=allow_empty, progress=progress)


def commit(store, name: str, target: NewVersion, *, message: str | None = None,
           author: str | None = None, changes: list[Change] | None = None, pause: bool = False,
           force: bool = False, allow_empty: bool = False, progress: Any = None) -> CommitResult:
    from runtime.container import lifecycle, record
    c = record.load(store, name)
    state = c.state()
    frozen: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if state == "running":
        if not pause:
            raise UsageError(f"container {name} is running: stop it first, or add --pause to "
                             "freeze it while its changes are read")
        frozen = lifecycle.paused(store, name)
    base = base_image(store, c.digest, c.image)
    with frozen:
        packed, method = pack_container(store, c, progress=progress)
    changes = list(changes or [])
    if packed is None and not changes and not allow_empty:
        raise NothingToCommit(f"no changes in container {name}: nothing committed "
                              "(--allow-empty makes a new version anyway)")
    if packed is not None and packed.diff_id in base.diff_ids:
        # overlay cannot stack a layer tree on itself (ELOOP at the next run)
        n = base.diff_ids.index(packed.diff_id) + 1
        raise Conflict(f"the changes of container {name} are byte for byte layer {n} of its "
                       "image: an image cannot hold a layer twice (overlay would refuse to run it)")
    created = meta.timestamp(meta.source_date_epoch())
    by = f"cocker container commit {name}"
    if changes:
        by += " " + " ".join(f"--change {ch.describe()!r}" for ch in changes)
    entry = meta.history_entry(created, by, author=author, comment=message,
                               empty_layer=packed is None)
    diff_ids = base.diff_ids + ([packed.diff_id] if packed else [])
    layers = base.layers + ([packed.descriptor()] if packed else [])
    config = meta.derive_config(base.config, diff_ids, [entry], created=created, author=author)
    config = changesmod.apply(config, changes)
    annotations = meta.parent_annotations(base.digest, c.image)
    img = imagemod.publish(store, target.name, target.version, config, layers, force=force,
                           annotations=annotations)
    return CommitResult(img, packed.descriptor() if packed else None,
                        method if packed else "config only")


def pack_container(store, c, *, progress: Any = None) -> tuple[Any, str]:
    """(PackedLayer or None when nothing changed, how it was made)."""
    upper = c.upper_dir
    why = treediff.needs_diff(upper)
    if why is None:
        if not _has_entries(upper):
            return None, "upper"
        sde = meta.source_date_epoch()
        return layer_tar.pack_into(store, upper, overlay_upper=True, source_date_epoch=sde,
                         progress=progress), "upper"
    return pack_by_diff(store, [upper] + list(c.lower_dirs), list(c.lower_dirs),
                        progress=progress), f"diff ({why})"


def pack_by_diff(store, new_top_first: list[str], old_top_first: list[str], *,
                 progress: Any = None):
    """Pack what differs between two overlay stacks (each mounted read-only)."""
    scratch = tempfile.mkdtemp(prefix="commit-diff.", dir=store.tmp_dir)
    try:
        out = tempfile.mkdtemp(prefix="out.", dir=scratch)
        with treediff.merged_view(new_top_first, scratch) as new, \
                treediff.merged_view(old_top_first, scratch) as old:
            changed = treediff.diff_trees(old, new, out)
        if not changed:
            return None
        return layer_tar.pack_into(store, out, overlay_upper=True,
                         source_date_epoch=meta.source_date_epoch(), progress=progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _has_entries(path: str) -> bool:
    with os.scandir(path) as it:
        return any(True for _ in it)
