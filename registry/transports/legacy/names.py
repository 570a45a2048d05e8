"""The one mapping between C cocker's image names and cocker's.

C cocker names images `author=software` (its README recommends it) and stores them as flat
`<name>[:<version>].cockerimage` files. cocker's names follow OCI rules, where the author is a
path component: `author/software`. Import, export, push and pull all go through this module,
so `calvin=nginx:1.0.cockerimage` is `calvin/nginx:1.0` whichever way it came in, and goes back
out as the same file name.
"""

from __future__ import annotations

import re

from registry.oci import reference as refmod

SUFFIX = ".cockerimage"
AUTHOR_SEP = "="


def cocker_name(legacy: str) -> str:
    """`author=software` -> `author/software`, each part made a valid OCI name component
    (lowercase; runs of other characters become one '-')."""
    parts = []
    for part in legacy.split(AUTHOR_SEP):
        p = re.sub(r"[^a-z0-9._-]+", "-", part.lower())
        p = re.sub(r"([._-])[._-]+", r"\1", p).strip("._-")
        if p:
            parts.append(p)
    return "/".join(parts) or "image"


def legacy_name(name: str) -> str:
    """`author/software` -> `author=software` (what C cocker looks for)."""
    return name.replace("/", AUTHOR_SEP)


def filename(name: str, version: str) -> str:
    """The file C cocker reads for cocker's `name:version` (no version part for `_`)."""
    stem = legacy_name(name)
    return stem + SUFFIX if version == refmod.UNVERSIONED else f"{stem}:{version}{SUFFIX}"


def parse_filename(fn: str) -> tuple[str, str] | None:
    """`<legacy name>[:<version>].cockerimage` -> (legacy name, version or `_`); None when
    the file is not an image by C cocker's naming."""
    if not fn.endswith(SUFFIX) or fn.startswith("."):
        return None
    stem = fn[: -len(SUFFIX)]
    name, sep, version = stem.rpartition(":")
    if not sep:
        name, version = stem, refmod.UNVERSIONED
    if not name or not refmod.VERSION_RE.match(version):
        return None
    return name, version
