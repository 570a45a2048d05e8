"""The layer codec: reproducible packing, faithful round trips, whiteouts through real overlay."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from common.errors import CockerError
from registry.layer import tar_codec as layer_tar
from tests.conftest import make_busybox_rootfs
from tests.support.codec import entry, make_tar, snapshot

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw=ep


def _pack(src: str, **kw) -> tuple[layer_tar.PackedLayer, bytes]:
    buf = io.BytesIO()
    layer = layer_tar.pack_dir(src, buf, **kw)
    return layer, buf.getvalue()


def _members(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=layer_tar.open_layer(io.BytesIO(blob)), mode="r|") as tf:
        return [ti for ti in tf]


@pytest.fixture
def rich_tree(tmp_path) -> str:
    """busybox plus the awkward cases: xattrs, hardlinks, odd owners and names, a fifo."""
    root = make_busybox_rootfs(str(tmp_path / "tree"))
    os.link(os.path.join(root, "etc/passwd"), os.path.join(root, "etc/passwd-hardlink"))
    with open(os.path.join(root, "etc/owned"), "w") as f:
        f.write("x")
    long_dir = os.path.join(root, "l" * 120, "m" * 120)
    os.makedirs(long_dir)
    with open(os.path.join(long_dir, "file-with-ü"), "w") as f:
        f.write("long")
    with open(os.path.join(os.fsencode(root), b"latin1-\xff"), "w") as f:
        f.write("bytes name")
    os.mkfifo(os.path.join(root, "tmp/fifo"))
    if os.geteuid() == 0:
        os.chown(os.path.join(root, "etc/owned"), 1234, 5678)
        os.setxattr(os.path.join(root, "bin/busybox"), "security.capability", CAP)
        os.chmod(os.path.join(root, "bin/busybox"), 0o4755)
    try:
        os.setxattr(os.path.join(root, "etc/owned"), "user.note", b"\x00\xffbinary")
    except OSError:
        pass
    return root


def test_same_tree_twice_same_digest(rich_tree):
    a, blob_a = _pack(rich_tree)
    b, blob_b = _pack(rich_tree)
    assert a.digest == b.digest and a.diff_id == b.diff_id and blob_a == blob_b
    assert a.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert a.size == len(blob_a)


def test_digest_does_not_depend_on_cpu_count(rich_tree, monkeypatch):
    a = _pack(rich_tree)[0].digest
    monkeypatch.setattr(layer_tar, "zstd_threads", lambda: 1)
    b = _pack(rich_tree)[0].digest
    monkeypatch.setattr(layer_tar, "zstd_threads", lambda: 7)
    assert a == b == _pack(rich_tree)[0].digest


def test_source_date_epoch_makes_copies_identical(rich_tree, tmp_path):
    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-a", rich_tree, copy], check=True)
    for dirpath, dirnames, filenames in os.walk(copy):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (2_000_000_000, 2_000_000_000),
                     follow_symlinks=False)
    assert _pack(rich_tree)[0].digest != _pack(copy)[0].digest  # mtimes differ...
    sde = 1_000_000_000
    a = _pack(rich_tree, source_date_epoch=sde)[0]
    b = _pack(copy, source_date_epoch=sde)[0]
    assert a.digest == b.digest  # ...until clamped
    members = _members(_pack(copy, source_date_epoch=sde)[1])
    assert max(ti.mtime for ti in members) == sde


def test_tar_is_normalised(rich_tree):
    layer, blob = _pack(rich_tree, source_date_epoch=1_700_000_000)
    members = _members(blob)
    names = [ti.name for ti in members]
    assert names[0] == "bin" and not any(n.startswith(("/", "./")) for n in names)
    assert all(ti.uname == "" and ti.gname == "" for ti in members)
    by = {ti.name: ti for ti in members}
    link = by["etc/passwd-hardlink"] if by["etc/passwd-hardlink"].islnk() else by["etc/passwd"]
    assert link.islnk() and link.linkname in ("etc/passwd", "etc/passwd-hardlink")
    assert by["bin/sh"].issym() and by["bin/sh"].linkname == "busybox"
    assert by["tmp/fifo"].isfifo()
    if os.geteuid() == 0:
        assert (by["etc/owned"].uid, by["etc/owned"].gid) == (1234, 5678)
        assert by["bin/busybox"].pax_headers["SCHILY.xattr.security.capability"].encode(
            "utf-8", "surrogateescape") == CAP
    # Each directory's children in byte order.
    bins = [n for n in names if n.startswith("bin/")]
    assert bins == sorted(bins, key=os.fsencode)


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_round_trip(rich_tree, tmp_path, compression):
    layer, blob = _pack(rich_tree, compression=compression)
    assert layer_tar.layer_diff_id(io.BytesIO(blob))[0] == layer.diff_id
    out = str(tmp_path / "out")
    got = layer_tar.unpack(io.BytesIO(blob), out, whiteouts="apply")
    assert got == layer.diff_id
    assert snapshot(out) == snapshot(rich_tree)
    assert os.stat(os.path.join(out, "bin/busybox")).st_mtime == int(
        os.stat(os.path.join(rich_tree, "bin/busybox")).st_mtime)


def test_compressions_share_diff_id(rich_tree):
    ids = {_pack(rich_tree, compression=c)[0].diff_id for c in ("zstd", "gzip", "none")}
    assert len(ids) == 1


def test_pack_into_store(store, rich_tree):
    layer = layer_tar.pack_into(store, rich_tree)
    assert store.has_blob(layer.digest)
    assert store.fsck() == []
    assert set(os.listdir(store.tmp_dir)) <= {"uploads", "leases"}
    assert layer.descriptor()["size"] == store.blob_size(layer.digest)


def test_pack_missing_dir_is_an_error(tmp_path):
    with pytest.raises(CockerError):
        layer_tar.pack_dir(str(tmp_path / "nope"), io.BytesIO())


def test_duplicate_entries_last_wins(tmp_path):
    blob = make_tar([
        entry("f", data=b"first"), entry("f", data=b"second"),
        entry("d", "dir", mode=0o755), entry("d/x", data=b"x"), entry("d", data=b"now a file"),
        entry("s", "symlink", link="f"), entry("s", data=b"plain"),
    ])
    out = str(tmp_path / "out")
    layer_tar.unpack(io.BytesIO(blob), out)
    assert Path(os.path.join(out, "f")).read_bytes() == b"second"
    assert Path(os.path.join(out, "d")).read_bytes() == b"now a file"
    assert not os.path.islink(os.path.join(out, "s"))


def test_apply_mode_whiteouts_only_hide_lower_layers(tmp_path):
    out = str(tmp_path / "out")
    layer_tar.unpack(io.BytesIO(make_tar([
        entry("a", data=b"a"), entry("d", "dir", mode=0o755), entry("d/old", data=b"o"),
    ])), out, whiteouts="apply")
    layer_tar.unpack(io.BytesIO(make_tar([
        entry("d", "dir", mode=0o755), entry("d/new", data=b"n"), entry("d/.wh..wh..opq"),
        entry(".wh.a"), entry("b", data=b"b"), entry(".wh.b"),
    ])), out, whiteouts="apply")
    assert sorted(os.listdir(out)) == ["b", "d"]  # a deleted; b is this layer's own
    assert os.listdir(os.path.join(out, "d")) == ["new"]


@pytest.mark.root
def test_overlay_whiteouts_round_trip(tmp_path):
    """A real overlay: delete a lower file and replace a lower dir, pack the upper dir,
    unpack it in overlay form and in apply form, and mount the result again."""
    lower, upper, work, merged = (str(tmp_path / n) for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        os.makedirs(d)
    os.makedirs(os.path.join(lower, "d"))
    for rel in ("a", "keep", "d/x"):
        with open(os.path.join(lower, rel), "w") as f:
            f.write(rel)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", merged], check=True)
    try:
        os.unlink(os.path.join(merged, "a"))
        shutil.rmtree(os.path.join(merged, "d"))
        os.makedirs(os.path.join(merged, "d"))
        with open(os.path.join(merged, "d", "y"), "w") as f:
            f.write("y")
    finally:
        subprocess.run(["umount", merged], check=True)
    layer, blob = _pack(upper, overlay_upper=True)
    names = [ti.name for ti in _members(blob)]
    assert ".wh.a" in names and "d/.wh..wh..opq" in names and "d/y" in names
    assert names.index("d/.wh..wh..opq") == names.index("d") + 1

    as_overlay = str(tmp_path / "as-overlay")
    assert layer_tar.unpack(io.BytesIO(blob), as_overlay) == layer.diff_id
    st = os.lstat(os.path.join(as_overlay, "a"))
    assert os.major(st.st_rdev) == 0 and os.minor(st.st_rdev) == 0 and (st.st_mode & 0o170000
                                                                         == 0o020000)
    assert os.getxattr(os.path.join(as_overlay, "d"), "trusted.overlay.opaque") == b"y"
    # Packing the overlay form again gives the same layer.
    assert _pack(as_overlay, overlay_upper=True)[0].digest == layer.digest

    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={as_overlay}:{lower}", merged], check=True)
    try:
        assert sorted(os.listdir(merged)) == ["d", "keep"]
        assert os.listdir(os.path.join(merged, "d")) == ["y"]
    finally:
        subprocess.run(["umount", merged], check=True)

    flat = str(tmp_path / "flat")
    shutil.copytree(lower, flat, symlinks=True)
    layer_tar.unpack(io.BytesIO(blob), flat, whiteouts="apply")
    assert sorted(os.listdir(flat)) == ["d", "keep"]
    assert os.listdir(os.path.join(flat, "d")) == ["y"]


def test_open_layer_detects_by_magic(rich_tree):
    for c in ("zstd", "gzip", "none"):
        layer, blob = _pack(rich_tree, compression=c)
        assert layer_tar.detect_compression(blob[:4]) == c
        data = layer_tar.open_layer(io.BytesIO(blob)).read()
        assert len(data) == layer.uncompressed_size


def test_pack_tar_stream_keeps_diff_id(rich_tree):
    layer, blob = _pack(rich_tree, compression="gzip")
    out = io.BytesIO()
    again = layer_tar.pack_tar_stream(io.BytesIO(blob), out, compression="zstd")
    assert again.diff_id == layer.diff_id and again.media_type.endswith("zstd")


@pytest.mark.parametrize("name,kind,extra", [
    ("bin", tarfile.DIRTYPE, {}), ("bin/sh", tarfile.SYMTYPE, {"linkname": "busybox"}),
    ("etc/passwd", tarfile.REGTYPE, {"size": 1234}), ("x", tarfile.LNKTYPE, {"linkname": "y"}),
    ("dev/null", tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}), ("p", tarfile.FIFOTYPE, {}),
    ("d" * 99, tarfile.DIRTYPE, {}), ("big", tarfile.REGTYPE, {"size": 7 << 30}),
])
def test_fast_header_matches_tarfile(name, kind, extra):
    ti = tarfile.TarInfo(name)
    ti.type, ti.uid, ti.gid, ti.mode, ti.mtime = kind, 1234, 99, 0o4755, 1_700_000_000
    ti.uname = ti.gname = ""
    for k, v in extra.items():
        setattr(ti, k, v)
    assert layer_tar._fast_header(ti) == ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    ti.pax_headers = {"SCHILY.xattr.user.x": "1"}
    assert layer_tar._fast_header(ti) is None  # anything PAX goes through tarfile
    ti.pax_headers = {}
    ti.size = 9 << 30
    assert layer_tar._fast_header(ti) is None
