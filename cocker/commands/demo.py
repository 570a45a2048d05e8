"""`cocker demo`: the README's first command (builder.demo.tour does the work)."""

from __future__ import annotations

import click

from builder.demo.tour import run_demo
from cocker.context import Context


class ClickNarrator:
    def title(self, text: str) -> None:
        click.secho(text, fg="cyan")

    def command(self, text: str) -> None:
        click.secho(text, bold=True)

    def output(self, text: str) -> None:
        click.echo(text)

    def result(self, text: str) -> None:
        click.secho(text, fg="green", bold=True)


@click.command()
@click.option("--keep", is_flag=True, help="Keep the demo images afterwards.")
@click.pass_obj
def demo(ctx: Context, keep: bool) -> None:
    """Build a busybox test image, version it, boot it, build on it, and round-trip it over
    SSH (a throwaway sshd and srepo-server on 127.0.0.1), showing the bytes moved."""
    run_demo(ClickNarrator(), ctx.home, keep)
    click.secho("demo finished: all steps passed", fg="green")
