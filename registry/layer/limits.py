"""Bounds on what a layer may cost, read from the environment so every door shares them.

A layer comes from a stranger: its decompressed size, its entry count, the depth and length
of its paths are all chosen by whoever made it. Each bound here has a name (the variable
that sets it), and every refusal names that variable, so a user with a legitimately huge
layer knows what to raise.
"""

import os
from collections.abc import Mapping
from typing import NamedTuple

from common.errors import CockerError, UnsafeArchive, UsageError

MAX_LAYER_BYTES = "COCKER_MAX_LAYER_BYTES"
DISK_RESERVE = "COCKER_DISK_RESERVE"
MAX_RATIO = "COCKER_MAX_RATIO"
RATIO_GRACE = "COCKER_RATIO_GRACE"
ALLOW_RATIO = "COCKER_ALLOW_RATIO"
MAX_ENTRIES = "COCKER_MAX_ENTRIES"
MAX_PATH_DEPTH = "COCKER_MAX_PATH_DEPTH"
MAX_NAME_BYTES = "COCKER_MAX_NAME_BYTES"
MAX_PATH_BYTES = "COCKER_MAX_PATH_BYTES"

FREE_SPACE = "the free space on"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, what: str) -> int:
    """`123`, `64M`, `2G`, `1.5T` (binary units; a trailing `B`/`iB` is allowed)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    num = t[: len(t) - len(unit)]
    try:
        value = float(num) * _UNITS[unit]
    except ValueError:
        raise UsageError(f"{what}={text!r} is not a size (say 123, 64M, 2G)") from None
    if value < 0:
        raise UsageError(f"{what}={text!r} must not be negative")
    return int(value)


def _int(env: Mapping[str, str], name: str, default: int, size: bool = False) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if size:
        return parse_size(raw, name)
    if not raw.isdigit():
        raise UsageError(f"{name}={raw!r} must be a whole number")
    return int(raw)


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class LayerLimits(NamedTuple):
    """The bounds one unpack (or import check) works within."""

    max_bytes: int | None = None  # explicit cap on decompressed bytes; None: free space only
    disk_reserve: int = 1 << 30   # free space left untouched on the store's filesystem
    max_ratio: int = 100          # decompressed : compressed, 0 = unbounded
    ratio_grace: int = 64 << 20   # decompressed bytes read before the ratio is judged
    max_entries: int = 4_000_000
    # Deep enough for any real tree; shallow enough that the recursive walks of the
    # standard library (shutil.rmtree, os.walk) can still remove and read what we unpacked.
    max_depth: int = 512
    max_name: int = 255
    max_path: int = 4096

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "LayerLimits":
        e = os.environ if env is None else env
        d = cls()
        explicit = e.get(MAX_LAYER_BYTES, "").strip()
        ratio = _int(e, MAX_RATIO, d.max_ratio)
        if e.get(ALLOW_RATIO, "").strip() not in ("", "0"):
            ratio = 0
        return cls(
            max_bytes=parse_size(explicit, MAX_LAYER_BYTES) if explicit else None,
            disk_reserve=_int(e, DISK_RESERVE, d.disk_reserve, size=True),
            max_ratio=ratio,
            ratio_grace=_int(e, RATIO_GRACE, d.ratio_grace, size=True),
            max_entries=_int(e, MAX_ENTRIES, d.max_entries),
            max_depth=_int(e, MAX_PATH_DEPTH, d.max_depth),
            max_name=_int(e, MAX_NAME_BYTES, d.max_name),
            max_path=_int(e, MAX_PATH_BYTES, d.max_path),
        )

    def byte_budget(self, dest: str | None) -> tuple[int, str]:
        """The decompressed bytes a layer unpacked under `dest` may reach, and a phrase
        naming the limit that set it (for the refusal message)."""
        best: tuple[int, str] | None = None
        if self.max_bytes is not None:
            best = (self.max_bytes, f"the limit {MAX_LAYER_BYTES}={self.max_bytes}")
        if dest is not None:
            free = free_bytes(dest)
            room = max(0, free - self.disk_reserve)
            if best is None or room < best[0]:
                best = (room, f"{FREE_SPACE} {dest}'s filesystem ({free} bytes) minus "
                              f"{DISK_RESERVE}={self.disk_reserve}")
        return best if best is not None else (1 << 62, "no limit")

    def check_ratio(self, decompressed: int, compressed: int) -> None:
        """Refuse a stream expanding past max_ratio once past the grace amount."""
        if (self.max_ratio and decompressed > self.ratio_grace
                and decompressed > self.max_ratio * max(compressed, 1)):
            raise UnsafeArchive(
                f"layer expands more than {self.max_ratio}:1 ({compressed} compressed bytes "
                f"gave {decompressed} so far): refused as a compression bomb ({MAX_RATIO}; "
                f"--allow-ratio or {ALLOW_RATIO}=1 if you trust it)")

    def check_path(self, parts: list[str], entry: str) -> None:
        """Refuse a path too deep or too long to be a real file tree."""
        if len(parts) > self.max_depth:
            raise UnsafeArchive(f"entry {shorten(entry)}: path depth {len(parts)} exceeds "
                                f"{MAX_PATH_DEPTH}={self.max_depth}")
        total = 0
        for p in parts:
            n = len(p.encode("utf-8", "surrogateescape"))
            if n > self.max_name:
                raise UnsafeArchive(f"entry {shorten(entry)}: a name of {n} bytes exceeds "
                                    f"{MAX_NAME_BYTES}={self.max_name}")
            total += n + 1
        if total > self.max_path:
            raise UnsafeArchive(f"entry {shorten(entry)}: path of {total} bytes exceeds "
                                f"{MAX_PATH_BYTES}={self.max_path}")


def too_big(what: str, limit: int, why: str) -> CockerError:
    """The refusal for `what` (a layer, an entry) going past a byte budget: a bomb
    (UnsafeArchive) when a limit was set, a full disk (a plain error, like ENOSPC) when the
    free space was the bound."""
    if why.startswith(FREE_SPACE):
        return CockerError(f"{what} past {limit} bytes, {why}; refused: free some space, or "
                             f"lower {DISK_RESERVE}")
    return UnsafeArchive(f"{what} past {limit} bytes ({why}); refused as a size bomb")


def shorten(name: str, keep: int = 100) -> str:
    """An entry name fit for a one-line message (hostile names can be megabytes long)."""
    return repr(name) if len(name) <= keep else repr(name[:keep]) + f"... ({len(name)} chars)"
