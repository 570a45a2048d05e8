"""Fixtures and helpers for the builder tests: a busybox image in the store, images made of
hand-written overlay-form layers, cleanup of containers and mounts."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

import pytest

from tests.conftest import make_busybox_rootfs

WHITEOUT, DIR, OPAQUE = object(), object(), object()


def publish_layers(store, name: str, version: str, trees: list[str], base=None,
                   config: dict | None = None, sde: int | None = 1_600_000_000):
    """Publish an image whose layers are the given overlay-form trees (bottom -> top)."""
    from registry.layer import tar_codec as layer_tar
    from registry.oci import manifest as oci
    from registry.repo import image as imagemod
    layers = list(base.layers) if base else []
    diff_ids = list(base.diff_ids) if base else []
    for t in trees:
        pk = layer_tar.pack_into(store, t, overlay_upper=True, source_date_epoch=sde)
        layers.append(pk.descriptor())
        diff_ids.append(pk.diff_id)
    cfg = oci.new_config(diff_ids, created="2020-09-13T12:26:40Z", base=base.config if base else None,
                         history=[{"created_by": f"layer {i}"} for i in range(len(diff_ids))])
    cfg["config"].update(config or {})
    return imagemod.publish(store, name, version, cfg, layers)


def make_tree(root: str, spec: dict) -> str:
    """A layer tree from {path: text | WHITEOUT | DIR | OPAQUE}."""
    os.makedirs(root, exist_ok=True)
    for path, v in spec.items():
        p = os.path.join(root, path)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if v is WHITEOUT:
            os.mknod(p, stat.S_IFCHR, 0)
        elif v is DIR:
            os.makedirs(p, exist_ok=True)
        elif v is OPAQUE:
            os.makedirs(p, exist_ok=True)
            os.setxattr(p, "trusted.overlay.opaque", b"y")
        else:
            with open(p, "w") as f:
                f.write(v)
    return root


@pytest.fixture
def busybox_image(store, tmp_path):
    """busybox:1.0 in the test's store (one layer, /bin/sh as CMD)."""
    rootfs = make_busybox_rootfs(str(tmp_path / "bb-rootfs"))
    return publish_layers(store, "busybox", "1.0", [rootfs], config={"Cmd": ["/bin/sh"]})


def listing(root: str) -> dict[str, str]:
    """{relative path: file text | 'DIR' | '-> target'} of a tree."""
    out = {}
    for dp, dn, fn in os.walk(root):
        for n in dn + fn:
            p = os.path.join(dp, n)
            r = os.path.relpath(p, root)
            if os.path.islink(p):
                out[r] = "-> " + os.readlink(p)
            elif os.path.isdir(p):
                out[r] = "DIR"
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[r] = f.read().decode("utf-8", "replace")
            else:
                out[r] = "SPECIAL"
    return out


@contextlib.contextmanager
def image_view(store, ref: str):
    """The merged (read-only) filesystem of an image version."""
    from builder import treediff
    from registry.repo import image as imagemod
    from runtime.fs import layers as layertrees
    img = imagemod.load(store, ref)
    trees = list(reversed(layertrees.ensure_layers(store, img)))
    scratch = tempfile.mkdtemp(prefix="view.", dir=store.tmp_dir)
    with treediff.merged_view(trees, scratch) as m:
        yield m


def our_mounts(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


@pytest.fixture
def cleanup_containers(store):
    """Remove every container the test left (even when it failed)."""
    yield
    from runtime.container import lifecycle, record
    for c in record.list_containers(store, all=True):
        with contextlib.suppress(Exception):
            lifecycle.remove(store, c.name, force=True)
