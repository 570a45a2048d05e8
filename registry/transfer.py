"""What `cocker image push / pull / copy / search`, `image rm --repo`, `repo add` and `repo gc`
do, one function per command: open the repository a spec names (a configured name or a URL),
pick the versions, and run the one copy routine (or the repository's own operation). The
command line only parses and prints.

`options` are the transport options of registry.transports.remotes.open_repo (identity,
accept_new, mode, remote_command, init).
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from collections.abc import Iterable
from typing import Any

from common.errors import CockerError, NotFound, UsageError
from registry.oci import reference as refmod
from registry.repo import image as imagemod
from registry.repo.convert import convert
from registry.repo.copy import CopyResult, copy
from registry.repo.progress import Progress
from registry.repo.repository import SERVER_GC, RefRecord, Repository
from registry.repo.store import Store
from registry.transports import remotes
from registry.transports.remotes import open_repo

LOCAL = "local"  # `image copy --from/--to local`: the store itself


def select(repo: Repository, texts: Iterable[str], all_versions: bool) -> list[RefRecord]:
    """The records the references name: each one's version (a bare name: the newest), or
    every version oldest first with all_versions."""
    out: list[RefRecord] = []
    for text in texts:
        ref = refmod.parse(text)
        if all_versions:
            recs = repo.list_refs(ref.name)
            if not recs:
                raise NotFound(f"image {ref.name} not found in {repo.describe()}")
            out += sorted(recs, key=lambda r: refmod.version_key(r.version))
        else:
            out.append(repo.resolve(ref))
    return out


def _copy_all(src: Repository, dst: Repository, recs: list[RefRecord], *, force: bool,
              jobs: int, progress: Progress) -> list[CopyResult]:
    try:
        return [copy(rec, src, dst, force=force, jobs=jobs, progress=progress) for rec in recs]
    finally:
        progress.close()


def push(store: Store, spec: str | None, refs: Iterable[str], *, all_versions: bool,
         force: bool, jobs: int, progress: Progress, compression: str | None = None,
         fmt: str | None = None, **options: Any) -> list[CopyResult]:
    """Send versions of the store to the repository `spec` (only the blobs it lacks),
    recompressed to `compression` and/or as manifest format `fmt` when asked (for readers
    without zstd or OCI manifests; layers already right keep their digests)."""
    recs = [convert(store, r, compression=compression, fmt=fmt)
            for r in select(store, refs, all_versions)]
    with open_repo(spec, store, **options) as repo:
        return _copy_all(store, repo, recs, force=force, jobs=jobs, progress=progress)


def pull(store: Store, spec: str | None, refs: Iterable[str], *, all_versions: bool,
         force: bool, jobs: int, progress: Progress, **options: Any) -> list[CopyResult]:
    """Fetch versions from the repository `spec` into the store. NotARepository when the
    spec reaches no repository (the caller may try a legacy directory)."""
    with open_repo(spec, store, **options) as repo:
        recs = select(repo, refs, all_versions)
        return _copy_all(repo, store, recs, force=force, jobs=jobs, progress=progress)


def copy_between(store: Store, src_spec: str, dst_spec: str, refs: Iterable[str], *,
                 all_versions: bool, force: bool, init: bool, jobs: int, progress: Progress,
                 **options: Any) -> list[CopyResult]:
    """Copy versions from one repository to another; `local` names the store."""
    with contextlib.ExitStack() as stack:
        src = store if src_spec == LOCAL else stack.enter_context(
            open_repo(src_spec, store, **options))
        dst = store if dst_spec == LOCAL else stack.enter_context(
            open_repo(dst_spec, store, **dict(options, init=init)))
        recs = select(src, refs, all_versions)
        return _copy_all(src, dst, recs, force=force, jobs=jobs, progress=progress)


def matches(pattern: str | None, name: str, version: str) -> bool:
    """A search pattern: a glob over name or name:version, else a substring of name:version."""
    if not pattern:
        return True
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(f"{name}:{version}",
                                                                        pattern)
    return pattern in f"{name}:{version}"


def search(store: Store, spec: str | None, pattern: str | None,
           **options: Any) -> list[dict[str, Any]]:
    """The versions the repository holds that match `pattern`: name, version, digest, size,
    created (size None and created from the ref's time when the image cannot be read)."""
    rows: list[dict[str, Any]] = []
    with open_repo(spec, store, **options) as repo:
        for rec in repo.list_refs():
            if not matches(pattern, rec.name, rec.version):
                continue
            size: int | None
            try:
                img = imagemod.load_record(repo, rec)
                size, created = img.size, img.created
            except CockerError:
                size, created = None, ""
            if not created and rec.mtime:
                created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.mtime))
            rows.append({"name": rec.name, "version": rec.version, "digest": rec.digest,
                         "size": size, "created": created})
    return sort_rows(rows)


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["name"], refmod.version_key(r["version"]), r["version"]))


def remove_remote(store: Store, spec: str, refs: Iterable[str], all_versions: bool,
                  **options: Any) -> list[str]:
    """Delete refs in a remote repository (its blobs go at its next gc); what was removed,
    as `name:version from <repo>` lines."""
    removed = []
    with open_repo(spec, store, **options) as repo:
        for rec in select(repo, refs, all_versions):
            repo.delete_ref(rec.name, rec.version, expect=rec.digest)
            removed.append(f"{rec} from {repo.describe()}")
    return removed


def add_repository(store: Store, name: str, url: str, *, default: bool = False,
                   force: bool = False, init: bool = False, check: bool = False,
                   legacy: bool = False, **options: Any) -> dict[str, Any]:
    """Remember `url` as `name` (`cocker repo add`); with init or check, reach it first (init
    creates the repository there), so a typo is refused before it is saved."""
    if init or check:
        if legacy:
            with remotes.open_legacy(url, None, **options):
                pass
        else:
            with open_repo(url, None, init=init, **options):
                pass
    return remotes.add_repo(store, name, url, default=default, force=force,
                            identity=options.get("identity"), mode=options.get("mode"),
                            remote_command=options.get("remote_command"), legacy=legacy)


def gc_remote(store: Store, spec: str | None, *, grace: float, dry_run: bool = False,
              **options: Any) -> tuple[int, int, str]:
    """`cocker repo gc`: the repository's own mark and sweep; (blobs, bytes, which repo)."""
    with open_repo(spec, store, **options) as repo:
        if SERVER_GC not in repo.capabilities():
            raise UsageError(f"{repo.describe()} does not support gc (gc a registry on its server)")
        removed, freed = repo.gc(grace=grace, dry_run=dry_run)
        return removed, freed, repo.describe()
