"""The demo's steps: image from a rootfs, boot, commit, scripted build, srepo-server's HTTP
door, then the SSH round trip (OpenSSH and srepo-server's own SSH door) with the bytes each
transfer moved."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import textwrap

from builder.demo import servers
from builder.demo.narration import Cli, Narrator
from builder.demo.sshd import new_client, openssh_server
from builder.testimage import make_busybox_rootfs

NAME = "demo/busybox"
APP = "demo/app"
EDIT_CONTAINER = "demo-edit"


def human_bytes(n: int) -> str:
    """Decimal units, as transfer figures are usually read (2.1 MB)."""
    size, unit = float(n), "B"
    for bigger in ("kB", "MB", "GB"):
        if size < 1000:
            break
        size, unit = size / 1000, bigger
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def run_demo(narrator: Narrator, home: str | None, keep: bool) -> str:
    """Run every step for real; returns the transfer summary line. The demo's images are
    removed afterwards unless keep; its servers and temporary files always are."""
    cli = Cli(narrator, home)
    cleanup(cli)
    try:
        with tempfile.TemporaryDirectory(prefix="cocker-demo-") as tmp:
            local_steps(cli, tmp)
            http_round_trip(cli, os.path.join(tmp, "http"))
            summary = ssh_round_trip(cli, os.path.join(tmp, "ssh"))
    finally:
        if not keep:
            cleanup(cli)
    return summary


def local_steps(cli: Cli, tmp: str) -> None:
    say = cli.narrator.title
    rootfs = make_busybox_rootfs(os.path.join(tmp, "rootfs"))
    say("# 1. an image from a rootfs directory (cocker's install_test)")
    cli.run(["image", "import", rootfs, f"{NAME}:1.0.0"])
    say("# 2. boot it: any version, the newest by default")
    cli.run(["container", "run", "--rm", "--net", "none", "--hostname", "demo", NAME,
             "sh", "-c", "echo hello from $(hostname), pid $$"])
    say("# 3. change a container and commit it as the next version")
    cli.run(["container", "run", "--name", EDIT_CONTAINER, "--net", "none", NAME,
             "sh", "-c", "echo 'edited in a container' > /etc/motd; rm /var/www/index.html"])
    cli.run(["container", "commit", EDIT_CONTAINER, NAME, "--bump", "patch",
             "--message", "edit motd"])
    cli.run(["container", "rm", EDIT_CONTAINER])
    say("# 4. a scripted build (what CI runs)")
    ctxdir = os.path.join(tmp, "app")
    os.makedirs(ctxdir)
    with open(os.path.join(ctxdir, "hello.txt"), "w") as f:
        f.write("built by cocker image build\n")
    recipe = os.path.join(ctxdir, "cocker-build.toml")
    with open(recipe, "w") as f:
        f.write(textwrap.dedent(f"""\
            from = "{NAME}"
            tag = "{APP}"

            [config]
            cmd = ["cat", "/app/hello.txt"]

            [[step]]
            copy = ["hello.txt", "/app/hello.txt"]

            [[step]]
            run = "echo built at build time > /app/built.txt"
            """))
    cli.run(["image", "build", "-f", recipe, "--bump", "minor", ctxdir])
    cli.run(["container", "run", "--rm", "--net", "none", APP])
    cli.run(["image", "ls"])


def http_round_trip(cli: Cli, base: str) -> None:
    cli.narrator.title("# 5. cocker's own repo server: its OCI Distribution door on loopback")
    with servers.http_door(base) as (url, token, argv):
        cli.narrator.command("$ srepo-server " + " ".join(argv[:-1]) + " TOKENS &")
        env = dict(os.environ, COCKER_REGISTRY_TOKEN=token)
        cli.run(["image", "push", APP, "--repo", url], env=env)
        cli.run(["image", "search", "--repo", url], env=env)
        cli.narrator.output(f"  (its web page: {url}/ , the same token as the password)")


def ssh_round_trip(cli: Cli, base: str) -> str:
    """Push to an OpenSSH host and to srepo-server's SSH door, push again (nothing moves),
    then pull into an empty store, standing for another machine, and boot what came back."""
    say = cli.narrator.title
    say("# 6. over SSH: a throwaway sshd on 127.0.0.1 and srepo-server's own SSH door "
        "(own host keys, client key and known_hosts in a temp dir)")
    os.makedirs(base)
    client = new_client(base)
    env = client.env()
    shown = f"HOME={client.home} "
    with contextlib.ExitStack() as stack:
        sshd_port = stack.enter_context(openssh_server(os.path.join(base, "sshd"), client,
                                                       session_path()))
        door_port, door_argv = stack.enter_context(servers.ssh_door(os.path.join(base, "door"),
                                                                    client))
        cli.narrator.command(f"$ /usr/sbin/sshd -f {base}/sshd/sshd_config   "
                             f"# 127.0.0.1:{sshd_port}")
        cli.narrator.command("$ srepo-server " + " ".join(door_argv) + " &")
        ssh_url = f"ssh://root@127.0.0.1:{sshd_port}{base}/ssh-repo"
        door_url = f"srepo://root@127.0.0.1:{door_port}"
        pushed = cli.transfer(["image", "push", NAME, "--all-versions", "--repo", ssh_url,
                               "--init"], env=env, shown_prefix=shown)
        cli.transfer(["image", "push", NAME, "--all-versions", "--repo", door_url], env=env,
                     shown_prefix=shown)
        again = cli.transfer(["image", "push", NAME, "--all-versions", "--repo", ssh_url],
                             env=env, shown_prefix=shown)
        cli.run(["image", "search", "--repo", door_url], env=env, shown_prefix=shown)
        say("# 7. another machine: an empty store pulls the newest version back over SSH "
            "and boots it")
        # A second store rather than `image rm` + gc here: a gc of the user's store with no
        # grace period could drop blobs another command is writing at that moment.
        other = os.path.join(base, "elsewhere")
        pulled = cli.transfer(["image", "pull", NAME, "--repo", ssh_url], env=env,
                              home=other, shown_prefix=f"{shown}COCKER_HOME={other} ")
        cli.run(["container", "run", "--rm", "--net", "none", NAME, "cat", "/etc/motd"],
                home=other, shown_prefix=f"COCKER_HOME={other} ")
        cli.run(["image", "history", NAME], home=other, shown_prefix=f"COCKER_HOME={other} ")
    summary = (f"push: {human_bytes(pushed)} sent; second push: {human_bytes(again)}"
               f"{' (all blobs there)' if again == 0 else ''}; pull: {human_bytes(pulled)}")
    cli.narrator.result(summary)
    return summary


def session_path() -> str:
    """PATH for SSH sessions: this cocker's own scripts first, so the remote end finds the
    srepo-server that matches it and speaks the smart protocol."""
    scripts = os.path.dirname(sys.executable)
    return f"{scripts}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cleanup(cli: Cli) -> None:
    cli.run(["container", "rm", "-f", EDIT_CONTAINER], check=False, quiet=True)
    for name in (NAME, APP):
        cli.run(["image", "rm", "--all-versions", "--force", name], check=False, quiet=True)
