"""Command-line pieces for the HTTP door and gc, plugged into `srepo_server.main`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from common.errors import UsageError
from registry.repo.layout import LayoutRepo
from srepo_server import http_store
from srepo_server.http_uploads import (
    MAX_BYTES_PER_OWNER,
    MAX_SESSIONS_PER_OWNER,
    UPLOAD_TTL,
    Limits,
)


def http_options(f: Callable) -> Callable:
    opts = [
        click.option("--http", "http", metavar="HOST:PORT",
                     help="Serve the OCI Distribution API (docker/skopeo/podman/cocker http://) "
                     "on HOST:PORT; the host defaults to 127.0.0.1."),
        click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True),
                     help="PEM certificate (chain) for HTTPS on --http."),
        click.option("--tls-key", type=click.Path(dir_okay=False, exists=True),
                     help="PEM private key for --tls-cert."),
        click.option("--anonymous-read", is_flag=True,
                     help="Let anyone pull through --http without credentials."),
        click.option("--token-file", type=click.Path(dir_okay=False, exists=True),
                     help="Bearer tokens, one per line: TOKEN [read,write,delete|all [PREFIX...]]. "
                     "Re-read when it changes."),
        click.option("--htpasswd", type=click.Path(dir_okay=False, exists=True),
                     help="Basic-auth users: USER:HASH[:PERMS[:PREFIX,...]] "
                     "(bcrypt as `htpasswd -B`, {SHA}, or `srepo-server passwd`)."),
        click.option("--access-log", type=click.Path(dir_okay=False),
                     help="Append the HTTP access log to FILE instead of stderr."),
        click.option("--idle-timeout", type=float, default=60.0, show_default=True,
                     help="Seconds a connection may stay silent before it is closed."),
        click.option("--upload-ttl", type=click.FloatRange(min=1), default=UPLOAD_TTL,
                     show_default=True,
                     help="Seconds an unfinished upload may stay untouched before it is "
                     "removed with its data."),
        click.option("--max-uploads-per-user", type=click.IntRange(min=1),
                     default=MAX_SESSIONS_PER_OWNER, show_default=True,
                     help="Unfinished uploads one token or user may hold at once."),
        click.option("--max-upload-bytes-per-user", type=click.IntRange(min=1),
                     default=MAX_BYTES_PER_OWNER, show_default=True,
                     help="Bytes one token or user may hold in unfinished uploads."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _door_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    if not opts.get("anonymous_read") and not opts.get("token_file") and not opts.get("htpasswd"):
        raise UsageError("--http needs --token-file, --htpasswd or --anonymous-read "
                         "(otherwise nobody could use it)")
    log = None
    if opts.get("access_log"):
        try:
            log = open(opts["access_log"], "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (the door's, for its life)
        except OSError as e:
            raise UsageError(f"cannot open access log {opts['access_log']}: {e.strerror}") from None
    return dict(tls_cert=opts.get("tls_cert"), tls_key=opts.get("tls_key"),
                anonymous_read=bool(opts.get("anonymous_read")), token_file=opts.get("token_file"),
                htpasswd=opts.get("htpasswd"), access_log=log,
                idle_timeout=opts.get("idle_timeout") or 60.0,
                upload_limits=Limits(
                    ttl=opts.get("upload_ttl") or UPLOAD_TTL,
                    max_sessions=opts.get("max_uploads_per_user") or MAX_SESSIONS_PER_OWNER,
                    max_bytes=opts.get("max_upload_bytes_per_user") or MAX_BYTES_PER_OWNER))


def start_http(root: str, opts: dict[str, Any]):
    """Start the door in a background thread (for running it beside the SSH door)."""
    from srepo_server.http_door import Door
    return Door(root, opts["http"], **_door_kwargs(opts)).start()


def run_http(root: str | None, opts: dict[str, Any]) -> None:
    """Serve --http in the foreground until SIGTERM."""
    if not root:
        raise click.UsageError("--http needs --root PATH")
    from srepo_server.http_door import serve
    serve(root, opts["http"], **_door_kwargs(opts))


@click.command("gc")
@click.option("--root", "gc_root", type=click.Path(file_okay=False, exists=True),
              help="Repository directory (or give --root before `gc`).")
@click.option("--grace", type=float, default=3600.0, show_default=True,
              help="Spare blobs and upload files younger than this many seconds "
              "(a push in flight may not have published its ref yet).")
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.pass_context
def gc_command(ctx: click.Context, gc_root: str | None, grace: float, dry_run: bool) -> None:
    """Remove blobs no tag, digest-pushed manifest or index reaches.

    Safe while the server runs: uploads in progress are locked and recent blobs are spared.
    """
    root = gc_root or (ctx.obj or {}).get("root")
    if not root:
        raise click.UsageError("gc needs --root PATH")
    repo = LayoutRepo(root)
    removed, freed = http_store.gc(repo, grace=grace, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {removed} blob(s), {freed} bytes")


@click.command("passwd")
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
def passwd_command(user: str, password_stdin: bool) -> None:
    """Print an --htpasswd line (PBKDF2-SHA256) for USER."""
    from srepo_server.http_auth import pbkdf2_hash
    if ":" in user or not user:
        raise click.UsageError("user names may not contain ':'")
    if password_stdin:
        pw = sys.stdin.readline().rstrip("\n")
    else:
        pw = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if not pw:
        raise click.UsageError("empty password")
    click.echo(f"{user}:{pbkdf2_hash(pw)}")
