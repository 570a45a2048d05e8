"""Images as users see them: a resolved ref with its manifest and config."""

from typing import Any, NamedTuple

from common.errors import CorruptImage, NotFound
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.oci.reference import Reference
from registry.repo.repository import ANY, RefRecord, Repository


class Image(NamedTuple):
    name: str
    version: str
    digest: str
    manifest: dict
    config: dict
    manifest_size: int = 0
    config_digest: str = ""

    @property
    def ref(self) -> Reference:
        return Reference(self.name, self.version)

    @property
    def layers(self) -> list[dict]:
        return list(self.manifest.get("layers", []))

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])

    @property
    def size(self) -> int:
        return (self.manifest_size + int(self.manifest["config"]["size"])
                + sum(int(layer["size"]) for layer in self.layers))

    @property
    def created(self) -> str:
        return str(self.config.get("created") or "")

    @property
    def runtime_config(self) -> dict:
        return dict(self.config.get("config") or {})

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "reference": f"{self.name}:{self.version}",
            "digest": self.digest,
            "layers": [layer["digest"] for layer in self.layers],
            "diff_ids": self.diff_ids,
            "size": self.size,
            "created": self.created,
        }

    def inspect(self) -> dict[str, Any]:
        out = self.summary()
        out.update({
            "config_digest": self.config_digest,
            "architecture": self.config.get("architecture"),
            "os": self.config.get("os"),
            "author": self.config.get("author"),
            "config": self.runtime_config,
            "history": self.config.get("history", []),
            "layer_descriptors": self.layers,
            "annotations": self.manifest.get("annotations", {}),
        })
        return out


def load_record(repo: Repository, rec: RefRecord) -> Image:
    repo = repo.for_name(rec.name)
    raw = repo.read_blob(rec.digest)
    manifest = oci.parse_manifest(raw)
    if oci.is_index(manifest):
        manifest, raw = _pick_platform(repo, manifest)
    cdesc = manifest["config"]
    config = oci.parse_json(repo.read_blob(cdesc["digest"]), "image config")
    oci.check_diff_ids((config.get("rootfs") or {}).get("diff_ids"), len(manifest["layers"]),
                       f"{rec}: image config")
    return Image(rec.name, rec.version, rec.digest, manifest, config, len(raw), cdesc["digest"])


def _pick_platform(repo: Repository, index: dict) -> tuple[dict, bytes]:
    arch = oci.go_arch()
    candidates = [d for d in index["manifests"]
                  if d.get("mediaType") in oci.MANIFEST_TYPES + (None,)]
    for d in candidates:
        p = d.get("platform") or {}
        if p.get("architecture") in (arch, None) and p.get("os", "linux") == "linux":
            raw = repo.read_blob(d["digest"])
            return oci.parse_manifest(raw), raw
    raise NotFound(f"image index has no manifest for linux/{arch}")


def load(repo: Repository, ref: Reference | str) -> Image:
    if isinstance(ref, str):
        ref = refmod.parse(ref)
    return load_record(repo, repo.resolve(ref))


def list_images(repo: Repository, name: str | None = None) -> list[Image]:
    out = []
    for rec in repo.list_refs(name):
        try:
            out.append(load_record(repo, rec))
        except (NotFound, CorruptImage):
            continue
    out.sort(key=lambda i: (i.name, refmod.version_key(i.version), i.version))
    return out


def stage(repo: Repository, config: dict | bytes, layers: list[dict],
          annotations: dict | None = None) -> tuple[str, bytes]:
    """Write the config and manifest blobs of an image whose layers are in `repo`; no ref.
    (manifest digest, manifest bytes). A config given as bytes is kept byte for byte.

    The one serialiser of new manifests (canonical JSON): build, commit, import and publish
    all come through here, so one content has one digest."""
    config_bytes = config if isinstance(config, bytes) else oci.canonical_json(config)
    parsed = oci.parse_json(config_bytes, "image config")
    oci.check_diff_ids((parsed.get("rootfs") or {}).get("diff_ids"), len(layers))
    repo.put_blob_bytes(digestmod.of_bytes(config_bytes), config_bytes)
    manifest_bytes = oci.canonical_json(oci.new_manifest(config_bytes, layers, annotations))
    oci.parse_manifest(manifest_bytes)
    mdigest = digestmod.of_bytes(manifest_bytes)
    repo.put_blob_bytes(mdigest, manifest_bytes)
    return mdigest, manifest_bytes


def publish(repo: Repository, name: str, version: str, config: dict | bytes,
            layers: list[dict], *, force: bool = False,
            annotations: dict | None = None) -> Image:
    """Write config and manifest blobs (layers must already be in `repo`), then the ref.

    Every door that makes an image (import, commit, build, squash) comes through here, so
    an image that could not run (a layer twice) is refused before anything is written."""
    try:
        mdigest, manifest_bytes = stage(repo, config, layers, annotations)
    except CorruptImage as e:
        raise CorruptImage(f"{name}:{version}: {e}") from None
    return publish_manifest(repo, name, version, manifest_bytes, force=force, digest=mdigest)


def publish_manifest(repo: Repository, name: str, version: str, manifest_bytes: bytes, *,
                     force: bool = False, digest: str | None = None) -> Image:
    """Point name:version at a manifest kept byte for byte (its config and layers must be
    in `repo` already): an imported image keeps the digest it had where it came from."""
    manifest = oci.parse_manifest(manifest_bytes)
    oci.check_image(manifest, f"{name}:{version}")
    mdigest = digest or digestmod.of_bytes(manifest_bytes)
    config = oci.parse_json(repo.read_blob(manifest["config"]["digest"]), "image config")
    oci.check_diff_ids((config.get("rootfs") or {}).get("diff_ids"), len(manifest["layers"]),
                       f"{name}:{version}: image config")
    repo.put_blob_bytes(mdigest, manifest_bytes)
    repo.put_ref(name, version, mdigest, expect=ANY if force else None)
    return Image(name, version, mdigest, manifest, config, len(manifest_bytes),
                 manifest["config"]["digest"])
