"""The one garbage collector, for every repository backend (local directory, SFTP, and through
them the smart protocol and srepo-server's doors).

Mark: every ref, every manifest pinned by digest (pushed without a tag, e.g. a multi-arch
child or an OCI 1.1 referrer) whose subject is still there, every blob a live push leases,
and whatever the caller adds (the local store's container pins); then everything those
manifests reach, through indexes too. Sweep: unmarked blobs older than `grace`.

A lease is a file under tmp/leases listing digests, one per line, written under the
repository lock before the push asks which blobs are missing, so a gc either ran before (the
push then sees the blob missing and sends it) or sees the lease. It is live while its writer
holds it (flock, local pushes) or, where that cannot be seen (SFTP), for LEASE_TTL after its
last write. That is what makes `--grace 0` safe while people push.

The caller holds the repository lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from common.errors import CockerError
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import layout_paths as lp
from registry.repo.fs import Fs
from registry.repo.repository import Repository

LEASE_TTL = 3600.0


@dataclass
class GcResult:
    removed: int = 0
    freed: int = 0


def pins(fs: Fs) -> Iterator[tuple[str, str]]:
    """(name, digest) of every manifest pinned by digest."""
    for rel in fs.walk_files(lp.DIGEST_PINS):
        parent, _, leaf = rel.rpartition("/")
        name = parent[len(lp.DIGEST_PINS) + 1:]
        d = leaf[len(lp.PIN_PREFIX):]
        if leaf.startswith(lp.PIN_PREFIX) and digestmod.is_valid(d) and refmod.NAME_RE.match(name):
            yield name, d


def subject_of(repo: Repository, digest: str) -> str | None:
    try:
        s = (oci.parse_manifest(repo.read_blob(digest)).get("subject") or {}).get("digest")
    except (CockerError, AttributeError):
        return None
    return s if isinstance(s, str) and digestmod.is_valid(s) else None


def pinned_roots(repo: Repository, fs: Fs) -> list[str]:
    """Pinned manifests that stay: those whose subject (if any) is still present."""
    out = []
    for _, d in pins(fs):
        subj = subject_of(repo, d)
        if subj is None or repo.has_blob(subj):
            out.append(d)
    return out


def live_leases(fs: Fs) -> Iterator[str]:
    """Relative paths of the lease files still in force."""
    now = fs.now()
    for entry in fs.listdir(lp.LEASES):
        rel = f"{lp.LEASES}/{entry}"
        st = fs.stat(rel)
        if st is not None and (fs.is_locked(rel) or now - st.mtime < LEASE_TTL):
            yield rel


def leased(fs: Fs) -> set[str]:
    out: set[str] = set()
    for rel in live_leases(fs):
        for line in (fs.read(rel, 64 << 20) or b"").decode(errors="replace").split():
            if digestmod.is_valid(line):
                out.add(line)
    return out


def lease_body(digests: Iterable[str]) -> bytes:
    return "".join(d + "\n" for d in dict.fromkeys(digests)).encode()


def marked(repo: Repository, fs: Fs, extra_roots: Iterable[str] = ()) -> set[str]:
    roots = [r.digest for r in repo.list_refs()] + pinned_roots(repo, fs) + list(extra_roots)
    # A push leases every blob of its image, manifests included: no need to walk them.
    return repo.reachable(roots) | leased(fs)


def collect(repo: Repository, fs: Fs, *, grace: float, dry_run: bool = False,
            extra_roots: Iterable[str] = ()) -> GcResult:
    """Mark and sweep the blobs (see the module doc). The caller holds the repository lock."""
    if grace < 0:
        raise ValueError("grace must be >= 0")
    keep = marked(repo, fs, extra_roots)
    now = fs.now()
    result = GcResult()
    for h in sorted(fs.listdir(lp.BLOBS)):
        d = "sha256:" + h
        if not digestmod.is_valid(d) or d in keep:
            continue
        rel = f"{lp.BLOBS}/{h}"
        st = fs.stat(rel)
        if st is None or now - st.mtime < grace:
            continue
        if not dry_run:
            fs.remove(rel)
        result.removed += 1
        result.freed += st.size
    if not dry_run:
        live = set(live_leases(fs))
        for entry in fs.listdir(lp.LEASES):
            if f"{lp.LEASES}/{entry}" not in live:
                fs.remove(f"{lp.LEASES}/{entry}")
    return result
