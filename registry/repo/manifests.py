"""Manifests as the layout keeps them beyond blobs and refs, over an Fs (local or SFTP), for
every backend and both server doors:

    srepo/digests/<name>/@sha256:<hex>    a manifest pushed by digest only: a gc root until a
                                          tag reaches it or its subject is gone
    srepo/referrers/<subject hex>/<hex>   the descriptor of a manifest whose `subject` is that
                                          digest (OCI 1.1 referrers: signatures, SBOMs...)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from common.errors import CorruptImage, NotFound
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import layout_paths as lp
from registry.repo.fs import Fs
from registry.repo.repository import Repository


def pin_rel(name: str, digest: str) -> str:
    refmod.validate_name(name)
    return f"{lp.DIGEST_PINS}/{name}/{lp.PIN_PREFIX}{digestmod.validate(digest)}"


def referrer_rel(subject: str, digest: str) -> str:
    return f"{lp.REFERRERS}/{digestmod.hex_of(subject)}/{digestmod.hex_of(digest)}"


def referrer_descriptor(m: dict, data: bytes, media_type: str) -> dict:
    """What the referrers API lists for a manifest with a subject."""
    desc = oci.descriptor(media_type, data, None, m.get("annotations") or None)
    art = m.get("artifactType") or (m.get("config") or {}).get("mediaType")
    if art:
        desc["artifactType"] = art
    return desc


def put(repo: Repository, fs: Fs, lock: Callable[[], contextlib.AbstractContextManager[Any]],
        name: str, data: bytes, media_type: str | None = None) -> str:
    """Store a manifest byte for byte under its digest, pinned under `name` (no tag), and
    listed as a referrer of its subject. Its blobs must be there. Returns the digest."""
    m = oci.parse_manifest(data)
    actual = oci.manifest_media_type(data)
    if media_type and media_type != actual and m.get("mediaType"):
        raise CorruptImage(f"manifest says {actual}, not {media_type}")
    digest = digestmod.of_bytes(data)
    repo.put_blob_bytes(digest, data)
    subject = (m.get("subject") or {}).get("digest")
    if isinstance(subject, str) and digestmod.is_valid(subject):
        fs.write_atomic(referrer_rel(subject, digest),
                        oci.canonical_json(referrer_descriptor(m, data, media_type or actual)))
    with lock():  # the repository lock: a gc sees the pin, or the check below fails
        missing = repo.missing_blobs(oci.referenced_blobs(m) + [digest])
        if missing:
            raise NotFound(f"manifest {digestmod.short(digest)} names missing blob {missing[0]}")
        fs.write_atomic(pin_rel(name, digest), digest.encode() + b"\n")
    return digest


def referrers(repo: Repository, fs: Fs, subject: str,
              artifact_type: str | None = None) -> list[dict]:
    out = []
    top = f"{lp.REFERRERS}/{digestmod.hex_of(subject)}"
    for entry in sorted(fs.listdir(top)):
        if len(entry) != 64 or not repo.has_blob("sha256:" + entry):
            continue
        try:
            desc = json.loads(fs.read(f"{top}/{entry}") or b"")
        except ValueError:
            continue
        if isinstance(desc, dict) and (not artifact_type or desc.get("artifactType") == artifact_type):
            out.append(desc)
    return out
