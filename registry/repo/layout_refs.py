"""The refs of a repository layout and the index.json that follows them, over an Fs: the one
implementation the local directory (and so the store and both server doors) and SFTP share.

    refs/<name>/@<version>     the manifest digest (the '@' keeps a version apart from a sub-name)
    index.json                 one entry per ref, with the manifest's real media type

Every change happens under the repository lock; `guard(token)` runs before each write, so a
backend whose lock can be judged stale and broken (SFTP) never writes after losing it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from common.errors import CockerError, NotFound
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import layout_paths as lp
from registry.repo.fs import Fs
from registry.repo.repository import ANY, RefRecord, Repository

VERSION_PREFIX = "@"
REF_LIMIT = 200
INDEX_LIMIT = 64 << 20


class LayoutRefs:
    def __init__(self, fs: Fs, repo: Repository,
                 lock: Callable[[], contextlib.AbstractContextManager[Any]],
                 guard: Callable[[Any], None] = lambda token: None) -> None:
        self.fs, self.repo, self.lock, self.guard = fs, repo, lock, guard

    @staticmethod
    def rel(name: str, version: str) -> str:
        refmod.validate_name(name)
        refmod.validate_version(version)
        return f"{lp.REFS}/{name}/{VERSION_PREFIX}{version}"

    # reading -------------------------------------------------------------------------
    def list_refs(self, name: str | None = None) -> list[RefRecord]:
        if name is not None:
            refmod.validate_name(name)
        out: list[RefRecord] = []
        self._walk(f"{lp.REFS}/{name}" if name else lp.REFS, name or "", name is not None, out)
        return out

    def _walk(self, rel: str, name: str, exact: bool, out: list[RefRecord]) -> None:
        for entry, st in sorted(self.fs.scandir(rel)):
            if entry.startswith("."):
                continue  # the lock directory, temp files
            if st.is_dir:
                if not exact:
                    self._walk(f"{rel}/{entry}", f"{name}/{entry}" if name else entry, False, out)
            elif entry.startswith(VERSION_PREFIX) and name:
                version = entry[len(VERSION_PREFIX):]
                if refmod.NAME_RE.match(name) and refmod.VERSION_RE.match(version):
                    d = self._read(f"{rel}/{entry}")
                    if d:
                        out.append(RefRecord(name, version, d, st.mtime))

    def _read(self, rel: str) -> str | None:
        data = self.fs.read(rel, REF_LIMIT)
        d = (data or b"").decode(errors="replace").strip()
        return d if digestmod.is_valid(d) else None

    def get_ref(self, name: str, version: str) -> str | None:
        return self._read(self.rel(name, version))

    # changing ------------------------------------------------------------------------
    def put_ref(self, name: str, version: str, digest: str, expect: object = ANY) -> None:
        digestmod.validate(digest)
        rel = self.rel(name, version)
        with self.lock() as token:
            self.repo.check_expect(name, version, expect)
            raw = self.repo.check_complete(digest)
            self.guard(token)
            self.fs.write_atomic(rel, (digest + "\n").encode())
            self._update_index(f"{name}:{version}", oci.ref_entry(f"{name}:{version}", digest, raw))

    def delete_ref(self, name: str, version: str, expect: object = ANY) -> None:
        rel = self.rel(name, version)
        with self.lock() as token:
            current = self.repo.check_expect(name, version, expect)
            if current is None:
                raise NotFound(f"{name}:{version} not found in {self.repo.describe()}")
            self.guard(token)
            self.fs.remove(rel)
            # Drop now-empty name directories so listings stay clean.
            d = rel.rpartition("/")[0]
            while d != lp.REFS and self.fs.rmdir(d):
                d = d.rpartition("/")[0]
            self._update_index(f"{name}:{version}", None)

    # index.json ----------------------------------------------------------------------
    def _update_index(self, refname: str, entry: dict | None) -> None:
        """Keep index.json in step with one ref change (under the lock) without re-reading
        every manifest; an unreadable index is rebuilt from the refs."""
        manifests = oci.index_with(self.fs.read(lp.INDEX, INDEX_LIMIT), refname, entry)
        self._put_index(self._rebuilt() if manifests is None else manifests)

    def rebuild_index(self) -> None:
        """index.json from the refs (under the lock)."""
        self._put_index(self._rebuilt())

    def _rebuilt(self) -> list[dict]:
        manifests = []
        for rec in self.list_refs():
            try:
                raw = self.repo.read_blob(rec.digest)
                mt = oci.manifest_media_type(raw)
            except CockerError:
                continue
            manifests.append(oci.descriptor(mt, rec.digest, len(raw),
                                            {oci.REF_NAME: f"{rec.name}:{rec.version}"}))
        return manifests

    def _put_index(self, manifests: list[dict]) -> None:
        index = {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": manifests}
        self.fs.write_atomic(lp.INDEX, json.dumps(index, indent=1, sort_keys=True).encode())
