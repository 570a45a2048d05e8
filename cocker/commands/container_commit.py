"""`cocker container commit NAME REF` (alias `to-image`): a container's changes -> new version."""

from __future__ import annotations

import click

from cocker.commands.container import container
from cocker.complete import container_names
from cocker.output import print_json


@container.command("commit")
@click.argument("name", shell_complete=container_names)
@click.argument("ref")
@click.option("-m", "--message", help="Comment recorded in the new version's history.")
@click.option("--author", help="Author recorded in the config and history (e.g. 'Ann <a@x.org>').")
@click.option("-c", "--change", "changes", multiple=True, metavar="INSTR",
              help="Config edit: 'CMD ...', 'ENTRYPOINT ...', 'ENV K=V', 'WORKDIR /p', "
                   "'LABEL k=v', 'USER u', 'EXPOSE 80/tcp' (repeatable).")
@click.option("--pause", is_flag=True, help="Freeze a running container while its changes are read.")
@click.option("--bump", type=click.Choice(["patch", "minor", "major"]),
              help="REF is a bare name: make the next x.y.z after its newest version.")
@click.option("-f", "--force", is_flag=True, help="Replace REF if it exists.")
@click.option("--allow-empty", is_flag=True,
              help="Make a new version even when nothing changed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def commit_cmd(ctx, name: str, ref: str, message: str | None, author: str | None,
               changes: tuple[str, ...], pause: bool, bump: str | None, force: bool,
               allow_empty: bool, as_json: bool) -> None:
    """Make the container's filesystem changes ONE new layer on top of its image, published
    as REF. The container and its image stay as they are."""
    from builder import commit as commitmod
    res = commitmod.commit_to(ctx.store, name, ref, bump=bump, change_texts=changes,
                              message=message, author=author, pause=pause, force=force,
                              allow_empty=allow_empty, progress=_progress(ctx))
    if as_json:
        print_json(res.summary())
        return
    s = res.summary()
    click.echo(f"{s['reference']}  {s['digest']}")


container.add_command(commit_cmd, "to-image")


def _progress(ctx):
    """A progress reporter only when bars will show (it costs an extra walk of the tree)."""
    p = ctx.progress()
    return p if p.enabled else None
