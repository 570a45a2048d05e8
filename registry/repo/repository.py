"""The one interface every repository implements, local or remote.

The copy routine (`registry.copy`) speaks only this interface, so push, pull,
export, import and mirror are the same code whatever the transport.
"""

import abc
import contextlib
from collections.abc import Iterable
from typing import BinaryIO, NamedTuple

from common.errors import CockerError, Conflict, NotFound, UsageError
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.oci.reference import Reference

ANY = object()  # put_ref/delete_ref without a compare-and-swap precondition

# What a repository can do beyond the interface's core (see Repository.capabilities).
RESUME = "resume"          # an interrupted blob upload continues at its offset
SERVER_GC = "gc"           # gc() runs where the data is
LEASES = "leases"          # lease() protects a push's blobs from a concurrent gc
REFERRERS = "referrers"    # OCI 1.1 subject/referrers are kept and listed
MOUNT = "mount"            # a blob known under one name is usable under any other


class RefRecord(NamedTuple):
    name: str
    version: str
    digest: str
    mtime: float = 0.0

    @property
    def ref(self) -> Reference:
        return Reference(self.name, self.version)

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


class BlobWriter(abc.ABC):
    """An upload in progress. `offset` bytes are already there (a resumed upload)."""

    offset: int = 0

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None:
        """Verify the digest and make the blob visible; raises DigestMismatch."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop; what was written may be kept for a later resume."""

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, et, ev, tb) -> None:
        if et is not None:
            self.abort()


class Repository(abc.ABC):
    """A place that holds blobs and `name:version -> manifest digest` refs."""

    url: str = ""

    # refs --------------------------------------------------------------------------
    @abc.abstractmethod
    def list_refs(self, name: str | None = None) -> list[RefRecord]: ...

    @abc.abstractmethod
    def get_ref(self, name: str, version: str) -> str | None: ...

    @abc.abstractmethod
    def put_ref(self, name: str, version: str, digest: str, expect: object = ANY) -> None:
        """Point name:version at `digest`.

        `expect` is the digest the ref must hold now (None: must not exist), or ANY.
        Refuses (NotFound) when the manifest or a blob it names is missing.
        """

    @abc.abstractmethod
    def delete_ref(self, name: str, version: str, expect: object = ANY) -> None: ...

    def check_expect(self, name: str, version: str, expect: object) -> str | None:
        """The compare-and-swap precondition of put_ref/delete_ref (call under the lock)."""
        current = self.get_ref(name, version)
        if expect is not ANY and current != expect:
            if expect is None:
                raise Conflict(f"{name}:{version} already exists in {self.describe()}")
            raise Conflict(f"{name}:{version} changed in {self.describe()} "
                           f"(now {digestmod.short(current) if current else 'absent'})")
        return current

    def check_complete(self, digest: str) -> bytes:
        """A ref may only point at a manifest whose blobs are all present; returns it."""
        if not self.has_blob(digest):
            raise NotFound(f"manifest {digestmod.short(digest)} is not in {self.describe()}")
        raw = self.read_blob(digest)
        missing = self.missing_blobs(oci.referenced_blobs(oci.parse_manifest(raw)))
        if missing:
            raise NotFound(f"manifest {digestmod.short(digest)} names "
                           f"{len(missing)} missing blob(s), e.g. {missing[0]}")
        return raw

    def resolve(self, ref: Reference) -> RefRecord:
        """The exact record for `ref`; a bare name gives the newest version."""
        if ref.digest:
            if not self.has_blob(ref.digest):
                raise NotFound(f"{ref} not found in {self.describe()}")
            return RefRecord(ref.name, ref.digest, ref.digest)
        if ref.version is not None:
            d = self.get_ref(ref.name, ref.version)
            if d is None:
                raise NotFound(f"{ref} not found in {self.describe()}")
            return RefRecord(ref.name, ref.version, d)
        records = self.list_refs(ref.name)
        if not records:
            raise NotFound(f"image {ref.name} not found in {self.describe()}")
        newest = refmod.newest(r.version for r in records)
        return next(r for r in records if r.version == newest)

    # blobs -------------------------------------------------------------------------
    @abc.abstractmethod
    def blob_size(self, digest: str) -> int | None:
        """Size of a complete blob, or None when absent."""

    def has_blob(self, digest: str) -> bool:
        return self.blob_size(digest) is not None

    def missing_blobs(self, digests: Iterable[str]) -> list[str]:
        return [d for d in dict.fromkeys(digests) if not self.has_blob(d)]

    @abc.abstractmethod
    def open_blob(self, digest: str, offset: int = 0) -> BinaryIO: ...

    def read_blob(self, digest: str, limit: int = 16 << 20) -> bytes:
        """A small blob (manifest, config) in memory, verified."""
        with self.open_blob(digest) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise NotFound(f"blob {digestmod.short(digest)} is larger than {limit} bytes")
        v = digestmod.Verifier(digest)
        v.update(data)
        v.check()
        return data

    @abc.abstractmethod
    def upload(self, digest: str, size: int | None = None) -> BlobWriter: ...

    # manifests -----------------------------------------------------------------------
    def get_manifest(self, digest: str) -> tuple[bytes, str]:
        """A manifest's bytes (verified) and its media type."""
        data = self.read_blob(digest, limit=oci.MAX_MANIFEST_BYTES)
        return data, oci.manifest_media_type(data)

    def put_manifest(self, name: str, data: bytes, media_type: str | None = None) -> str:
        """Store a manifest byte for byte under its digest without a tag (a multi-arch child,
        a signature with a `subject`), kept from gc as long as the repository says; returns
        the digest. Its blobs must be there already."""
        raise UsageError(f"{self.describe()} cannot keep a manifest without a tag")

    def referrers(self, subject: str, artifact_type: str | None = None) -> list[dict]:
        """Descriptors of the manifests whose `subject` is `subject` (OCI 1.1)."""
        raise UsageError(f"{self.describe()} does not list referrers")

    def put_blob_bytes(self, digest: str, data: bytes) -> None:
        if self.has_blob(digest):
            return
        w = self.upload(digest, len(data))
        try:
            if w.offset:
                data = data[w.offset:]
            w.write(data)
            w.commit()
        except BaseException:
            w.abort()
            raise

    def reachable(self, roots: list[str]) -> set[str]:
        """Every blob reachable from the given manifest digests (through indexes too)."""
        seen: set[str] = set()
        stack = list(roots)
        while stack:
            d = stack.pop()
            if d in seen or not self.has_blob(d):
                continue
            seen.add(d)
            try:
                m = oci.parse_manifest(self.read_blob(d))
            except CockerError:
                continue  # a config or layer, not a manifest
            for child in oci.referenced_blobs(m):
                if oci.is_index(m):
                    stack.append(child)
                else:
                    seen.add(child)
        return seen

    def blob_digests(self) -> list[str]:
        """Every blob the repository holds (for fsck); not every transport can list them."""
        raise NotImplementedError(f"{self.describe()} cannot list its blobs")

    def fsck(self, fix: bool = False) -> list[str]:
        """Problems found: blobs whose content does not match their name, dangling refs,
        descriptors whose size or media type is not what they name. `fix` repairs what can
        be repaired without guessing (see LayoutRepo: permissions)."""
        problems = []
        for d in self.blob_digests():
            with contextlib.closing(self.open_blob(d)) as f:
                got, _ = digestmod.of_stream(f)
            if got != d:
                problems.append(f"blob {d} is corrupt (content hashes to {got})")
        for rec in self.list_refs():
            try:
                self.check_complete(rec.digest)
                problems += [f"ref {rec}: {p}" for p in self.descriptor_problems(rec.digest)]
            except CockerError as e:
                problems.append(f"ref {rec}: {e}")
        return problems

    def descriptor_problems(self, digest: str, depth: int = 0) -> list[str]:
        """What the descriptors below a manifest say wrongly: sizes that are not the blob's,
        an index entry whose media type is not its manifest's, unknown layer types."""
        m = oci.parse_manifest(self.read_blob(digest))
        out = []
        children = (m.get("manifests") or []) if oci.is_index(m) else [m["config"], *m["layers"]]
        for desc in children:
            size = self.blob_size(desc["digest"])
            if size is not None and size != desc["size"]:
                out.append(f"{digestmod.short(desc['digest'])}: descriptor says "
                           f"{desc['size']} bytes, the blob has {size}")
        if oci.is_index(m):
            for desc in m["manifests"]:
                if depth >= 8 or not self.has_blob(desc["digest"]):
                    continue
                actual = oci.manifest_media_type(self.read_blob(desc["digest"]))
                if desc.get("mediaType") != actual:
                    out.append(f"index entry {digestmod.short(desc['digest'])} says "
                               f"{desc.get('mediaType')}, the manifest is {actual}")
                out += self.descriptor_problems(desc["digest"], depth + 1)
        elif m["config"].get("mediaType") in oci.CONFIG_TYPES:  # artifacts carry any type
            try:
                oci.check_image(m, f"manifest {digestmod.short(digest)}")
            except CockerError as e:
                out.append(str(e))
        return out

    # maintenance -------------------------------------------------------------------
    def capabilities(self) -> frozenset[str]:
        """What this repository supports beyond the core interface (RESUME, SERVER_GC...)."""
        return frozenset()

    def lease(self, digests: Iterable[str]) -> contextlib.AbstractContextManager[object]:
        """Keep these blobs from any gc while the context lasts (a push relies on blobs it
        was told exist). Taken before asking which blobs are missing. A no-op where the
        repository cannot lease (see capabilities)."""
        return contextlib.nullcontext()

    def gc(self, grace: float, dry_run: bool = False) -> tuple[int, int]:
        """Remove blobs nothing reaches, older than `grace` seconds: (removed, bytes freed)."""
        raise UsageError(f"{self.describe()} cannot be garbage-collected from here")

    # misc --------------------------------------------------------------------------
    def for_name(self, name: str) -> "Repository":
        """A view whose blob operations happen under image `name`. Repositories with one
        blob pool return themselves; OCI registries scope blobs by repository name."""
        return self

    def describe(self) -> str:
        return self.url or "repository"

    def close(self) -> None:
        """Release connections; a repository that holds none has nothing to do."""
        return None

    def __enter__(self) -> "Repository":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
