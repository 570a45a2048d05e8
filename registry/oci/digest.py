"""Content digests: validation before any digest becomes a path, and hashing helpers."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import BinaryIO

from common.errors import DigestMismatch, InvalidReference

ALGORITHM = "sha256"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def validate(digest: str) -> str:
    """Return `digest` if it is `sha256:<64 lowercase hex>`, else raise.

    Every digest that reaches a filesystem path or a URL goes through here first
    (containers/image CVE-2024-3727 was an unvalidated digest used as a path).
    """
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidReference(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex>")
    return digest


def is_valid(digest: object) -> bool:
    return isinstance(digest, str) and bool(_DIGEST_RE.match(digest))


def hex_of(digest: str) -> str:
    return validate(digest).split(":", 1)[1]


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def of_stream(stream: BinaryIO, bufsize: int = 1 << 20) -> tuple[str, int]:
    """Digest and size of everything left in `stream`."""
    h = hashlib.sha256()
    size = 0
    while chunk := stream.read(bufsize):
        h.update(chunk)
        size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def of_file(path: str) -> tuple[str, int]:
    with open(path, "rb") as f:
        return of_stream(f)


def short(digest: str, n: int = 12) -> str:
    return digest.split(":", 1)[-1][:n]


class Verifier:
    """Hashes bytes as they pass, then checks them against the expected digest and size."""

    def __init__(self, expected: str, size: int | None = None) -> None:
        self.expected = validate(expected)
        self.size = size
        self._h = hashlib.sha256()
        self.count = 0

    def update(self, data: bytes) -> None:
        self._h.update(data)
        self.count += len(data)

    def feed(self, chunks: Iterable[bytes]) -> None:
        for c in chunks:
            self.update(c)

    def check(self) -> None:
        got = "sha256:" + self._h.hexdigest()
        if self.size is not None and self.count != self.size:
            raise DigestMismatch(
                f"blob {short(self.expected)}: expected {self.size} bytes, got {self.count}")
        if got != self.expected:
            raise DigestMismatch(f"blob {short(self.expected)}: content hashes to {short(got)}")

    def copy(self) -> hashlib._Hash:
        return self._h.copy()
