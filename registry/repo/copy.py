"""The one copy routine: every push, pull, export, import and mirror goes through `copy`.

Order of publication: blobs (only those the destination lacks, verified as they
arrive), then the manifest, then the ref, so a reader never sees a ref whose
blobs are missing.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import Conflict, CorruptImage, DigestMismatch, NotFound
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci.reference import Reference
from registry.repo.progress import Progress
from registry.repo.repository import ANY, LEASES, RefRecord, Repository

CHUNK = 1 << 20
PARALLEL_MIN = 4 << 20
MAX_INDEX_DEPTH = 8  # an index of indexes of manifests is 2; real registries stop there


@dataclass
class CopyResult:
    ref: str
    digest: str
    blobs_sent: int = 0
    bytes_sent: int = 0
    blobs_skipped: int = 0
    published: bool = True
    skipped_blobs: list[str] = field(default_factory=list)


def copy_blob(src: Repository, dst: Repository, digest: str, size: int | None,
              progress: Progress | None = None) -> int:
    """Stream one blob, resuming where a previous attempt stopped; returns bytes sent.

    A resumed upload whose final digest does not match (the kept prefix was bad) is
    started once more from zero: the destination dropped the bad partial."""
    try:
        return _copy_blob(src, dst, digest, size, progress)
    except ResumedMismatch:
        return _copy_blob(src, dst, digest, size, progress)


class ResumedMismatch(DigestMismatch):
    """A resumed upload's final digest did not match: the prefix kept from before was bad."""


def _copy_blob(src: Repository, dst: Repository, digest: str, size: int | None,
               progress: Progress | None = None) -> int:
    w = dst.upload(digest, size)
    sent = 0
    try:
        if size is not None and w.offset >= size:
            w.commit()
            return 0
        bar = progress.bar(digestmod.short(digest), size, initial=w.offset) if progress else None
        with contextlib.closing(src.open_blob(digest, w.offset)) as r:
            # One thread reads and writes: a read-ahead thread was measured 2x slower on
            # SFTP pulls (GIL contention with paramiko's transport thread).
            while chunk := r.read(CHUNK):
                w.write(chunk)
                sent += len(chunk)
                if bar:
                    bar.update(len(chunk))
        try:
            w.commit()
        except DigestMismatch as e:
            if w.offset:
                raise ResumedMismatch(str(e)) from None
            raise
        if bar:
            bar.close()
        return sent
    except BaseException:
        w.abort()
        raise


def _descriptors(src: Repository, manifest_digest: str) -> list[tuple[str, int | None]]:
    """Every blob below a manifest (through indexes), children before parents.

    A loop over a stack, not a recursion, and indexes nest at most MAX_INDEX_DEPTH deep:
    the manifests come from a remote that may be hostile."""
    out: list[tuple[str, int | None]] = []
    # (digest, size, depth, done): `done` marks an index entry whose children are listed
    stack: list[tuple[str, int | None, int, bool]] = [(manifest_digest, None, 0, False)]
    while stack:
        digest, size, depth, done = stack.pop()
        if done:
            out.append((digest, size))
            continue
        if depth > MAX_INDEX_DEPTH:
            raise CorruptImage(f"image indexes nest deeper than {MAX_INDEX_DEPTH} levels")
        m = oci.parse_manifest(src.read_blob(digest))
        if depth:
            stack.append((digest, size, depth, True))
        if oci.is_index(m):
            stack.extend((d["digest"], d["size"], depth + 1, False)
                         for d in reversed(m["manifests"]))
        else:
            out.append((m["config"]["digest"], m["config"]["size"]))
            out += [(d["digest"], d["size"]) for d in m["layers"]]
    return out


def copy(ref: Reference | RefRecord, src: Repository, dst: Repository, *,
         dest_ref: Reference | None = None, force: bool = True, jobs: int = 4,
         progress: Progress | None = None, on_blob: Callable[[str], None] | None = None
         ) -> CopyResult:
    """Copy one image version from `src` to `dst` (as `dest_ref` when given).

    `force=False` refuses to move an existing destination ref to a different digest.
    """
    rec = ref if isinstance(ref, RefRecord) else src.resolve(ref)
    target = RefRecord(dest_ref.name if dest_ref else rec.name,
                       (dest_ref.version if dest_ref else None) or rec.version, rec.digest)
    # Registries (registry.transports.http.repo) scope blobs by repository name: bind both ends.
    src = src.for_name(rec.name)
    dst = dst.for_name(target.name)
    if not force:
        # Refuse before moving any byte rather than after a long transfer.
        current = dst.get_ref(target.name, target.version)
        if current is not None and current != rec.digest:
            raise Conflict(f"{target} already exists in {dst.describe()} with digest "
                           f"{digestmod.short(current)}; use --force to replace it")
    blobs = _descriptors(src, rec.digest)
    # Leased before asking what is missing: a gc at the destination must not sweep a blob
    # it has just said it holds (registry.repo.gc).
    with dst.lease([d for d, _ in blobs] + [rec.digest]):
        return _transfer(rec, target, src, dst, blobs, force=force, jobs=jobs,
                         progress=progress, on_blob=on_blob)


def _transfer(rec: RefRecord, target: RefRecord, src: Repository, dst: Repository,
              blobs: list[tuple[str, int | None]], *, force: bool, jobs: int,
              progress: Progress | None, on_blob: Callable[[str], None] | None) -> CopyResult:
    sizes = dict(blobs)
    missing = dst.missing_blobs([d for d, _ in blobs])
    # Biggest first, so the long transfer starts at once and small ones fill in beside it.
    missing.sort(key=lambda d: -int(sizes.get(d) or 0))
    result = CopyResult(f"{target.name}:{target.version}", rec.digest)
    result.blobs_skipped = len(sizes) - len(missing)
    if progress and missing:
        progress.total(f"{target.name}:{target.version}",
                       sum(int(sizes[d] or 0) for d in missing))
    if missing:
        # One stream per big blob (up to `jobs`); small ones follow on whichever stream is
        # free first. An extra stream just for small blobs was measured to slow the big
        # transfer down (SFTP pulls 1.5-2x): it costs the transport a new channel or
        # server process for a few hundred KiB.
        big = sum(1 for d in missing if int(sizes.get(d) or 0) >= PARALLEL_MIN)
        workers = max(1, min(jobs, big))
        if workers == 1:
            # In this thread: a transport that binds sessions to threads (SFTP) then uses
            # the one it already has instead of opening another.
            for d in missing:
                result.bytes_sent += copy_blob(src, dst, d, sizes[d], progress)
                result.blobs_sent += 1
                if on_blob:
                    on_blob(d)
        else:
            _copy_parallel(src, dst, missing, sizes, workers, progress, on_blob, result)
    if not dst.has_blob(rec.digest):
        dst.put_blob_bytes(rec.digest, src.read_blob(rec.digest))
        result.blobs_sent += 1
    current = dst.get_ref(target.name, target.version)
    if current == rec.digest:
        result.published = False
        return result
    if current is not None and not force:
        raise Conflict(f"{target} already exists in {dst.describe()} with digest "
                       f"{digestmod.short(current)}; use --force to replace it")
    try:
        try:
            dst.put_ref(target.name, target.version, rec.digest,
                        expect=current if not force else ANY)
        except NotFound:
            # A blob it was told exists went away (a gc where no lease protects a push):
            # send what is missing now, and publish once more.
            again = dst.missing_blobs([d for d, _ in blobs] + [rec.digest])
            if not again or LEASES in dst.capabilities():
                raise
            for d in again:
                if d == rec.digest:
                    dst.put_blob_bytes(d, src.read_blob(d))
                else:
                    result.bytes_sent += copy_blob(src, dst, d, sizes[d], progress)
                result.blobs_sent += 1
            dst.put_ref(target.name, target.version, rec.digest,
                        expect=current if not force else ANY)
    except Conflict:
        # Someone else published meanwhile: the same content is a success, not a race lost.
        if dst.get_ref(target.name, target.version) != rec.digest:
            raise
        result.published = False
    return result


def _copy_parallel(src: Repository, dst: Repository, digests: list[str],
                   sizes: dict[str, int | None], workers: int, progress: Progress | None,
                   on_blob: Callable[[str], None] | None, result: CopyResult) -> None:
    pool = cf.ThreadPoolExecutor(max_workers=workers)
    try:
        futs = {pool.submit(copy_blob, src, dst, d, sizes[d], progress): d for d in digests}
        for fut in cf.as_completed(futs):
            result.bytes_sent += fut.result()
            result.blobs_sent += 1
            if on_blob:
                on_blob(futs[fut])
    finally:
        # On a failure, blobs not yet started are not started at all.
        pool.shutdown(wait=True, cancel_futures=True)
