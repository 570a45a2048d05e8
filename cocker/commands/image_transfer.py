"""`cocker image push / pull / copy / search` (and `rm --repo`): images between repositories.

All of them are the one copy routine (`registry.copy`) between two `Repository` objects;
only which repo is the source and which the destination differs. REPO is a configured
repo name or a URL (see `registry.repos`); without --repo, the default repo.
"""

from __future__ import annotations

import contextlib
import os
import time

import click

from cocker.commands.image import image
from cocker.complete import image_refs
from cocker.output import dropped_devices_notice, human_size, print_json, print_table
from common.errors import CockerError, NotARepository, NotFound
from registry import transfer
from registry.oci import digest as digestmod
from registry.repo.repository import RefRecord


def remote_options(f):
    """Options every command that reaches a remote repo shares."""
    opts = [
        click.option("-i", "--identity", type=click.Path(dir_okay=False),
                     help="SSH private key to use (like ssh -i)."),
        click.option("--accept-new-host-key", "accept_new", is_flag=True,
                     help="Trust and record the host key of a host seen for the first time "
                          "(OpenSSH's accept-new). A CHANGED key is always refused."),
        click.option("--mode", type=click.Choice(["auto", "smart", "sftp"]), default=None,
                     help="ssh:// only: the smart protocol (srepo-server on the remote), "
                          "plain SFTP, or auto (smart when available)."),
        click.option("--remote-command", default=None, metavar="PATH",
                     help="ssh:// only: srepo-server's path on the remote."),
        click.option("-j", "--jobs", type=click.IntRange(1, 16), default=4, show_default=True,
                     help="Blobs transferred at once."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _ssh_kw(identity, accept_new, mode, remote_command, init=False) -> dict:
    kw = {"identity": identity, "accept_new": accept_new, "remote_command": remote_command}
    if init:
        kw["init"] = init
    if mode:
        kw["mode"] = mode
    return kw


def _is_legacy(ctx, spec: str | None, legacy: bool) -> bool:
    if legacy:
        return True
    from registry.transports.remotes import resolve_spec
    with contextlib.suppress(CockerError):
        return resolve_spec(spec, ctx.store)[1].legacy
    return False


def _report(ctx, verb: str, results: list, as_json: bool, started: float) -> None:
    if as_json:
        print_json([{"reference": r.ref, "digest": r.digest, "blobs_sent": r.blobs_sent,
                     "bytes_sent": r.bytes_sent, "blobs_skipped": r.blobs_skipped,
                     "published": r.published} for r in results])
        return
    for r in results:
        if r.blobs_sent:
            what = (f"{r.blobs_sent} blob(s), {human_size(r.bytes_sent)} sent, "
                    f"{r.blobs_skipped} already there")
        else:
            what = "up to date" if not r.published else "all blobs already there"
        click.echo(f"{verb} {r.ref}  {r.digest}  ({what})")
    if len(results) > 1 and not ctx.quiet:
        click.echo(f"{len(results)} image(s) in {time.monotonic() - started:.1f}s", err=True)


# push ------------------------------------------------------------------------------------
@image.command("push")
@click.argument("refs", nargs=-1, required=True, shell_complete=image_refs)
@click.option("--repo", "repo_spec", metavar="REPO", help="Configured repo name or URL.")
@click.option("--all-versions", is_flag=True, help="Push every version of the named images.")
@click.option("-f", "--force", is_flag=True, help="Replace a remote version with other content.")
@click.option("--init", is_flag=True, help="Create the repository if the path is not one.")
@click.option("--legacy", is_flag=True,
              help="Write a cocker 0.x `<name>:<version>.cockerimage` file instead.")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]),
              help="Recompress layers that are not this already (gzip for clients without "
                   "zstd); layers already right keep their digests.")
@click.option("--format", "fmt", type=click.Choice(["oci", "v2s2"]),
              help="Manifest format on the remote: OCI, or docker schema 2 for older "
                   "registries and engines (its layers are gzip).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@remote_options
@click.pass_obj
def push_cmd(ctx, refs, repo_spec, all_versions, force, init, legacy, compression, fmt,
             as_json, identity, accept_new, mode, remote_command, jobs) -> None:
    """Send image versions to a repository (only the blobs it lacks)."""
    started = time.monotonic()
    if _is_legacy(ctx, repo_spec, legacy):
        recs = transfer.select(ctx.store, refs, all_versions)
        _legacy_push(ctx, repo_spec, recs, force, _ssh_kw(identity, accept_new, None, None))
        return
    results = transfer.push(ctx.store, repo_spec, refs, all_versions=all_versions, force=force,
                            jobs=jobs, progress=ctx.progress(), compression=compression,
                            fmt=fmt,
                            **_ssh_kw(identity, accept_new, mode, remote_command, init))
    _report(ctx, "pushed", results, as_json, started)


# pull ------------------------------------------------------------------------------------
@image.command("pull")
@click.argument("refs", nargs=-1, required=True, shell_complete=image_refs)
@click.option("--repo", "repo_spec", metavar="REPO", help="Configured repo name or URL.")
@click.option("--all-versions", is_flag=True, help="Pull every version the repo has.")
@click.option("-f", "--force", is_flag=True, help="Replace a local version with other content.")
@click.option("--legacy", is_flag=True, help="The repo is a cocker 0.x *.cockerimage directory.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@remote_options
@click.pass_obj
def pull_cmd(ctx, refs, repo_spec, all_versions, force, legacy, as_json, identity, accept_new,
             mode, remote_command, jobs) -> None:
    """Fetch image versions from a repository (a bare name: its newest version)."""
    started = time.monotonic()
    store = ctx.store
    kw = _ssh_kw(identity, accept_new, mode, remote_command)
    if _is_legacy(ctx, repo_spec, legacy):
        _legacy_pull(ctx, repo_spec, refs, all_versions, force, kw, as_json)
        return
    try:
        results = transfer.pull(store, repo_spec, refs, all_versions=all_versions, force=force,
                                jobs=jobs, progress=ctx.progress(), **kw)
    except NotARepository:
        if not _legacy_pull(
                ctx, repo_spec, refs, all_versions, force, kw, as_json, probe=True):
            raise
        return
    _report(ctx, "pulled", results, as_json, started)


# copy ------------------------------------------------------------------------------------
@image.command("copy")
@click.argument("refs", nargs=-1, required=True, shell_complete=image_refs)
@click.option("--from", "src_spec", required=True, metavar="REPO",
              help="Source: a configured repo name, a URL, or `local` for the store.")
@click.option("--to", "dst_spec", required=True, metavar="REPO",
              help="Destination: a configured repo name, a URL, or `local` for the store.")
@click.option("--all-versions", is_flag=True, help="Copy every version of the named images.")
@click.option("-f", "--force", is_flag=True, help="Replace a destination version.")
@click.option("--init", is_flag=True, help="Create the destination repository if needed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@remote_options
@click.pass_obj
def copy_cmd(ctx, refs, src_spec, dst_spec, all_versions, force, init, as_json, identity,
             accept_new, mode, remote_command, jobs) -> None:
    """Copy image versions from one repository to another, e.g.
    `cocker image copy app:1.0 --from ssh://h/srv/repo --to /mnt/usb/repo`."""
    started = time.monotonic()
    results = transfer.copy_between(ctx.store, src_spec, dst_spec, refs,
                                    all_versions=all_versions, force=force, init=init, jobs=jobs,
                                    progress=ctx.progress(),
                                    **_ssh_kw(identity, accept_new, mode, remote_command))
    _report(ctx, "copied", results, as_json, started)


# search ----------------------------------------------------------------------------------
@image.command("search")
@click.argument("pattern", required=False)
@click.option("--repo", "repo_spec", metavar="REPO", help="Configured repo name or URL.")
@click.option("--legacy", is_flag=True, help="The repo is a cocker 0.x *.cockerimage directory.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@remote_options
@click.pass_obj
def search_cmd(ctx, pattern, repo_spec, legacy, as_json, identity, accept_new, mode,
               remote_command, jobs) -> None:
    """List the images a repository holds (PATTERN: a substring or a glob)."""
    kw = _ssh_kw(identity, accept_new, mode, remote_command)
    if _is_legacy(ctx, repo_spec, legacy):
        rows = _legacy_rows(ctx, repo_spec, kw, pattern)
    else:
        try:
            rows = transfer.search(ctx.store, repo_spec, pattern, **kw)
        except NotARepository:
            rows = _legacy_rows(ctx, repo_spec, kw, pattern)
    if as_json:
        print_json(rows)
        return
    print_table(["NAME", "VERSION", "DIGEST", "CREATED", "SIZE"],
                [[r["name"], r["version"],
                  digestmod.short(r["digest"]) if r.get("digest") else "(cockerimage)",
                  (r["created"] or "-")[:19].replace("T", " "), human_size(r["size"])]
                 for r in rows])


# rm --repo (called from `cocker image rm`) --------------------------------------------------
def remote_rm(ctx, refs: tuple[str, ...], repo_spec: str, all_versions: bool, **kw) -> None:
    """Delete refs in a remote repository (its blobs go at the repo's next gc)."""
    for line in transfer.remove_remote(ctx.store, repo_spec, refs, all_versions, **kw):
        click.echo(f"removed {line}")


# legacy cocker 0.x repos ---------------------------------------------------------------------
def _legacy_rows(ctx, repo_spec, kw, pattern) -> list[dict]:
    from registry.transports.remotes import open_legacy
    with open_legacy(repo_spec, ctx.store, **kw) as legacy:
        rows = [i.summary() for i in legacy.list()]
    return transfer.sort_rows([r for r in rows
                               if transfer.matches(pattern, r["name"], r["version"])])


def _legacy_pull(ctx, repo_spec, refs, all_versions, force, kw, as_json, probe=False) -> bool:
    from registry.transports.legacy import repo as legacy_srepo
    from registry.transports.remotes import open_legacy
    store = ctx.store
    with open_legacy(repo_spec, store, **kw) as legacy:
        available = legacy.list()
        if probe and not available:
            return False
        picks = []
        for text in refs:
            name, _, version = text.partition(":")
            if all_versions:
                found = [i for i in available if name in (i.raw_name, i.name)]
                if not found:
                    raise NotFound(f"{name} not found in {legacy.describe()}")
                picks += found
            else:
                picks.append(legacy.find(name, version or None))
        out = []
        for img in picks:
            tmp = store.new_tmp_path("cockerimage")
            try:
                with contextlib.closing(legacy.open(img)) as src, open(tmp, "wb") as f:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
                scan = legacy_srepo.scan_layer_tar(tmp)
                if scan.devices:
                    # C cocker's images carry /dev: made into an image as `image import`
                    # makes one (devices left out), not kept byte for byte
                    from builder import importers
                    from builder.archive_formats import COCKERIMAGE
                    result = importers.import_image(store, tmp, f"{img.name}:{img.version}",
                                                    fmt=COCKERIMAGE, force=force)
                    dropped_devices_notice(f"{img.name}:{img.version}", result.dropped_devices)
                else:
                    result = legacy_srepo.import_file(store, tmp, img.name, img.version,
                                                      created=img.mtime, force=force,
                                                      diff_id=scan.diff_id)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            out.append({"reference": f"{img.name}:{img.version}", "digest": result.digest,
                        "file": img.filename, "bytes_sent": img.size})
            if not as_json:
                click.echo(f"pulled {img.name}:{img.version}  {result.digest}  "
                           f"(from {img.filename}, {human_size(img.size)})")
        if as_json:
            print_json(out)
    return True


def _legacy_push(ctx, repo_spec, recs, force, kw) -> None:
    """Write each image as a cocker 0.x .cockerimage (a gzip tar of its whole tree)."""
    from registry.oci import manifest as oci
    from registry.repo import image as imagemod
    from registry.transports.remotes import open_legacy
    store = ctx.store
    with open_legacy(repo_spec, store, **kw) as legacy:
        for rec in recs:
            img = imagemod.load_record(store, rec)
            layers = img.layers
            tmp = None
            try:
                with contextlib.ExitStack() as stack:
                    if len(layers) == 1 and oci.COMPRESSION_OF.get(layers[0]["mediaType"]) == "gzip":
                        # The one gzip layer already is a cockerimage: send it as stored.
                        src = stack.enter_context(store.open_blob(layers[0]["digest"]))
                    else:
                        tmp = store.new_tmp_path("cockerimage") + ".cockerimage"
                        _export_cockerimage(ctx, rec, tmp)
                        src = stack.enter_context(open(tmp, "rb"))
                    fn = legacy.upload(rec.name, rec.version, src, force=force)
            finally:
                if tmp:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            click.echo(f"pushed {rec} as {fn} to {legacy.describe()}")


def _export_cockerimage(ctx, rec: RefRecord, dest: str) -> None:
    """Flatten the image into one gzip tar: builder's exporter, in this process."""
    from builder import exporters  # only here: pushes that are not --legacy never load it
    exporters.export_image(ctx.store, f"{rec.name}:{rec.version}", dest, "cockerimage")
