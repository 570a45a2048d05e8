"""The one reference parser: `name[:version]` or `name@sha256:...`, and version ordering.

Names follow the OCI distribution rules. Versions order like software versions:
numeric parts numerically (1.9.1 < 1.10.0), a pre-release before its release
(2.0.0-rc1 < 2.0.0), and cocker's `_` ("no version") below everything else.
"""

import re
from collections.abc import Iterable
from typing import NamedTuple

from common.errors import InvalidReference
from registry.oci import digest as digestmod

UNVERSIONED = "_"

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_NAME = 255


def validate_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME or not NAME_RE.match(name):
        raise InvalidReference(
            f"invalid image name {name!r}: use lowercase letters, digits and . _ - separators, "
            "with / between components")
    return name


def validate_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise InvalidReference(
            f"invalid version {version!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    return version


class Reference(NamedTuple):
    """`name` plus an exact `version`, an exact manifest `digest`, or neither (the newest)."""

    name: str
    version: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.version}" if self.version is not None else self.name


def parse(text: str, *, default_version: str | None = None) -> Reference:
    """Parse `name`, `name:version` or `name@sha256:<hex>`."""
    if not isinstance(text, str) or not text or text != text.strip():
        raise InvalidReference(f"invalid reference {text!r}")
    if "@" in text:
        name, _, dig = text.partition("@")
        return Reference(validate_name(name), None, digestmod.validate(dig))
    name, sep, tail = text.rpartition(":")
    version: str | None = tail
    if not sep or "/" in tail:
        name, version = text, None
    if version is None and default_version is not None:
        version = default_version
    return Reference(validate_name(name), None if version is None else validate_version(version))


def version_key(version: str) -> tuple:
    """Sort key that orders versions like software versions."""
    if version == UNVERSIONED:
        return (0,)
    v = version[1:] if len(version) > 1 and version[0] in "vV" and version[1].isdigit() else version
    main, dash, pre = v.partition("-")
    return (1, _tokens(main), 0 if dash else 1, _tokens(pre))


def _tokens(part: str) -> tuple:
    # Numbers compare as numbers and rank above words at the same position, so
    # 1.0.1 > 1.0.beta; words compare case-insensitively.
    out = []
    for tok in re.findall(r"\d+|[A-Za-z]+", part):
        out.append((1, int(tok), "") if tok.isdigit() else (0, 0, tok.lower()))
    return tuple(out)


def sort_versions(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=lambda v: (version_key(v), v))


def newest(versions: Iterable[str]) -> str | None:
    vs = sort_versions(versions)
    return vs[-1] if vs else None


def bump(version: str | None, part: str) -> str:
    """The next `x.y.z` after `version` (None or `_`: start at 0.0.1 / 0.1.0 / 1.0.0)."""
    if part not in ("patch", "minor", "major"):
        raise InvalidReference(f"invalid bump {part!r}: use patch, minor or major")
    nums = [0, 0, 0]
    if version and version != UNVERSIONED:
        main = (version[1:] if version[:1] in "vV" else version).partition("-")[0]
        found = [int(x) for x in re.findall(r"\d+", main)[:3]]
        nums[: len(found)] = found
    if part == "major":
        nums = [nums[0] + 1, 0, 0]
    elif part == "minor":
        nums = [nums[0], nums[1] + 1, 0]
    else:
        nums = [nums[0], nums[1], nums[2] + 1]
    return ".".join(map(str, nums))
