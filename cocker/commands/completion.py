"""`cocker completion bash|zsh`: the shell script that completes cocker's commands, options
and arguments (click's own completion, driven by _COCKER_COMPLETE)."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL. Load it with
    `source <(cocker completion bash)` (in ~/.bashrc), or for zsh
    `cocker completion zsh > "${fpath[1]}/_cocker"`."""
    root = ctx.find_root()
    prog = root.info_name or "cocker"
    cls = get_completion_class(shell)
    if cls is None:  # click ships both; a Choice keeps anything else out
        raise click.UsageError(f"no completion for {shell}")
    var = f"_{prog.replace('-', '_').upper()}_COMPLETE"
    click.echo(cls(root.command, {}, prog, var).source())
