"""`cocker demo`: the main workflow on a built-in default, as the README's first command runs it.

Each step is the real CLI in a subprocess, echoed the way a user would type it, so the
demo doubles as a tour.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import textwrap

import click

from common.errors import CockerError

NAME = "demo/busybox"


def _run(args: list[str], *, check: bool = True, quiet: bool = False,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    shown = "cocker " + " ".join(shlex.quote(a) for a in args)
    if not quiet:
        click.secho(f"$ {shown}", bold=True)
    p = subprocess.run([sys.executable, "-m", "cocker.main", *args], text=True,
                       capture_output=True, env=dict(os.environ, COCKER_QUIET="1", **(env or {})))
    if not quiet:
        out = (p.stdout + p.stderr).rstrip()
        if out:
            click.echo(textwrap.indent(out, "  "))
    if check and p.returncode != 0:
        raise CockerError(f"demo step failed (exit {p.returncode}): {shown}: "
                          f"{(p.stderr or p.stdout).strip().splitlines()[-1:] or ''}")
    return p


@click.command()
@click.option("--keep", is_flag=True, help="Keep the demo images afterwards.")
@click.pass_obj
def demo(ctx, keep: bool) -> None:
    """Build a busybox test image, version it, boot it, build on it, and round-trip it
    through a repository."""
    from builder.testimage import make_busybox_rootfs

    if ctx.home:
        os.environ["COCKER_HOME"] = ctx.home
    _cleanup(quiet=True)
    with tempfile.TemporaryDirectory(prefix="cocker-demo-") as tmp:
        rootfs = make_busybox_rootfs(os.path.join(tmp, "rootfs"))
        click.secho("# 1. an image from a rootfs directory (cocker's install_test)", fg="cyan")
        _run(["image", "import", rootfs, f"{NAME}:1.0.0"])
        click.secho("# 2. boot it: any version, the newest by default", fg="cyan")
        _run(["container", "run", "--rm", "--net", "none", "--hostname", "demo", NAME,
              "sh", "-c", "echo hello from $(hostname), pid $$"])
        click.secho("# 3. change a container and commit it as the next version", fg="cyan")
        _run(["container", "run", "--name", "demo-edit", "--net", "none", NAME,
              "sh", "-c", "echo 'edited in a container' > /etc/motd; rm /var/www/index.html"])
        _run(["container", "commit", "demo-edit", NAME, "--bump", "patch",
              "--message", "edit motd"])
        _run(["container", "rm", "demo-edit"])
        click.secho("# 4. a scripted build (what CI runs)", fg="cyan")
        ctxdir = os.path.join(tmp, "app")
        os.makedirs(ctxdir)
        with open(os.path.join(ctxdir, "hello.txt"), "w") as f:
            f.write("built by cocker image build\n")
        with open(os.path.join(ctxdir, "cocker-build.toml"), "w") as f:
            f.write(textwrap.dedent(f"""\
                from = "{NAME}"
                tag = "demo/app"

                [config]
                cmd = ["cat", "/app/hello.txt"]

                [[step]]
                copy = ["hello.txt", "/app/hello.txt"]

                [[step]]
                run = "echo built at build time > /app/built.txt"
                """))
        _run(["image", "build", "-f", os.path.join(ctxdir, "cocker-build.toml"), "--bump", "minor",
              ctxdir])
        _run(["container", "run", "--rm", "--net", "none", "demo/app"])
        _run(["image", "ls"])
        click.secho("# 5. round trip through a repository (a directory here; ssh:// and srepo:// "
                    "work the same)", fg="cyan")
        repo = os.path.join(tmp, "repo")
        _run(["image", "push", NAME, "--all-versions", "--repo", repo, "--init"])
        _run(["image", "rm", "--all-versions", NAME])
        _run(["image", "search", "--repo", repo])
        _run(["image", "pull", NAME, "--repo", repo])
        _run(["container", "run", "--rm", "--net", "none", NAME, "cat", "/etc/motd"])
        _run(["image", "history", NAME])
        click.secho("# 6. cocker's own repo server: its OCI Distribution door on loopback", fg="cyan")
        _server_round_trip(tmp)
    if not keep:
        _cleanup(quiet=True)
    click.secho("demo finished: all steps passed", fg="green")


def _server_round_trip(tmp: str) -> None:
    """Start `srepo-server --http` on a free loopback port, push to it, list it, pull back."""
    import secrets
    import socket
    import time

    token = secrets.token_hex(16)
    tokens = os.path.join(tmp, "tokens")
    with open(tokens, "w") as f:
        f.write(f"{token} all\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.join(tmp, "srepo")
    argv = ["--root", root, "--http", f"127.0.0.1:{port}", "--token-file", tokens]
    click.secho("$ srepo-server " + " ".join(argv[:-1]) + " TOKENS &", bold=True)
    log = open(os.path.join(tmp, "srepo-server.log"), "wb")
    server = subprocess.Popen([sys.executable, "-m", "srepo_server.main", *argv],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise CockerError("srepo-server did not start (see its log above)")
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        env = {"COCKER_REGISTRY_TOKEN": token}
        _run(["image", "push", "demo/app", "--repo", url], env=env)
        _run(["image", "search", "--repo", url], env=env)
        _run(["image", "rm", "demo/app"])
        _run(["image", "pull", "demo/app", "--repo", url], env=env)
        _run(["container", "run", "--rm", "--net", "none", "demo/app"])
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _cleanup(quiet: bool) -> None:
    _run(["container", "rm", "-f", "demo-edit"], check=False, quiet=quiet)
    for name in (NAME, "demo/app"):
        _run(["image", "rm", "--all-versions", "--force", name], check=False, quiet=quiet)
