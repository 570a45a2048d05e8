"""`cocker image ...`: the local store's images.

Other modules attach their commands to this group (import/export, transfer, build);
they are listed in EXTENSIONS and loaded with it.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from cocker.complete import image_refs
from cocker.output import human_size, print_json, print_table
from registry.oci import digest as digestmod
from registry.oci import reference as refmod
from registry.repo import image as imagemod
from registry.repo import local_refs

EXTENSIONS = ("cocker.commands.image_io", "cocker.commands.image_transfer",
              "cocker.commands.image_build")


@click.group()
def image() -> None:
    """Versioned images in the local store."""


@image.command("ls")
@click.argument("name", required=False, shell_complete=image_refs)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--digests", is_flag=True, help="Show manifest digests.")
@click.pass_obj
def ls_cmd(ctx, name: str | None, as_json: bool, digests: bool) -> None:
    """List images (all versions, oldest version first)."""
    if name:
        refmod.validate_name(name)
    imgs = imagemod.list_images(ctx.store, name)
    if as_json:
        print_json([i.summary() for i in imgs])
        return
    headers = ["NAME", "VERSION", "DIGEST" if digests else "ID", "CREATED", "SIZE"]
    rows = [[i.name, i.version, i.digest if digests else digestmod.short(i.digest),
             i.created[:19].replace("T", " ") or "-", human_size(i.size)] for i in imgs]
    print_table(headers, rows)


@image.command("inspect")
@click.argument("ref", shell_complete=image_refs)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def inspect_cmd(ctx, ref: str, as_json: bool) -> None:
    """Show an image version (a bare name: the newest)."""
    img = imagemod.load(ctx.store, ref)
    info = img.inspect()
    if as_json:
        print_json(info)
        return
    click.echo(f"Reference:  {info['reference']}")
    click.echo(f"Digest:     {info['digest']}")
    click.echo(f"Created:    {info['created'] or '-'}")
    click.echo(f"Platform:   {info['os']}/{info['architecture']}")
    click.echo(f"Size:       {human_size(info['size'])}")
    cfg = info["config"]
    for key in ("Entrypoint", "Cmd", "WorkingDir", "Env", "Labels"):
        if cfg.get(key):
            click.echo(f"{key + ':':<12}{cfg[key]}")
    click.echo("Layers:")
    for layer, diff in zip(img.layers, img.diff_ids, strict=True):
        click.echo(f"  {layer['digest']}  {human_size(layer['size']):>9}  "
                   f"{layer['mediaType'].rsplit('.', 1)[-1]}  (diff {digestmod.short(diff)})")


@image.command("history")
@click.argument("ref", shell_complete=image_refs)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def history_cmd(ctx, ref: str, as_json: bool) -> None:
    """Show how an image was made, newest step first."""
    img = imagemod.load(ctx.store, ref)
    hist = list(img.config.get("history") or [])
    if as_json:
        print_json(hist)
        return
    layers = iter(img.layers)
    rows = []
    for h in hist:
        layer = None if h.get("empty_layer") else next(layers, None)
        rows.append([(h.get("created") or "-")[:19].replace("T", " "),
                     h.get("author") or "-",
                     human_size(layer["size"]) if layer else "0 B",
                     (h.get("created_by") or h.get("comment") or "")[:70]])
    print_table(["CREATED", "AUTHOR", "SIZE", "CREATED BY"], list(reversed(rows)))


@image.command("tag")
@click.argument("src", shell_complete=image_refs)
@click.argument("dst")
@click.option("-f", "--force", is_flag=True, help="Replace DST if it exists.")
@click.pass_obj
def tag_cmd(ctx, src: str, dst: str, force: bool) -> None:
    """Give an image version another name:version (cocker's `version`/`copy_image`)."""
    target, digest = local_refs.tag(ctx.store, src, dst, force=force)
    click.echo(f"{target}  {digest}")


@image.command("rm")
@click.argument("refs", nargs=-1, required=True, shell_complete=image_refs)
@click.option("-f", "--force", is_flag=True,
              help="Remove even when a container was created from it (the container keeps working).")
@click.option("--all-versions", is_flag=True, help="Remove every version of the named images.")
@click.option("--repo", "repo_spec", metavar="REPO",
              help="Remove the versions from this remote repository instead.")
@click.pass_obj
def rm_cmd(ctx, refs: tuple[str, ...], force: bool, all_versions: bool,
           repo_spec: str | None) -> None:
    """Remove image versions from the local store (blobs go at the next gc)."""
    if repo_spec:
        from cocker.commands.image_transfer import remote_rm
        remote_rm(ctx, refs, repo_spec, all_versions)
        return
    for rec in local_refs.remove(ctx.store, refs, all_versions=all_versions, force=force):
        click.echo(f"removed {rec}")


@image.command("gc")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--grace", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Spare blobs younger than this many seconds (uploads in flight).")
@click.pass_obj
def gc_cmd(ctx, dry_run: bool, grace: float) -> None:
    """Drop blobs and layer trees that no image or container uses."""
    from runtime.fs import store_gc
    done = store_gc.collect(ctx.store, grace=grace, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {done.blobs} blob(s), {human_size(done.bytes)}; "
               f"{done.layer_trees} layer tree(s)")


@image.command("fsck")
@click.option("--fix", is_flag=True,
              help="Narrow files and directories other users could read to 0600/0700.")
@click.pass_obj
def fsck_cmd(ctx, fix: bool) -> None:
    """Verify every blob against its digest, every ref's completeness, the sizes and media
    types its descriptors state, and that other users cannot read the store."""
    if fix:
        for p in ctx.store.permission_problems(fix=True):
            click.echo(p)
    problems = ctx.store.fsck()
    for p in problems:
        click.echo(p)
    if problems:
        raise click.exceptions.Exit(1)
    click.echo(f"ok: {len(ctx.store.all_blobs())} blob(s), {len(ctx.store.list_refs())} ref(s)")


for _mod in EXTENSIONS:
    if importlib.util.find_spec(_mod) is not None:
        importlib.import_module(_mod)
