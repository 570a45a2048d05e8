"""`cocker image build|edit|squash`: making new image versions (builder/)."""

from __future__ import annotations

import click

from cocker.commands.image import image
from cocker.complete import image_refs
from cocker.output import print_json

BUMP = click.Choice(["patch", "minor", "major"])


def _err(msg: str) -> None:
    click.echo(msg, err=True)


@image.command("build")
@click.argument("context", default=".", type=click.Path(file_okay=False))
@click.option("-f", "--file", "recipe_path", type=click.Path(dir_okay=False),
              help="Recipe (default CONTEXT/cocker-build.toml).")
@click.option("-t", "--tag", help="name or name:version to publish (default: the recipe's tag).")
@click.option("--bump", type=BUMP, help="Publish the next x.y.z after the name's newest version.")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V",
              help="Override an [args] default (repeatable).")
@click.option("--no-cache", is_flag=True, help="Run every step again.")
@click.option("--force", "force", is_flag=True, help="Replace the target version if it exists.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {reference, digest, layers, cached_steps} (step logs go to stderr).")
@click.pass_obj
def build_cmd(ctx, context: str, recipe_path: str | None, tag: str | None, bump: str | None,
              build_args: tuple[str, ...], no_cache: bool, force: bool, as_json: bool) -> None:
    """Build an image from a declarative recipe (TOML): `from` an image version, then ordered
    `run`/`copy`/config steps, cached step by step. Exit 0 only when the image was published."""
    from builder import build as buildmod
    # A failing step's output was logged as it came; BuildFailed then exits non-zero.
    res = buildmod.build_recipe(ctx.store, context, recipe_path=recipe_path, tag=tag, bump=bump,
                                build_args=build_args, no_cache=no_cache, force=force,
                                log=_err if as_json else click.echo)
    s = res.summary()
    if as_json:
        print_json(s)
        return
    click.echo(f"{s['reference']}  {s['digest']}  ({res.cached_steps}/{res.steps} steps cached)")


@image.command("edit")
@click.argument("ref", shell_complete=image_refs)
@click.option("--to", "to", metavar="REF2", help="Publish as REF2 (name:version, or a name "
              "with --bump) instead of the next patch version of REF's name.")
@click.option("--bump", type=BUMP, help="Which part of the version to bump (default patch).")
@click.option("--keep", is_flag=True, help="Keep the container afterwards (for later commits).")
@click.option("--shell", default="/bin/sh", show_default=True, help="Shell to run.")
@click.option("--name", help="Container name (default edit-IMAGE-PID).")
@click.option("-m", "--message", help="Comment for the new version's history.")
@click.option("--author", help="Author recorded in the new version.")
@click.option("--net", default="bridge", show_default=True,
              help="Network of the edit container (as `container run`): bridge, host, none "
                   "or a named network.")
@click.option("--force", is_flag=True, help="Replace the target version if it exists.")
@click.pass_obj
def edit_cmd(ctx, ref: str, to: str | None, bump: str | None, keep: bool, shell: str,
             name: str | None, message: str | None, author: str | None, net: str,
             force: bool) -> None:
    """Open a shell in a container made from REF; when it exits, commit the changes as the
    next version (or say there were none) and remove the container unless --keep."""
    from builder import edit as editmod
    res = editmod.edit(ctx.store, ref, to=to, bump=bump, keep=keep, shell=shell, name=name,
                       message=message, author=author, force=force, net=net, log=_err)
    if res.detached:
        click.echo(f"detached: container {res.container} keeps running; commit it with "
                   f"cocker container commit --pause {res.container} NAME --bump patch")
        return
    if res.result is None:
        click.echo("no changes; nothing committed")
    else:
        s = res.result.summary()
        click.echo(f"{s['reference']}  {s['digest']}")
    if res.kept:
        click.echo(f"container {res.container} kept: commit later changes with "
                   f"cocker container commit {res.container} NAME --bump patch")


@image.command("squash")
@click.argument("ref", shell_complete=image_refs)
@click.argument("newref")
@click.option("--since", metavar="BASE", help="Keep BASE's layers; squash only those above it.")
@click.option("--bump", type=BUMP, help="NEWREF is a bare name: make the next x.y.z.")
@click.option("-m", "--message", help="Comment for the squashed layer's history entry.")
@click.option("--force", is_flag=True, help="Replace NEWREF if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def squash_cmd(ctx, ref: str, newref: str, since: str | None, bump: str | None,
               message: str | None, force: bool, as_json: bool) -> None:
    """Merge REF's layers (all, or those above BASE) into one, published as NEWREF."""
    from builder import squash as squashmod
    img = squashmod.squash_to(ctx.store, ref, newref, bump=bump, since=since, force=force,
                              message=message, progress=_progress(ctx))
    s = img.summary()
    if as_json:
        print_json({k: s[k] for k in ("reference", "digest", "layers")})
        return
    click.echo(f"{s['reference']}  {s['digest']}  ({len(s['layers'])} layer(s))")


def _progress(ctx):
    """A progress reporter only when bars will show (it costs an extra walk of the tree)."""
    p = ctx.progress()
    return p if p.enabled else None
