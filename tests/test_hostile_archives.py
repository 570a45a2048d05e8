"""Hostile layers: every class is refused with a clear error and nothing lands outside the root.

Each test unpacks into tmp/root next to tmp/sentinel (a directory with a file an attacker
would love to overwrite) and checks afterwards that the sentinel and the rest of tmp are
exactly as they were.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import zstandard

from common.errors import CorruptImage, UnsafeArchive
from registry.layer import tar_codec as layer_tar
from tests.support.codec import entry, listing, make_tar, snapshot


@pytest.fixture
def arena(tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "file").write_text("precious")
    root = tmp_path / "root"
    root.mkdir()

    class Arena:
        base = str(tmp_path)
        dest = str(root)
        sentinel_dir = str(sentinel)
        before = snapshot(str(sentinel))
        outside = listing(str(tmp_path)) - {p for p in listing(str(tmp_path))
                                            if p == "root" or p.startswith("root/")}

        def unpack(self, entries, **kw):
            blob = entries if isinstance(entries, bytes) else make_tar(entries)
            return layer_tar.unpack(io.BytesIO(blob), self.dest, **kw)

        def check_untouched(self):
            assert snapshot(self.sentinel_dir) == self.before
            now = {p for p in listing(self.base) if p != "root" and not p.startswith("root/")}
            assert now == self.outside, f"written outside the root: {now - self.outside}"

    return Arena()


def test_absolute_path(arena):
    target = os.path.join(arena.sentinel_dir, "pwned")
    with pytest.raises(UnsafeArchive, match="absolute path"):
        arena.unpack([entry(target, data=b"x")])
    arena.check_untouched()


@pytest.mark.parametrize("name", ["../sentinel/pwned", "a/../../sentinel/pwned", "./../x"])
def test_dot_dot(arena, name):
    with pytest.raises(UnsafeArchive, match=r"'\.\.'"):
        arena.unpack([entry("a", "dir", mode=0o755), entry(name, data=b"x")])
    arena.check_untouched()


@pytest.mark.parametrize("target", ["../sentinel", "/ABS"])
def test_symlink_escape(arena, target):
    target = target.replace("/ABS", arena.sentinel_dir)
    with pytest.raises(UnsafeArchive, match="symlink"):
        arena.unpack([entry("link", "symlink", link=target),
                      entry("link/file", data=b"overwritten")])
    arena.check_untouched()
    assert os.path.islink(os.path.join(arena.dest, "link"))  # the link itself is fine


def test_file_replacing_a_symlink_does_not_write_through_it(arena):
    arena.unpack([entry("f", "symlink", link=os.path.join(arena.sentinel_dir, "file")),
                  entry("f", data=b"overwritten")])
    arena.check_untouched()
    assert Path(os.path.join(arena.dest, "f")).read_bytes() == b"overwritten"


@pytest.mark.parametrize("link", ["../sentinel/file", "/ABS", "up/file"])
def test_hardlink_escape(arena, link):
    link = link.replace("/ABS", os.path.join(arena.sentinel_dir, "file"))
    with pytest.raises(UnsafeArchive):
        arena.unpack([entry("up", "symlink", link="../sentinel"),
                      entry("h", "hardlink", link=link),
                      entry("h", data=b"overwritten")])
    arena.check_untouched()


def test_cross_layer_symlink_plant(arena):
    """Layer 1 plants x -> ../..; layer 2 writes x/... when the layers are flattened."""
    arena.unpack([entry("x", "symlink", link="../..")], whiteouts="apply")
    with pytest.raises(UnsafeArchive, match="symlink"):
        arena.unpack([entry("x/sentinel/file", data=b"overwritten"),
                      entry("x/pwned", data=b"x")], whiteouts="apply")
    arena.check_untouched()
    # The same through a whiteout: deleting through the planted link is refused too.
    with pytest.raises(UnsafeArchive, match="symlink"):
        arena.unpack([entry("x/sentinel/.wh.file")], whiteouts="apply")
    arena.check_untouched()


@pytest.mark.parametrize("kind,major,minor", [("char", 1, 3), ("block", 8, 0),
                                              ("char", 0, 0)])
def test_device_nodes(arena, kind, major, minor):
    # char 0/0 is a whiteout only in overlay form; in apply mode it is a device like any other.
    with pytest.raises(UnsafeArchive, match="device"):
        arena.unpack([entry("dev", "dir", mode=0o755),
                      entry("dev/node", kind, major=major, minor=minor)], whiteouts="apply")
    arena.check_untouched()
    assert not os.path.exists(os.path.join(arena.dest, "dev/node"))


@pytest.mark.root
def test_whiteout_device_is_allowed_in_overlay_form(arena):
    arena.unpack([entry("gone", "char", major=0, minor=0)], whiteouts="overlay")
    st = os.lstat(os.path.join(arena.dest, "gone"))
    assert st.st_rdev == 0 and (st.st_mode & 0o170000) == 0o020000


def test_size_bomb(arena):
    # 64 MiB of zeros compress to a few KiB; the cap stops it long before the disk fills.
    bomb = zstandard.ZstdCompressor().compress(
        make_tar([entry("zeros", data=bytes(64 << 20))]))
    assert len(bomb) < 64 << 10
    with pytest.raises(UnsafeArchive, match="size bomb"):
        arena.unpack(bomb, max_bytes=8 << 20)
    arena.check_untouched()
    size = os.path.getsize(os.path.join(arena.dest, "zeros")) if os.path.exists(
        os.path.join(arena.dest, "zeros")) else 0
    assert size <= 8 << 20


def test_header_bomb_and_entry_count(arena):
    with pytest.raises(UnsafeArchive, match="metadata header"):
        arena.unpack([entry("a", data=b"x", pax={"comment": "y" * (2 << 20)})])
    with pytest.raises(UnsafeArchive, match="entries"):
        arena.unpack([entry(f"f{i}", data=b"") for i in range(20)], max_entries=10)
    arena.check_untouched()


def test_truncated_and_garbage(arena):
    good = make_tar([entry("a", data=b"x" * 5000)])
    with pytest.raises(CorruptImage):
        arena.unpack(good[:1024])
    with pytest.raises(CorruptImage):
        arena.unpack(b"\x28\xb5\x2f\xfd" + b"not zstd at all" * 10)
    # A damaged header in the middle: tarfile would just stop there; we refuse.
    two = bytearray(make_tar([entry("a", data=b"x"), entry("b", data=b"y")]))
    two[1024 + 148] ^= 0x01  # the second header's checksum
    with pytest.raises(CorruptImage, match="after its end"):
        arena.unpack(bytes(two))
    arena.check_untouched()


def test_hostile_rootfs_tarball_import_leaves_no_ref(arena, home, cocker, tmp_path):
    path = tmp_path / "evil.tar"
    path.write_bytes(make_tar([entry("ok", data=b"fine"), entry("../sentinel/pwned",
                                                                 data=b"x")]))
    p = cocker("image", "import", str(path), "evil:1", check=False)
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and "'..'" in p.stderr
    assert cocker("image", "ls", "--json").stdout.strip() == "[]"
    assert snapshot(arena.sentinel_dir) == arena.before
    assert not [p for p in listing(str(tmp_path)) if "pwned" in p]
    assert set(listing(os.path.join(home, "tmp"))) <= {"uploads", "leases"}  # scratch cleaned
