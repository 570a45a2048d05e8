"""`cocker daemon`: cocker's API (and brocker's routes) on a unix socket and loopback TCP."""

from __future__ import annotations

import click


@click.command("daemon")
@click.option("--socket", "socket_path", default=None, metavar="PATH",
              help="Unix socket (default /run/cocker/cocker.sock; mode 0600, root only).")
@click.option("--listen", default=None, metavar="IP:PORT",
              help="Also serve TCP, e.g. 127.0.0.1:3000 (brocker's port). Without "
                   "--token-file only root's connections are served and the address must be "
                   "loopback.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File with a bearer token every TCP request must carry.")
@click.option("-v", "--verbose", is_flag=True, help="Log every request to stderr.")
@click.pass_obj
def daemon(ctx, socket_path: str | None, listen: str | None, token_file: str | None,
           verbose: bool) -> None:
    """Serve container, image and service operations as JSON over HTTP.

    Stateless: everything is read from and written to the store, so a restarted daemon finds
    its containers and services as they are. `cocker --host unix://PATH COMMAND` (or
    COCKER_HOST) sends any command through it."""
    from runtime.daemon import server
    path = socket_path or server.DEFAULT_SOCKET

    def ready() -> None:
        click.echo(f"cocker daemon: serving {ctx.store.home} on unix://{path}"
                   + (f" and http://{listen}" if listen else ""), err=True)
        if listen and not token_file:
            click.echo("cocker daemon: TCP without --token-file serves root's connections only",
                       err=True)

    server.serve(ctx.store.home, path, listen, token_file, verbose=verbose, ready=ready)
