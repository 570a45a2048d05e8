"""What each page shows, read from the repository: plain data, no HTML.

Every name, version and digest taken from a URL is validated before it is used, and a
layer is listed only through an image of a name the caller may read.
"""

from __future__ import annotations

import collections
import contextlib
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import CockerError, NotFound
from registry.layer.tar_codec import open_bounded
from registry.oci import digest as digestmod
from registry.oci import reference as refmod
from registry.repo import image as imagemod
from registry.repo.image import Image
from registry.repo.repository import RefRecord, Repository

MAX_FILES = 5000  # a layer listing stops here: the page stays small whatever was pushed


@dataclass(frozen=True)
class NameRow:
    name: str
    versions: int
    newest: str
    newest_created: str


@dataclass(frozen=True)
class VersionRow:
    version: str
    digest: str
    size: int | None
    created: str
    shared: int = 0
    own: int = 0
    error: str = ""


@dataclass(frozen=True)
class LayerRow:
    digest: str
    size: int
    media_type: str
    diff_id: str
    shared_with: list[str]


@dataclass(frozen=True)
class ImageView:
    name: str
    version: str
    image: Image
    layers: list[LayerRow]
    referrers: list[dict]


@dataclass(frozen=True)
class FileEntry:
    kind: str
    mode: str
    owner: str
    size: int
    path: str
    target: str = ""


@dataclass
class LayerListing:
    name: str
    digest: str
    used_by: list[str]
    files: list[FileEntry] = field(default_factory=list)
    truncated: bool = False
    error: str = ""


def checked_name(name: str) -> str:
    return refmod.validate_name(name)


def names(repo: Repository, can_read: Callable[[str], bool]) -> list[NameRow]:
    by_name: dict[str, list[RefRecord]] = collections.defaultdict(list)
    for rec in repo.list_refs():
        if can_read(rec.name):
            by_name[rec.name].append(rec)
    rows = []
    for name in sorted(by_name):
        recs = sorted(by_name[name], key=lambda r: refmod.version_key(r.version))
        newest = recs[-1]
        created = ""
        with contextlib.suppress(CockerError):
            created = imagemod.load_record(repo, newest).created
        rows.append(NameRow(name, len(recs), newest.version, created))
    return rows


def _records(repo: Repository, name: str) -> list[RefRecord]:
    recs = repo.list_refs(checked_name(name))
    if not recs:
        raise NotFound(f"no image named {name} here")
    return sorted(recs, key=lambda r: (refmod.version_key(r.version), r.version))


def _images(repo: Repository, recs: list[RefRecord]) -> dict[str, Image | str]:
    """version -> its image, or the reason it cannot be read."""
    out: dict[str, Image | str] = {}
    for rec in recs:
        try:
            out[rec.version] = imagemod.load_record(repo, rec)
        except CockerError as e:
            out[rec.version] = str(e)
    return out


def _layer_users(images: dict[str, Image | str]) -> dict[str, list[str]]:
    users: dict[str, list[str]] = collections.defaultdict(list)
    for version, img in images.items():
        if isinstance(img, Image):
            for layer in img.layers:
                users[layer["digest"]].append(version)
    return users


def versions(repo: Repository, name: str) -> list[VersionRow]:
    """The name's versions in cocker's version order, with the bytes each shares with
    another version of the name and the bytes only it has."""
    recs = _records(repo, name)
    images = _images(repo, recs)
    users = _layer_users(images)
    rows = []
    for rec in recs:
        img = images[rec.version]
        if not isinstance(img, Image):
            rows.append(VersionRow(rec.version, rec.digest, None, "", error=img))
            continue
        shared = sum(int(ly["size"]) for ly in img.layers if len(users[ly["digest"]]) > 1)
        rows.append(VersionRow(rec.version, rec.digest, img.size, img.created, shared,
                               img.size - shared))
    return rows


def image(repo: Repository, name: str, version: str,
          referrers: Callable[[str], list[dict]]) -> ImageView:
    refmod.validate_version(version)
    recs = _records(repo, name)
    rec = next((r for r in recs if r.version == version), None)
    if rec is None:
        raise NotFound(f"{name}:{version} not found")
    images = _images(repo, recs)
    img = images[version]
    if not isinstance(img, Image):
        raise NotFound(f"{name}:{version} cannot be read: {img}")
    users = _layer_users(images)
    layers = [LayerRow(ly["digest"], int(ly["size"]), str(ly.get("mediaType", "")),
                       diff_id, [v for v in users[ly["digest"]] if v != version])
              for ly, diff_id in zip(img.layers, img.diff_ids, strict=False)]
    return ImageView(name, version, img, layers, referrers(rec.digest))


def layer_files(repo: Repository, name: str, digest: str) -> LayerListing:
    digestmod.validate(digest)
    users = _layer_users(_images(repo, _records(repo, name)))
    if digest not in users:
        raise NotFound(f"{digest} is not a layer of {name}")
    listing = LayerListing(name, digest, users[digest])
    try:
        with repo.open_blob(digest) as blob, \
                tarfile.open(fileobj=open_bounded(blob), mode="r|") as tf:
            for ti in tf:
                if len(listing.files) >= MAX_FILES:
                    listing.truncated = True
                    break
                listing.files.append(_entry(ti))
    except (tarfile.TarError, OSError, EOFError, ValueError, CockerError) as e:
        listing.error = f"the layer cannot be listed: {e}"
    return listing


def _entry(ti: tarfile.TarInfo) -> FileEntry:
    kind = ("d" if ti.isdir() else "l" if ti.issym() else "h" if ti.islnk() else
            "c" if ti.ischr() else "b" if ti.isblk() else "p" if ti.isfifo() else "-")
    perms = "".join(ch if ti.mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return FileEntry(kind, kind.replace("h", "-") + perms, f"{ti.uid}:{ti.gid}", ti.size,
                     ti.name, ti.linkname)
