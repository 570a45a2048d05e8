"""`cocker`: the command line. Thin commands; the work is in registry/builder/runtime.

Command groups load lazily (start-up time matters for `container run`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from cocker.context import Context
from common import exit_codes

GROUPS = {
    "image": ("cocker.commands.image", "image", "Versioned images: ls, inspect, import, export, tag, rm, gc, push, pull..."),
    "container": ("cocker.commands.container", "container", "Containers: create, start, run, exec, commit, stop, rm..."),
    "network": ("cocker.commands.network", "network", "Bridge networks for containers and services."),
    "repo": ("cocker.commands.repo", "repo", "Configured remote repositories."),
    "service": ("cocker.commands.service", "service", "Services: replicas behind an nginx reverse proxy."),
    "daemon": ("cocker.commands.daemon", "daemon", "Serve cocker's API on a unix socket (and loopback TCP)."),
    "demo": ("cocker.commands.demo", "demo", "Build a test image from busybox and show the main workflow."),
    "completion": ("cocker.commands.completion", "completion", "Shell completion script: bash or zsh."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {
            n for n, (mod, _, _) in GROUPS.items() if importlib.util.find_spec(mod) is not None})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in GROUPS:
            return cmd
        mod, attr, _ = GROUPS[name]
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                return None
            raise
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, GROUPS[n][2]) for n in self.list_commands(ctx) if n in GROUPS]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=exit_codes.HELP)
@click.option("--home", envvar="COCKER_HOME", type=click.Path(file_okay=False),
              help="Store directory (default $COCKER_HOME, else /var/lib/cocker as root).")
@click.option("--host", "daemon_url", envvar="COCKER_HOST", default=None,
              help="Run commands through a cocker daemon: unix:///path or http://127.0.0.1:PORT.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--allow-ratio", is_flag=True,
              help="Unpack layers that expand more than 100:1 (COCKER_ALLOW_RATIO=1; the ratio "
                   "itself is COCKER_MAX_RATIO). Only for images you trust.")
@click.version_option(package_name="cocker")
@click.pass_context
def cli(ctx: click.Context, home: str | None, daemon_url: str | None, quiet: bool,
        allow_ratio: bool) -> None:
    """cocker: versioned container images over SSH repositories, and a runtime to boot them."""
    if allow_ratio:
        # read where layers are unpacked, however deep below this command that happens
        from registry.layer import limits  # only then: every command starts here
        os.environ[limits.ALLOW_RATIO] = "1"
    ctx.obj = Context(home=home, daemon_url=daemon_url, quiet=quiet)


def main(argv: list[str] | None = None) -> None:
    from common.errors import CockerError
    from common.exit_codes import exit_code_for
    try:
        # --host / COCKER_HOST: the whole command runs in a cocker daemon (runtime/daemon/client.py);
        # the client is imported only then (http.client costs start-up time)
        args = sys.argv[1:] if argv is None else list(argv)
        if os.environ.get("COCKER_HOST") or any(a == "--host" or a.startswith("--host=") for a in args):
            from runtime.daemon.client import maybe_forward
            forwarded = maybe_forward(args)
            if forwarded is not None:
                sys.exit(forwarded)
        rv = cli.main(args=argv, prog_name="cocker", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("cocker: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except CockerError as e:
        click.echo(f"cocker: error: {e}", err=True)
        sys.exit(exit_code_for(e))
    except KeyboardInterrupt:
        click.echo("cocker: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as e:
        click.echo(f"cocker: error: {e.strerror or e}"
                   + (f": {e.filename}" if getattr(e, "filename", None) else ""), err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
