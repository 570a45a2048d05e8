"""Interrupted uploads to HTTP registries, remembered so the next push continues them.

One small JSON file per blob being pushed, named by a hash of (registry, repository name,
digest), holding the upload session's URL and how many bytes the registry has acknowledged:

    {"location": "http://host/v2/name/blobs/uploads/<id>?...", "offset": 25165824,
     "registry": "http://host", "name": "name", "digest": "sha256:...", "time": 1700000000.0}

It is written after each acknowledged chunk (atomically: a crash leaves the previous
record) and removed once the blob is complete. The registry stays the judge of the offset:
the next push asks the session where it is before sending anything. A record older than
MAX_AGE is forgotten (registries expire sessions well before that).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

from common.errors import CockerError
from common.fsutil import atomic_write

MAX_AGE = 7 * 24 * 3600.0


@dataclass
class UploadRecord:
    location: str
    offset: int
    registry: str
    name: str
    digest: str
    time: float = 0.0


class UploadJournal:
    """The records of one store (`directory`); a journal without one remembers nothing."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory

    @staticmethod
    def key(registry: str, name: str, digest: str) -> str:
        return hashlib.sha256(f"{registry}\n{name}\n{digest}".encode()).hexdigest()

    def _path(self, key: str) -> str | None:
        return os.path.join(self.directory, key + ".json") if self.directory else None

    def load(self, key: str) -> UploadRecord | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                rec = UploadRecord(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None
        if not isinstance(rec.offset, int) or rec.offset < 0 \
                or time.time() - rec.time > MAX_AGE:
            self.forget(key)
            return None
        return rec

    def save(self, key: str, rec: UploadRecord) -> None:
        path = self._path(key)
        if path is None:
            return
        rec.time = time.time()
        # Remembering is a convenience, never a reason to fail a push; the location may carry
        # the registry's session state, so only the store's owner reads it.
        with contextlib.suppress(OSError, CockerError):
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            atomic_write(path, json.dumps(asdict(rec)).encode(), 0o600, durable=False)

    def forget(self, key: str) -> None:
        path = self._path(key)
        if path is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(path)
        # A push killed in the middle of a save leaves its temporary file behind.
        for stray in glob.glob(os.path.join(glob.escape(os.path.dirname(path)),
                                            f".tmp.{key}.json.*")):
            with contextlib.suppress(OSError):
                os.unlink(stray)
