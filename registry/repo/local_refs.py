"""Naming and unnaming versions in the local store: `cocker image tag` and `cocker image rm`.

A version is only a ref (refs/<name>/@<version> -> manifest digest): tagging writes one, removal
deletes them; blobs stay until the next gc. A version a container was created from is not
removed without force: the container records the digest, and an image left with no name at
all could not be told apart from garbage by a reader of `image ls`.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.errors import Conflict, InvalidReference, NotFound
from registry.oci import reference as refmod
from registry.oci.reference import Reference
from registry.repo.repository import ANY, RefRecord
from registry.repo.store import Store


def tag(store: Store, src: str, dst: str, *, force: bool = False) -> tuple[Reference, str]:
    """Give the version `src` names the exact reference `dst`; returns it and the digest."""
    rec = store.resolve(refmod.parse(src))
    target = refmod.parse(dst)
    if target.digest:
        raise InvalidReference(f"{dst}: cannot tag to a digest")
    if target.version is None:
        raise InvalidReference(f"{dst}: the new reference needs a version")
    try:
        store.put_ref(target.name, target.version, rec.digest, expect=ANY if force else None)
    except Conflict:
        raise Conflict(f"{target} already exists; use --force to move it") from None
    return target, rec.digest


def remove(store: Store, refs: Iterable[str], *, all_versions: bool = False,
           force: bool = False) -> list[RefRecord]:
    """Delete the refs (every version of each name with all_versions); returns what went.
    Nothing is deleted when one of them is refused."""
    sources = store.container_sources()
    targets: list[RefRecord] = []
    for text in refs:
        ref = refmod.parse(text)
        recs = store.list_refs(ref.name) if all_versions else [store.resolve(ref)]
        if not recs:
            raise NotFound(f"image {ref.name} not found")
        targets += recs
    leaving = {str(r) for r in targets}
    for rec in targets:
        kept = [r for r in store.list_refs() if r.digest == rec.digest and str(r) not in leaving]
        # a container made from this very version, or one whose image would be left unnamed
        users = sorted(c for c, (image, d) in sources.items()
                       if d == rec.digest and (image == str(rec) or not kept))
        if users and not force:
            raise Conflict(f"{rec} is in use: container(s) {', '.join(users)} were created from "
                           "it; remove them first or use --force")
    for rec in targets:
        store.delete_ref(rec.name, rec.version, expect=rec.digest)
    return targets
