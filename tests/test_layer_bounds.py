"""Bounds that fit the data: bombs, huge declared sizes, sparse tricks, deep and long paths,
odd ownership. Each refusal is an UnsafeArchive naming the limit (the variable that sets
it), and nothing half-written stays behind (no layer tree, no scratch, no ref).
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile

import pytest
import zstandard

from builder import importers, treediff
from common.errors import CockerError, UnsafeArchive
from registry.layer import limits
from registry.layer import tar_codec as layer_tar
from registry.oci import digest as digestmod
from registry.repo import image as imagemod
from runtime.fs import layers as layersmod
from tests.support.codec import entry, make_tar

MiB = 1 << 20


def zero_bomb(nbytes: int, compression: str = "zstd") -> bytes:
    """A one-file layer of `nbytes` zeros, compressed (a few KiB whatever the size)."""
    ti, _ = entry("zeros", size=nbytes)
    buf = io.BytesIO()
    w = (zstandard.ZstdCompressor(level=3).stream_writer(buf, closefd=False)
         if compression == "zstd" else gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9))
    with w:
        w.write(ti.tobuf(format=tarfile.PAX_FORMAT))
        left = -(-nbytes // 512) * 512
        zeros = bytes(MiB)
        while left:
            n = min(left, MiB)
            w.write(zeros[:n])
            left -= n
        w.write(bytes(1024))  # end of archive
    return buf.getvalue()


@pytest.fixture
def dest(tmp_path):
    return str(tmp_path / "root")


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_compression_bomb_stops_at_the_ratio(dest, monkeypatch, compression):
    monkeypatch.delenv(limits.ALLOW_RATIO, raising=False)
    monkeypatch.setenv(limits.RATIO_GRACE, "8M")
    bomb = zero_bomb(96 * MiB, compression)
    assert len(bomb) < 200 << 10
    with pytest.raises(UnsafeArchive, match=f"{limits.MAX_RATIO}.*--allow-ratio"):
        layer_tar.unpack(io.BytesIO(bomb), dest)
    # it stopped early: far less than the whole 96 MiB hit the disk
    assert os.path.getsize(os.path.join(dest, "zeros")) < 16 * MiB


def test_allow_ratio_lets_a_trusted_layer_through(dest, monkeypatch):
    monkeypatch.setenv(limits.RATIO_GRACE, "1M")
    monkeypatch.setenv(limits.ALLOW_RATIO, "1")
    layer_tar.unpack(io.BytesIO(zero_bomb(8 * MiB)), dest)
    assert os.path.getsize(os.path.join(dest, "zeros")) == 8 * MiB


def test_ratio_is_judged_only_past_the_grace(dest, monkeypatch):
    monkeypatch.delenv(limits.ALLOW_RATIO, raising=False)
    layer_tar.unpack(io.BytesIO(zero_bomb(16 * MiB)), dest)  # default grace: 64 MiB


def test_layer_diff_id_of_a_bomb_is_refused(monkeypatch):
    """Import checks a compressed layer's diff_id by decompressing it: bounded too."""
    monkeypatch.delenv(limits.ALLOW_RATIO, raising=False)
    monkeypatch.setenv(limits.RATIO_GRACE, "4M")
    with pytest.raises(UnsafeArchive, match="compression bomb"):
        layer_tar.layer_diff_id(io.BytesIO(zero_bomb(64 * MiB)))


def _reserve_leaving(path: str, room: int) -> str:
    """A COCKER_DISK_RESERVE that leaves `room` bytes for a layer under `path`."""
    os.makedirs(path, exist_ok=True)
    return str(max(0, limits.free_bytes(path) - room))


def test_declared_size_past_the_free_space_is_refused_before_writing(dest, monkeypatch):
    monkeypatch.setenv(limits.DISK_RESERVE, _reserve_leaving(dest, 10 * MiB))
    # the header claims 20 MiB; only 4 KiB follow
    ti, _ = entry("huge", size=20 * MiB)
    blob = ti.tobuf(format=tarfile.PAX_FORMAT) + b"x" * 4096
    with pytest.raises(CockerError, match=f"free space.*{limits.DISK_RESERVE}") as e:
        layer_tar.unpack(io.BytesIO(blob), dest)
    assert not isinstance(e.value, UnsafeArchive)  # a full disk, not a hostile layer
    assert not os.path.exists(os.path.join(dest, "huge"))


def test_sparse_entry_with_a_huge_real_size(dest, monkeypatch):
    """A GNU sparse entry: no data, a real size of 20 MiB of holes that unpack would fill."""
    monkeypatch.setenv(limits.MAX_LAYER_BYTES, "10M")
    blob = make_tar([entry("sparse", data=b"", pax={"GNU.sparse.map": "0,0",
                                                    "GNU.sparse.size": str(20 * MiB)})])
    with pytest.raises(UnsafeArchive, match=f"{limits.MAX_LAYER_BYTES}=10485760"):
        layer_tar.unpack(io.BytesIO(blob), dest)
    assert not os.path.exists(os.path.join(dest, "sparse"))


def test_explicit_byte_limit_is_named(dest, monkeypatch):
    monkeypatch.setenv(limits.MAX_LAYER_BYTES, "1M")
    blob = make_tar([entry("big", data=bytes(2 * MiB))])
    with pytest.raises(UnsafeArchive, match=limits.MAX_LAYER_BYTES):
        layer_tar.unpack(io.BytesIO(blob), dest)


def test_entry_count_limit_from_the_environment(dest, monkeypatch):
    monkeypatch.setenv(limits.MAX_ENTRIES, "5")
    with pytest.raises(UnsafeArchive, match=limits.MAX_ENTRIES):
        layer_tar.unpack(io.BytesIO(make_tar([entry(f"f{i}") for i in range(6)])), dest)


def test_bad_limit_values_are_usage_errors(monkeypatch):
    monkeypatch.setenv(limits.MAX_LAYER_BYTES, "lots")
    with pytest.raises(CockerError, match=limits.MAX_LAYER_BYTES):
        limits.LayerLimits.from_env()
    assert limits.parse_size("64M", "x") == 64 * MiB
    assert limits.parse_size("2GiB", "x") == 2 << 30


def nested(depth: int) -> list:
    return [entry("/".join(["d"] * i), "dir", mode=0o755) for i in range(1, depth + 1)] + [
        entry("/".join(["d"] * depth) + "/leaf", data=b"deep")]


def test_two_thousand_nested_directories_are_refused_cleanly(dest):
    with pytest.raises(UnsafeArchive, match=limits.MAX_PATH_DEPTH):
        layer_tar.unpack(io.BytesIO(make_tar(nested(2000))), dest)


def test_deeper_than_the_recursion_limit_unpacks_and_packs_again(tmp_path, monkeypatch):
    """Raised past Python's recursion limit, the codec's walks still work: they are loops."""
    monkeypatch.setenv(limits.MAX_PATH_DEPTH, "1200")
    work = tmp_path / "deep"
    try:
        dest = str(work / "root")
        layer_tar.unpack(io.BytesIO(make_tar(nested(1100))), dest)
        leaf = os.path.join(dest, *(["d"] * 1100), "leaf")
        with open(leaf, "rb") as f:
            assert f.read() == b"deep"
        with open(work / "again.tar", "wb") as out:
            packed = layer_tar.pack_dir(dest, out, compression="none")
        with open(work / "again.tar", "rb") as f:
            assert layer_tar.unpack(f, str(work / "again")) == packed.diff_id
    finally:
        # shutil.rmtree (and so pytest's own cleanup) recurses: rm(1) does not
        subprocess.run(["rm", "-rf", str(work)], check=True)


def test_long_names_are_refused_naming_the_limit(dest):
    with pytest.raises(UnsafeArchive, match=limits.MAX_NAME_BYTES):
        layer_tar.unpack(io.BytesIO(make_tar([entry("n" * 300, data=b"x")])), dest)
    with pytest.raises(UnsafeArchive, match=limits.MAX_PATH_BYTES):
        layer_tar.unpack(io.BytesIO(make_tar([entry("/".join(["p" * 200] * 25), data=b"x")])),
                         dest)


@pytest.mark.parametrize("field,value", [("uid", 1 << 40), ("gid", -5), ("uid", -1),
                                         ("gid", 1 << 32)])
def test_out_of_range_owners(dest, field, value):
    blob = make_tar([entry("f", data=b"x", pax={field: str(value)})])
    with pytest.raises(UnsafeArchive, match=f"{field} {value} is out of range"):
        layer_tar.unpack(io.BytesIO(blob), dest)


def test_directory_then_file_of_the_same_path_nested(dest):
    """tar's last-entry-wins, also below the top level (it used to fail with EBADF)."""
    layer_tar.unpack(io.BytesIO(make_tar([
        entry("x", "dir", mode=0o755), entry("x/a", "dir", mode=0o755),
        entry("x/a/b", data=b"1"), entry("x/a", data=b"now a file"),
        entry("x/c", data=b"c")])), dest)
    for name, content in (("x/a", b"now a file"), ("x/c", b"c")):
        with open(os.path.join(dest, name), "rb") as f:
            assert f.read() == content


@pytest.mark.root
def test_bomb_in_the_store_leaves_no_layer_tree(store, monkeypatch):
    """`run` materialises layers: a refused one leaves neither the tree nor its scratch."""
    monkeypatch.delenv(limits.ALLOW_RATIO, raising=False)
    monkeypatch.setenv(limits.RATIO_GRACE, "4M")
    bomb = zero_bomb(32 * MiB)
    d = digestmod.of_bytes(bomb)
    store.put_blob_bytes(d, bomb)
    diff_id, _ = layer_tar.layer_diff_id(io.BytesIO(bomb), limits.LayerLimits(max_ratio=0))
    img = imagemod.publish(store, "bomb", "1", {"rootfs": {"type": "layers",
                                                           "diff_ids": [diff_id]}},
                           [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                             "digest": d, "size": len(bomb)}])
    with pytest.raises(UnsafeArchive, match="compression bomb"):
        layersmod.ensure_layers(store, img)
    assert [n for n in os.listdir(store.layers_dir) if not n.startswith(".lock-")] == []


def test_treediff_walks_deeper_than_the_recursion_limit(tmp_path):
    """commit's diff of a merged view against its lower layers is a loop, not a recursion."""
    work = tmp_path / "diff"
    old, new, out = work / "old", work / "new", work / "out"
    try:
        for root in (old, new):
            path = str(root)
            os.makedirs(path)
            for _ in range(1100):
                path = os.path.join(path, "d")
                os.mkdir(path)
            with open(os.path.join(path, "leaf"), "w") as f:
                f.write("old" if root == old else "newer")
            os.utime(os.path.join(path, "leaf"), (1, 1))
        os.mkdir(out)
        assert treediff.diff_trees(str(old), str(new), str(out))
        with open(os.path.join(out, *(["d"] * 1100), "leaf")) as f:
            assert f.read() == "newer"
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)


def test_compressed_archive_bomb_is_refused_without_filling_scratch(store, tmp_path,
                                                                    monkeypatch):
    """An oci-archive is expanded into scratch before its blobs are read: bounded too."""
    monkeypatch.delenv(limits.ALLOW_RATIO, raising=False)
    monkeypatch.setenv(limits.RATIO_GRACE, "4M")
    ti, _ = entry("oci-layout", size=64 * MiB)
    buf = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(buf, closefd=False) as w:
        w.write(ti.tobuf(format=tarfile.PAX_FORMAT))
        for _ in range(64):
            w.write(bytes(MiB))
        w.write(bytes(1024))
    bomb = tmp_path / "image.oci.tar.zst"
    bomb.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchive, match="compression bomb"):
        importers.import_image(store, str(bomb), "bomb:1", fmt="oci-tar")
    assert not [n for n in os.listdir(store.tmp_dir) if n.startswith("archive.")]
    with pytest.raises(UnsafeArchive, match="compression bomb"):
        importers.import_image(store, str(bomb), "bomb:1")  # format detection reads it too
