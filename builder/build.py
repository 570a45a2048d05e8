"""Scripted builds: run a recipe (builder.recipe) against an image version, for CI.

Each `run` step runs in a throwaway build container (network "none" unless the step says
"host", hostname "build", no volumes) created from an unnamed intermediate image (config +
manifest blobs, no ref); its overlay upper dir becomes the step's layer. Each `copy` step
stages files from the build context into a directory packed as the step's layer (no
container). Config steps only change the config (an empty_layer history entry).

Cache: a step's key is sha256(parent diff_id chain, the runtime config so far, the step's
content after ${ARG} substitution, the copied files' names/modes/digests, the args it
used); a hit reuses the layer and runs nothing. Times: with SOURCE_DATE_EPOCH every
`created` is that instant; without it a layer's history entry keeps the time the layer was
first built (stored with the cache entry) and the config's `created` is the newest of
those, so a fully cached rebuild gives the very same image digest.

A failing step raises BuildFailed after removing its container: no ref is written, and the
only leftovers are the blobs and cache entries of the steps that worked (the cache).
"""

from __future__ import annotations

import copy as copymod
import hashlib
import os
import posixpath
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from builder import cache as cachemod
from builder import changes as changesmod
from builder import meta, treediff, versioning
from builder import recipe as recipemod
from builder.recipe import Recipe, Step
from builder.versioning import NewVersion
from common.errors import CockerError, NotFound, UsageError
from registry.layer import tar_codec as layer_tar
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import image as imagemod
from registry.repo.image import Image

BUILD_HOSTNAME = "build"
CACHE_VERSION = 1


class BuildFailed(CockerError):
    """A step failed; nothing was published."""

    def __init__(self, msg: str, exit_code: int = 1, output: bytes = b"") -> None:
        super().__init__(msg)
        self.step_exit_code = exit_code
        self.output = output


@dataclass
class BuildResult:
    image: Image
    steps: int
    cached_steps: int
    built_steps: int
    new_layers: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"reference": f"{self.image.name}:{self.image.version}",
                "digest": self.image.digest,
                "layers": [d["digest"] for d in self.image.layers],
                "cached_steps": self.cached_steps,
                "built_steps": self.built_steps}


@dataclass
class _State:
    layers: list[dict]
    diff_ids: list[str]
    config: dict
    history: list[dict]           # entries added by this build; "created" filled in at the end
    times: list[float]            # build times of the layers this build added (cached or new)
    new_layers: list[tuple[dict, str]] = field(default_factory=list)


def parse_build_args(items: Iterable[str]) -> dict[str, str]:
    """`--build-arg K=V` values as a dict (a later K wins)."""
    args: dict[str, str] = {}
    for a in items:
        k, sep, v = a.partition("=")
        if not sep or not k:
            raise UsageError(f"--build-arg {a!r}: expected KEY=VALUE")
        args[k] = v
    return args


def build_recipe(store, context: str, *, recipe_path: str | None = None, tag: str | None = None,
                 bump: str | None = None, build_args: Iterable[str] = (), no_cache: bool = False,
                 force: bool = False, log: Callable[[str], None] = lambda s: None) -> BuildResult:
    """What `cocker image build` does: load the recipe (CONTEXT/cocker-build.toml unless
    recipe_path), pick the version to publish (tag, else the recipe's tag; bump replaces its
    version), build it."""
    path = recipe_path or os.path.join(context, "cocker-build.toml")
    recipe = recipemod.load(path, parse_build_args(build_args))
    ref = tag or recipe.tag
    if not ref:
        raise UsageError(f"{path}: no tag in the recipe; give --tag NAME[:VERSION]")
    if bump and not tag:
        ref = refmod.parse(ref).name
    target = versioning.target(store, ref, bump, force=force)
    return build(store, recipe, context, target, no_cache=no_cache, force=force, log=log)


def build(store, recipe: Recipe, context: str, target: NewVersion, *, no_cache: bool = False,
          force: bool = False, log: Callable[[str], None] = lambda s: None,
          progress: Any = None) -> BuildResult:
    ctx = os.path.realpath(context)
    if not os.path.isdir(ctx):
        raise NotFound(f"build context {context} is not a directory")
    base = imagemod.load(store, recipe.base)
    sde = meta.source_date_epoch()
    cache = cachemod.BuildCache(store)
    st = _State(list(base.layers), list(base.diff_ids), copymod.deepcopy(base.config), [], [])
    cached = built = 0
    n = len(recipe.steps)
    for step in recipe.steps:
        log(f"STEP {step.index}/{n}: {step.describe()}")
        if step.kind == "config":
            assert step.change is not None
            st.config = changesmod.apply(st.config, [step.change])
            st.history.append(meta.history_entry("", step.describe(), author=recipe.author,
                                                 empty_layer=True))
            continue
        files = _copy_plan(ctx, step, st.config, recipe.path) if step.kind == "copy" else []
        k = cachemod.key(CACHE_VERSION, st.diff_ids, st.config.get("config") or {},
                         step.content(), step.args_used,
                         [f[1:] for f in files], sde)
        entry = None if no_cache else cache.get(k)
        if entry is not None:
            log("  (cached)")
            cached += 1
        else:
            t0 = time.time()
            if step.kind == "copy":
                packed = _copy_layer(store, st, step, files, sde)
            else:
                packed = _run_layer(store, base, st, step, log)
            entry = {"layer": packed.descriptor() if packed else None,
                     "diff_id": packed.diff_id if packed else None, "built": t0}
            cache.put(k, entry)
            built += 1
        empty = entry.get("layer") is None
        st.history.append(meta.history_entry("", step.describe(), author=recipe.author,
                                             empty_layer=empty))
        if not empty:
            st.layers.append(entry["layer"])
            st.diff_ids.append(entry["diff_id"])
            st.new_layers.append((entry["layer"], entry["diff_id"]))
            st.times.append(float(entry.get("built") or time.time()))
    if recipe.squash and len(st.new_layers) > 1:
        _squash_new(store, base, st, cache, no_cache, sde, recipe.author, log)
    img = _publish(store, base, recipe, st, target, sde, force)
    return BuildResult(img, n, cached, built, [d["digest"] for d, _ in st.new_layers])


def _publish(store, base: Image, recipe: Recipe, st: _State, target: NewVersion,
             sde: int | None, force: bool) -> Image:
    if sde is not None:
        created = meta.timestamp(sde)
    elif st.times:
        created = meta.timestamp(max(st.times))
    else:
        created = base.created or meta.timestamp()
    times = iter(st.times)
    for h in st.history:
        if sde is None and not h.get("empty_layer"):
            h["created"] = meta.timestamp(next(times))
        else:
            h["created"] = created
    config = meta.derive_config(st.config, st.diff_ids, st.history, created=created,
                                author=recipe.author)
    config = changesmod.apply(config, recipe.config)
    return imagemod.publish(store, target.name, target.version, config, st.layers, force=force,
                            annotations=meta.parent_annotations(
                                base.digest, f"{base.name}:{base.version}"))


def _squash_new(store, base: Image, st: _State, cache, no_cache: bool, sde: int | None,
                author: str | None, log: Callable[[str], None]) -> None:
    from builder import squash as squashmod
    layers = [d for d, _ in st.new_layers]
    diff_ids = [i for _, i in st.new_layers]
    log(f"squashing {len(layers)} layers into one")
    k = cachemod.key(CACHE_VERSION, "squash", base.diff_ids, diff_ids, sde)
    entry = None if no_cache else cache.get(k)
    if entry is None or entry.get("layer") is None:
        desc, diff_id = squashmod.squash_layers(store, layers, diff_ids,
                                                keep_whiteouts=bool(base.diff_ids))
        entry = {"layer": desc, "diff_id": diff_id, "built": max(st.times)}
        cache.put(k, entry)
    for h in st.history:
        h["empty_layer"] = True
    st.history.append(meta.history_entry("", f"squash of {len(layers)} build layers",
                                         author=author))
    st.layers = list(base.layers) + [entry["layer"]]
    st.diff_ids = list(base.diff_ids) + [entry["diff_id"]]
    st.new_layers = [(entry["layer"], entry["diff_id"])]
    st.times = [float(entry.get("built") or max(st.times))]


# run steps ------------------------------------------------------------------------------
def _stage_image(store, config: dict, layers: list[dict]) -> str:
    """Config and manifest blobs for an intermediate image (no ref: gc takes them later)."""
    return imagemod.stage(store, config, layers)[0]


def _run_layer(store, base: Image, st: _State, step: Step, log: Callable[[str], None]):
    from builder.commit import pack_container
    from runtime.container import lifecycle, record
    from runtime.container.spec import ContainerSpec
    cfg = oci.new_config(st.diff_ids, base=st.config, history=[])
    mdigest = _stage_image(store, cfg, st.layers)
    name = f"build-{os.getpid()}-{step.index}-{uuid.uuid4().hex[:8]}"
    spec = ContainerSpec(
        image=f"{base.name}@{mdigest}", name=name, command=list(step.run or []),
        entrypoint=[], hostname=BUILD_HOSTNAME, net=step.net,
        env=[f"{k}={v}" for k, v in step.env.items()],
        labels={"org.cocker.build": "1"})
    try:
        code, output = lifecycle.run_captured(store, spec, rm=False)
        text = output.decode("utf-8", "replace").rstrip("\n")
        if text:
            log("\n".join("  | " + line for line in text.split("\n")))
        if code != 0:
            raise BuildFailed(f"step {step.index} ({step.describe()}) failed with exit code "
                              f"{code}; nothing was published", code, output)
        c = record.load(store, name)
        packed, _ = pack_container(store, c)
        return packed
    finally:
        try:
            lifecycle.remove(store, name, force=True)
        except NotFound:
            pass


# copy steps -----------------------------------------------------------------------------
def _copy_plan(ctx: str, step: Step, config: dict,
               path: str) -> list[tuple[str, str, str, int, str]]:
    """(source path, destination rel path, type, mode, content digest or link target),
    sorted by destination; refuses sources outside the context (symlinks included)."""
    dest = step.dest
    if not dest.startswith("/"):
        wd = (config.get("config") or {}).get("WorkingDir") or "/"
        dest = posixpath.join(wd, dest)
    into_dir = step.dest.endswith("/") or len(step.sources) > 1
    dest = posixpath.normpath(dest).lstrip("/")
    plan: list[tuple[str, str, str, int, str]] = []
    for src in step.sources:
        norm = os.path.normpath(src)
        real = os.path.realpath(os.path.join(ctx, norm))
        if norm == ".." or norm.startswith("../") or not (real == ctx
                                                            or real.startswith(ctx + os.sep)):
            raise UsageError(f"{path}:{step.line}: step {step.index}: copy source {src!r} is outside the build "
                             "context")
        if not os.path.lexists(os.path.join(ctx, norm)) or not os.path.exists(real):
            raise NotFound(f"{path}:{step.line}: step {step.index}: copy source {src!r} not found in the build "
                           f"context")
        if os.path.isdir(real):
            top = dest
            if top:
                plan.append((real, top, "topdir", os.stat(real).st_mode & 0o7777, ""))
            for dirpath, dirnames, filenames in os.walk(real):
                dirnames.sort()
                for n in sorted(dirnames + filenames):
                    p = os.path.join(dirpath, n)
                    rel = posixpath.join(top, os.path.relpath(p, real).replace(os.sep, "/"))
                    plan.append(_entry(p, rel, step))
        else:
            rel = posixpath.join(dest, os.path.basename(real)) if into_dir else dest
            if not rel:
                raise UsageError(f"step {step.index}: cannot copy a file onto /")
            plan.append(_entry(real, rel, step))
    plan.sort(key=lambda e: e[1])
    return plan


def _entry(path: str, rel: str, step: Step) -> tuple[str, str, str, int, str]:
    st = os.lstat(path)
    mode = st.st_mode & 0o7777
    if stat.S_ISLNK(st.st_mode):
        return (path, rel, "link", 0o777, os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return (path, rel, "dir", mode, "")
    if stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return (path, rel, "file", mode, "sha256:" + h.hexdigest())
    raise UsageError(f"step {step.index}: {path} is not a regular file, directory or symlink")


def _copy_layer(store, st: _State, step: Step, plan: list, sde: int | None):
    from runtime.fs import layers as layertrees
    pseudo = Image("build", "_", "", {"layers": st.layers}, {"rootfs": {"diff_ids": st.diff_ids}})
    trees = layertrees.ensure_layers(store, pseudo)
    stage = tempfile.mkdtemp(prefix="copy.", dir=store.tmp_dir)
    uid, gid = step.owner
    now = sde if sde is not None else time.time()
    try:
        os.chmod(stage, 0o755)
        dirs_meta: list[tuple[str, int, int, int, float]] = []
        for src, rel, kind, mode, _ in plan:
            target = os.path.join(stage, rel)
            _parents(stage, rel, trees, step, dirs_meta, now)
            if kind in ("dir", "topdir"):
                if os.path.isdir(target):
                    continue
                os.mkdir(target)
                lower = _lookup(trees, rel) if kind == "topdir" else None
                if lower is not None and stat.S_ISDIR(lower.st_mode):
                    # copying into an existing directory keeps its attributes (/tmp stays 1777)
                    dirs_meta.append((target, stat.S_IMODE(lower.st_mode), lower.st_uid,
                                      lower.st_gid, lower.st_mtime))
                else:
                    dirs_meta.append((target, mode, uid, gid, os.stat(src).st_mtime))
            elif kind == "link":
                os.symlink(os.readlink(src), target)
                os.lchown(target, uid, gid)
            else:
                lower = _lookup(trees, rel)
                if lower is not None and stat.S_ISDIR(lower.st_mode):
                    # `copy = ["f", "/tmp"]`: /tmp is a directory in the image, copy into it
                    inner = f"{rel}/{os.path.basename(src)}"
                    _parents(stage, inner, trees, step, dirs_meta, now)
                    target = os.path.join(stage, inner)
                shutil.copyfile(src, target)
                os.chown(target, uid, gid)
                os.chmod(target, step.mode if step.mode is not None else mode)
                s = os.stat(src)
                os.utime(target, (s.st_mtime, s.st_mtime))
        for path, mode, u, g, mtime in reversed(dirs_meta):   # children first: mtimes stay
            os.chown(path, u, g)
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
        return layer_tar.pack_into(store, stage, source_date_epoch=sde)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _parents(stage: str, rel: str, trees: list[str], step: Step, dirs_meta: list,
             now: float) -> None:
    """Create rel's missing parent dirs in the staging tree with the image's own attributes
    (so copying into /tmp keeps it 1777), refusing to go through a symlink of the image."""
    parts = rel.split("/")[:-1]
    cur = ""
    for p in parts:
        cur = f"{cur}/{p}" if cur else p
        target = os.path.join(stage, cur)
        if os.path.isdir(target):
            continue
        lower = _lookup(trees, cur)
        if lower is not None and stat.S_ISLNK(lower.st_mode):
            raise UsageError(f"step {step.index}: copy destination /{rel} goes through the "
                             f"symlink /{cur} in the image; copy to the real path")
        if lower is not None and not stat.S_ISDIR(lower.st_mode):
            raise UsageError(f"step {step.index}: copy destination /{rel}: /{cur} is a file "
                             "in the image")
        os.mkdir(target)
        if lower is not None:
            dirs_meta.append((target, stat.S_IMODE(lower.st_mode), lower.st_uid, lower.st_gid,
                              lower.st_mtime))
        else:
            dirs_meta.append((target, 0o755, 0, 0, now))


def _lookup(trees_bottom_top: list[str], rel: str) -> os.stat_result | None:
    """lstat of `rel` in the image the overlay-form layer trees make up, or None."""
    comps = [c for c in rel.split("/") if c]
    if not comps:
        return None
    for tree in reversed(trees_bottom_top):
        cur, opaque = tree, False
        for i, c in enumerate(comps):
            cur = os.path.join(cur, c)
            st = _lstat(cur)
            if st is None:
                if opaque:
                    return None                   # an opaque dir here hides the lower layers
                break
            if _is_wh(st):
                return None                       # whited out here
            if i == len(comps) - 1:
                return st
            if not stat.S_ISDIR(st.st_mode):
                return None                       # a non-dir hides everything below it
            opaque = opaque or _opaque(cur)
    return None


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, treediff.OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lstat(p: str) -> os.stat_result | None:
    try:
        return os.lstat(p)
    except FileNotFoundError:
        return None


def _is_wh(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
