"""Which blobs a repository name links, so the HTTP door serves a blob only through a name
that has it (as the distribution registry does), whatever digest a caller knows.

Blobs live in one content-addressed pool for every name. A name links a blob when

- the blob was uploaded or mounted to that name through the door:
      srepo/links/<name>/@<hex>       (an empty marker)
- or a manifest of that name (a tag, or a manifest pushed by digest) reaches it, so images
  pushed over SSH or SFTP are served as they are;

and not when the blob was DELETEd from that name since:
      srepo/unlinked/<name>/@<hex>    (until it is uploaded or mounted there again)

What manifests reach is computed per name and cached until the name's ref or digest-marker
directory changes (their mtimes move on every rename into them).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable

from registry.oci import digest as digestmod
from registry.oci import reference as refmod
from registry.repo import layout_paths as lp
from registry.repo.layout import LayoutRepo
from srepo_server import http_store as hs


class BlobLinks:
    def __init__(self, repo: LayoutRepo) -> None:
        self.repo = repo
        self._cache: dict[str, tuple[tuple[int, int], frozenset[str]]] = {}
        self._lock = threading.Lock()

    def _marker(self, kind: str, name: str, digest: str) -> str:
        refmod.validate_name(name)
        # '@' keeps a marker apart from a sub-name's directory (a name part may be hex).
        return os.path.join(self.repo.root, kind, *name.split("/"),
                            "@" + digestmod.hex_of(digestmod.validate(digest)))

    # changes -----------------------------------------------------------------------------
    def link(self, name: str, digests: Iterable[str]) -> None:
        for d in digests:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._marker(lp.BLOB_UNLINKS, name, d))
            p = self._marker(lp.BLOB_LINKS, name, d)
            if not os.path.exists(p):
                self.repo.write_file(p, b"")

    def unlink(self, name: str, digest: str) -> bool:
        """Stop serving `digest` through `name`; False when it was not linked there."""
        if not self.linked(name, digest):
            return False
        self.repo.write_file(self._marker(lp.BLOB_UNLINKS, name, digest), b"")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._marker(lp.BLOB_LINKS, name, digest))
        return True

    # questions ---------------------------------------------------------------------------
    def linked(self, name: str, digest: str) -> bool:
        if not self.repo.has_blob(digest):
            return False
        if os.path.exists(self._marker(lp.BLOB_UNLINKS, name, digest)):
            return False
        if os.path.exists(self._marker(lp.BLOB_LINKS, name, digest)):
            return True
        return digest in self._reachable(name)

    def unlinked(self, names: Iterable[str], digests: Iterable[str]) -> list[str]:
        """Those of `digests` that none of `names` links."""
        names = list(names)
        return [d for d in dict.fromkeys(digests)
                if not any(self.linked(n, d) for n in names)]

    def _stamp(self, name: str) -> tuple[int, int]:
        def mtime(path: str) -> int:
            try:
                return os.stat(path).st_mtime_ns
            except OSError:
                return 0
        refs_dir = os.path.dirname(self.repo.ref_path(name, "latest"))
        return mtime(refs_dir), mtime(hs.digests_dir(self.repo, name))

    def _reachable(self, name: str) -> frozenset[str]:
        stamp = self._stamp(name)
        with self._lock:
            hit = self._cache.get(name)
        if hit and hit[0] == stamp:
            return hit[1]
        roots = [r.digest for r in self.repo.list_refs(name)]
        roots += hs.pushed_by_digest(self.repo, name)
        seen = frozenset(self.repo.reachable(roots))
        with self._lock:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[name] = (stamp, seen)
        return seen
