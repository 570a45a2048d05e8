"""The build cache: step key -> the layer that step made, kept in the store.

`config/build-cache.json` maps a key (sha256 of the parent layer chain, the runtime config,
the step's content, the copied files' digests and the build args it used) to the layer's
descriptor, its diff_id and when it was built. The layer itself is an ordinary blob; an
entry whose blob is gone (gc) is a miss. Updates are read-modify-write under an flock, and
the file is replaced atomically, so concurrent builds never corrupt it.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from common.errors import CockerError
from common.fsutil import atomic_write, flock
from registry.oci import manifest as oci

MAX_ENTRIES = 5000
FILE = "build-cache.json"


def key(*parts: Any) -> str:
    return hashlib.sha256(oci.canonical_json(list(parts))).hexdigest()


class BuildCache:
    def __init__(self, store) -> None:
        self.store = store
        self.path = store.paths.config_file(FILE)

    def _read(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, k: str) -> dict | None:
        entry = self._read().get(k)
        if not isinstance(entry, dict):
            return None
        layer = entry.get("layer")
        if layer is not None:
            try:
                oci.check_descriptor(layer, "cached layer")
            except CockerError:
                return None
            if not self.store.has_blob(layer["digest"]):
                return None   # collected since: build it again
        return entry

    def put(self, k: str, entry: dict) -> None:
        with flock(self.path + ".lock", what="the build cache"):
            data = self._read()
            data[k] = dict(entry, used=time.time())
            if len(data) > MAX_ENTRIES:
                for old in sorted(data, key=lambda x: data[x].get("used", 0))[: len(data) - MAX_ENTRIES]:
                    del data[old]
            atomic_write(self.path, json.dumps(data, sort_keys=True).encode())
