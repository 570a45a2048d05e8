"""`srepo-server`'s full command line (click): one repository storage, three doors (stdio,
SSH, HTTP), plus gc. `srepo_server.main` is the entry point; it runs a plain `--stdio`
invocation without loading this module.

Door implementations live in their own modules; this file only parses options.
    --stdio                    srepo_server.stdio.serve_stdio(root, access)      (smart protocol)
    --ssh HOST:PORT            srepo_server.ssh_door.serve(root, addr, host_key, authorized_keys, ...)
    --http HOST:PORT           srepo_server.http_door.serve(root, addr, ...)
"""

from __future__ import annotations

import sys

import click

from srepo_server import gc_schedule
from srepo_server.http_cli import gc_command, http_options, passwd_command, run_http
from srepo_server.ssh_cli import run_ssh, ssh_options, stdio_access


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False), help="Repository directory.")
@click.option("--stdio", is_flag=True, help="Speak the smart protocol on stdin/stdout "
              "(what `ssh host srepo-server --stdio --root PATH` runs).")
@click.option("--gc-interval", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Run gc every this many seconds while serving --ssh/--http (0: never).")
@click.option("--gc-grace", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="The periodic gc spares unreferenced blobs younger than this (pushes in "
              "flight lease what they rely on, so 0 is safe too).")
@http_options
@ssh_options
@click.pass_context
def cli(ctx: click.Context, root: str | None, stdio: bool, gc_interval: float, gc_grace: float,
        **http_opts) -> None:
    """cocker's native repository server."""
    ctx.ensure_object(dict)
    ctx.obj["root"] = root
    if ctx.invoked_subcommand is None:
        if gc_interval and root and not stdio and (http_opts.get("ssh") or http_opts.get("http")):
            gc_schedule.start(root, gc_interval, gc_grace)
        if stdio:
            if not root:
                raise click.UsageError("--stdio needs --root PATH")
            from srepo_server.stdio import serve_stdio
            serve_stdio(root, stdio_access(http_opts))
            return
        if http_opts.get("ssh"):
            run_ssh(root, http_opts, background=bool(http_opts.get("http")))
            if not http_opts.get("http"):
                return
        if http_opts.get("http"):
            run_http(root, http_opts)
            return
        click.echo(ctx.get_help())


cli.add_command(gc_command)
cli.add_command(passwd_command)


def main(argv: list[str] | None = None) -> None:
    from common.errors import CockerError
    from common.exit_codes import exit_code_for
    try:
        cli.main(args=argv, prog_name="srepo-server", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except CockerError as e:
        click.echo(f"srepo-server: error: {e}", err=True)
        sys.exit(exit_code_for(e))
    except KeyboardInterrupt:
        sys.exit(130)
