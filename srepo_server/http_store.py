"""What the OCI Distribution API needs beyond refs and blobs, kept beside the same LayoutRepo.

    srepo/digests/<name>/@sha256:<hex>    a manifest pushed by digest only (a gc root until a
                                          tag reaches it, or its subject disappears)
    srepo/referrers/<subject hex>/<hex>   descriptor of a manifest whose `subject` is that digest
    srepo/deleted/<name>/@sha256:<hex>    manifest deleted by digest under this name
    tmp/http-uploads/                     upload sessions (srepo_server.http_uploads)

Blobs are one content-addressed pool for every name, as in every cocker repository, so a
directory filled by SFTP or smart pushes is served as it is and a cross-repo mount is free.
"""

from __future__ import annotations

import contextlib
import json
import os

from common.errors import CockerError, CorruptImage, NotFound
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import gc as gcmod
from registry.repo import layout_paths as lp
from registry.repo import manifests
from registry.repo.layout import LayoutRepo
from registry.repo.repository import ANY

MANIFEST_LIMIT = 4 << 20


class ApiError(Exception):
    """An OCI error answer: HTTP status, spec error code, message, optional detail."""

    def __init__(self, status: int, code: str, message: str, detail: object = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail
        self.headers = headers or {}


def _meta(repo: LayoutRepo, *parts: str) -> str:
    return os.path.join(repo.root, "srepo", *parts)


def _name_dir(repo: LayoutRepo, kind: str, name: str) -> str:
    refmod.validate_name(name)
    return _meta(repo, kind, *name.split("/"))


def _marker(repo: LayoutRepo, kind: str, name: str, digest: str) -> str:
    return os.path.join(_name_dir(repo, kind, name), "@" + digestmod.validate(digest))


def _remove_marker(repo: LayoutRepo, kind: str, name: str, digest: str) -> bool:
    p = _marker(repo, kind, name, digest)
    try:
        os.unlink(p)
    except FileNotFoundError:
        return False
    _prune_dirs(os.path.dirname(p), _meta(repo, kind))
    return True


def _prune_dirs(d: str, top: str) -> None:
    while d != top and d.startswith(top):
        try:
            os.rmdir(d)
        except OSError:
            break
        d = os.path.dirname(d)


def _walk_markers(top: str) -> list[tuple[str, str]]:
    """(name, digest) for every marker file under srepo/<kind>/."""
    out = []
    for dirpath, dirnames, files in os.walk(top):
        dirnames.sort()
        rel = os.path.relpath(dirpath, top)
        if rel == ".":
            continue
        name = rel.replace(os.sep, "/")
        for fn in sorted(files):
            if fn.startswith("@") and digestmod.is_valid(fn[1:]) and refmod.NAME_RE.match(name):
                out.append((name, fn[1:]))
    return out


# manifests ------------------------------------------------------------------------------
def media_type_of(m: dict, content_type: str | None) -> str:
    mt = m.get("mediaType")
    if mt:
        return mt
    if content_type and content_type in oci.MANIFEST_TYPES + oci.INDEX_TYPES:
        return content_type
    return oci.INDEX if oci.is_index(m) else oci.MANIFEST


def parse_pushed_manifest(data: bytes, content_type: str | None) -> tuple[dict, str]:
    try:
        m = oci.parse_manifest(data)
    except CorruptImage as e:
        raise ApiError(400, "MANIFEST_INVALID", str(e)) from None
    if m.get("schemaVersion") != 2:
        raise ApiError(400, "MANIFEST_INVALID", "only schemaVersion 2 manifests are accepted")
    mt = media_type_of(m, content_type)
    ct = (content_type or "").split(";")[0].strip()
    if m.get("mediaType") and ct and ct in oci.MANIFEST_TYPES + oci.INDEX_TYPES and ct != mt:
        raise ApiError(400, "MANIFEST_INVALID",
                       f"Content-Type {ct} does not match the manifest's mediaType {mt}")
    subject = m.get("subject")
    if subject is not None:
        try:
            oci.check_descriptor(subject, "manifest subject")
        except CorruptImage as e:
            raise ApiError(400, "MANIFEST_INVALID", str(e)) from None
    return m, mt


def put_manifest(repo: LayoutRepo, name: str, reference: str, data: bytes,
                 content_type: str | None, expect: object = ANY) -> tuple[str, str | None]:
    """Store a manifest under a tag or its digest; returns (digest, subject digest).

    `expect` is the tag's compare-and-swap precondition (LayoutRepo.put_ref)."""
    digest = digestmod.of_bytes(data)
    is_digest = reference.startswith("sha256:")
    if is_digest and reference != digest:
        raise ApiError(400, "DIGEST_INVALID", "manifest content does not match the digest "
                       "in the URL", {"expected": reference, "got": digest})
    m, mt = parse_pushed_manifest(data, content_type)
    missing = repo.missing_blobs(oci.referenced_blobs(m))
    if missing:
        raise ApiError(400, "MANIFEST_BLOB_UNKNOWN", "manifest references blobs that are not "
                       "in the repository", {"missing": missing[:20]})
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_marker(repo, "deleted", name, digest))
    subject = m.get("subject", {}).get("digest") if m.get("subject") else None
    try:
        if is_digest:
            # The layout's own keeping of a manifest without a tag (pin, referrer).
            manifests.put(repo, repo.fs, repo.lock, name, data, mt)
        else:
            repo.put_blob_bytes(digest, data)
            if subject:
                repo.fs.write_atomic(manifests.referrer_rel(subject, digest), oci.canonical_json(
                    manifests.referrer_descriptor(m, data, mt)))
            repo.put_ref(name, reference, digest, expect=expect)
    except NotFound as e:
        raise ApiError(400, "MANIFEST_BLOB_UNKNOWN", str(e)) from None
    return digest, subject


def resolve_manifest(repo: LayoutRepo, name: str, reference: str) -> str:
    if reference.startswith("sha256:") or ":" in reference:
        if not digestmod.is_valid(reference):
            raise ApiError(400, "DIGEST_INVALID", f"invalid digest {reference!r}")
        if os.path.exists(_marker(repo, "deleted", name, reference)) or not repo.has_blob(reference):
            raise ApiError(404, "MANIFEST_UNKNOWN", f"manifest {reference} not found")
        return reference
    if not refmod.VERSION_RE.match(reference):
        raise ApiError(400, "TAG_INVALID", f"invalid tag {reference!r}")
    d = repo.get_ref(name, reference)
    if d is None:
        raise ApiError(404, "MANIFEST_UNKNOWN", f"manifest {name}:{reference} not found")
    return d


def read_manifest(repo: LayoutRepo, digest: str) -> tuple[bytes, str]:
    try:
        size = repo.blob_size(digest) or 0
        if size > MANIFEST_LIMIT:
            raise CorruptImage("too large for a manifest")
        data = repo.read_blob(digest, limit=MANIFEST_LIMIT)
        m = oci.parse_manifest(data)
    except CockerError:
        raise ApiError(404, "MANIFEST_UNKNOWN", f"{digest} is not a manifest") from None
    return data, media_type_of(m, None)


def delete_manifest(repo: LayoutRepo, name: str, reference: str) -> None:
    if not reference.startswith("sha256:"):
        if not refmod.VERSION_RE.match(reference):
            raise ApiError(400, "TAG_INVALID", f"invalid tag {reference!r}")
        try:
            repo.delete_ref(name, reference)
        except NotFound:
            raise ApiError(404, "MANIFEST_UNKNOWN", f"{name}:{reference} not found") from None
        return
    digest = reference
    if not digestmod.is_valid(digest):
        raise ApiError(400, "DIGEST_INVALID", f"invalid digest {digest!r}")
    found = _remove_marker(repo, "digests", name, digest)
    for rec in repo.list_refs(name):
        if rec.digest == digest:
            with contextlib.suppress(NotFound):
                repo.delete_ref(name, rec.version, expect=digest)
            found = True
    if not found and (not repo.has_blob(digest)
                      or os.path.exists(_marker(repo, "deleted", name, digest))):
        raise ApiError(404, "MANIFEST_UNKNOWN", f"manifest {digest} not found")
    repo.write_file(_marker(repo, "deleted", name, digest), b"")
    with contextlib.suppress(CockerError, ApiError):
        data, _ = read_manifest(repo, digest)
        subj = (json.loads(data).get("subject") or {}).get("digest")
        if subj and digestmod.is_valid(subj):
            p = _meta(repo, "referrers", digestmod.hex_of(subj), digestmod.hex_of(digest))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
            _prune_dirs(os.path.dirname(p), _meta(repo, "referrers"))


def referrers(repo: LayoutRepo, subject: str, artifact_type: str | None) -> list[dict]:
    return manifests.referrers(repo, repo.fs, subject, artifact_type)


def digests_dir(repo: LayoutRepo, name: str) -> str:
    """Where the manifests pushed to `name` by digest only are marked."""
    return _name_dir(repo, "digests", name)


def pushed_by_digest(repo: LayoutRepo, name: str) -> list[str]:
    """Manifests pushed to `name` by digest only (not through a tag)."""
    try:
        files = os.listdir(digests_dir(repo, name))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [fn[1:] for fn in sorted(files) if fn.startswith("@") and digestmod.is_valid(fn[1:])]


def names(repo: LayoutRepo) -> list[str]:
    found = {r.name for r in repo.list_refs()}
    found.update(n for n, _ in _walk_markers(_meta(repo, "digests")))
    return sorted(found)


def tags(repo: LayoutRepo, name: str) -> list[str] | None:
    t = sorted(r.version for r in repo.list_refs(name))
    if not t and not os.path.isdir(_name_dir(repo, "digests", name)):
        return None
    return t


# gc ---------------------------------------------------------------------------------------
def gc(repo: LayoutRepo, grace: float, dry_run: bool = False) -> tuple[int, int]:
    """The repository's one gc (registry.repo.gc, which keeps pinned digest-only manifests
    and leased blobs), after dropping the pins it no longer needs: a pin a tag now reaches
    (the manifest then lives and dies with the tag) or whose subject is gone."""
    with repo.lock():
        tagged = repo.reachable([r.digest for r in repo.list_refs()])
    for name, d in list(gcmod.pins(repo.fs)):
        subj = gcmod.subject_of(repo, d)
        if d in tagged or not repo.has_blob(d) or (subj and not repo.has_blob(subj)):
            if not dry_run:
                _remove_marker(repo, "digests", name, d)
    result = repo.gc(grace=grace, dry_run=dry_run)
    if not dry_run:
        for name, d in _walk_markers(_meta(repo, "deleted")):
            if not repo.has_blob(d):
                _remove_marker(repo, "deleted", name, d)
        for kind in (lp.BLOB_LINKS, lp.BLOB_UNLINKS):
            _prune_gone_blob_markers(os.path.join(repo.root, kind), repo)
        rtop = _meta(repo, "referrers")
        for dirpath, _, files in os.walk(rtop, topdown=False):
            for fn in files:
                if len(fn) == 64 and not repo.has_blob("sha256:" + fn):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(dirpath, fn))
            if dirpath != rtop:
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
    return result


def _prune_gone_blob_markers(top: str, repo: LayoutRepo) -> None:
    """Drop the door's per-name blob markers (srepo_server.blob_links) of blobs gc removed,
    so a blob pushed again later is not linked to names that had it before."""
    for dirpath, _, files in os.walk(top, topdown=False):
        for fn in files:
            if fn.startswith("@") and not repo.has_blob("sha256:" + fn[1:]):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, fn))
        if dirpath != top:
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
