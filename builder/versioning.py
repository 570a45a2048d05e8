"""Where a new image version goes: `name:version`, or a bare name plus `--bump`.

`--bump patch|minor|major` gives the next `x.y.z` after the newest numeric version of the
name (cocker's naming), starting at 0.0.1 / 0.1.0 / 1.0.0 for a new name. An existing
name:version is refused unless `force` (publishing also refuses it atomically, so two
concurrent bumps cannot both win).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import AlreadyExists, UsageError
from registry.oci import reference as refmod
from registry.repo.repository import Repository


@dataclass(frozen=True)
class NewVersion:
    """The exact name:version an image is about to be published as."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


_NUMERIC = re.compile(r"^[vV]?\d+(\.\d+)*(-[0-9A-Za-z.-]+)?$")


def newest_numeric(repo: Repository, name: str) -> str | None:
    """The newest version of `name` that looks like x.y.z (others cannot be bumped)."""
    return refmod.newest(r.version for r in repo.list_refs(name) if _NUMERIC.match(r.version))


def target(repo: Repository, text: str, bump: str | None = None, *, force: bool = False,
           default_bump: str | None = None) -> NewVersion:
    """The exact reference a new image will be published as.

    `default_bump` applies when `text` is a bare name and no `bump` is given (edit uses
    "patch"); without it a bare name is an error that says what to add.
    """
    ref = refmod.parse(text)
    if ref.digest:
        raise UsageError(f"{text}: a new image needs name:version, not a digest")
    if bump and ref.version is not None:
        raise UsageError(f"{text}: give either a version or --bump, not both")
    part = bump or (default_bump if ref.version is None else None)
    if part:
        new = NewVersion(ref.name, refmod.bump(newest_numeric(repo, ref.name), part))
    elif ref.version is None:
        raise UsageError(f"{text}: say which version to create (name:version), "
                         "or add --bump patch|minor|major")
    else:
        new = NewVersion(ref.name, ref.version)
    if not force and repo.get_ref(new.name, new.version) is not None:
        raise AlreadyExists(f"{new} already exists; use --force to replace it "
                            "or --bump to make the next version")
    return new
