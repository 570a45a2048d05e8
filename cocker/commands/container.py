"""`cocker container ...`: create, start/boot, stop/shutdown, kill, rm/destroy, ls, inspect, exec,
attach, logs, cp, run, wait.

Imports of the runtime stay inside the commands: `container run` is timed against runc.
Other modules attach commands and options here (commit, brocker files); see EXTENSIONS.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from cocker.complete import container_names, image_refs

EXTENSIONS = ("cocker.commands.container_commit", "cocker.commands.container_brocker")

_ARGS = {"ignore_unknown_options": False, "allow_interspersed_args": False}


@click.group()
def container() -> None:
    """Containers booted from any stored image version."""


def _spec_options(f):
    opts = [
        click.option("--name", help="Container name (default: a generated one)."),
        click.option("--hostname", help="Hostname inside (default: the name)."),
        click.option("--net", default="bridge", show_default=True,
                     help="host, none (loopback only), bridge, or a network from `cocker network`."),
        click.option("--ip", help="Fixed address on the bridge network."),
        click.option("--network-alias", "aliases", multiple=True, metavar="NAME",
                     help="Another name the containers on its network find it by (repeatable)."),
        click.option("-p", "--publish", "ports", multiple=True,
                     help="[HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp] (repeatable)."),
        click.option("-v", "--volume", "volumes", multiple=True, help="HOST:CTR[:ro] (repeatable)."),
        click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE, or KEY from here."),
        click.option("-w", "--workdir", help="Working directory inside."),
        click.option("--entrypoint", help="Replace the image's entrypoint (one word)."),
        click.option("-u", "--user", help="uid[:gid] or a user of the image."),
        click.option("--userns", type=click.Choice(["host", "auto"]), default="host",
                     show_default=True,
                     help="auto: container root is an unprivileged host uid from /etc/subuid "
                          "(recommended for images you do not trust)."),
        click.option("-l", "--label", "labels", multiple=True, help="KEY=VALUE (repeatable)."),
        click.option("--cpus", help="CPUs it may use, e.g. 0 or 0,1 (cpuset)."),
        click.option("--cpu-quota", type=click.IntRange(1), help="CPU time as a percentage of one CPU."),
        click.option("--memory", "-m", help="Memory limit, e.g. 64m, 1g."),
        click.option("--pids-limit", type=click.IntRange(1), help="At most this many processes."),
        click.option("--restart", default="no", show_default=True,
                     metavar="no|always|on-failure[:N]|unless-stopped",
                     help="Carried out by `cocker daemon`, also after its or the host's restart."),
        click.option("--init", is_flag=True,
                     help="PID 1 is a small init (tini) that reaps and forwards signals."),
        click.option("--privileged", is_flag=True,
                     help="Every capability, no seccomp filter, /proc and /sys unmasked."),
        click.option("--cap-add", multiple=True, help="Add a capability (NET_ADMIN, ALL...)."),
        click.option("--cap-drop", multiple=True, help="Drop a capability (or ALL)."),
        click.option("--security-opt", multiple=True,
                     help="seccomp=unconfined, seccomp=FILE.json or no-new-privileges."),
        click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only."),
        click.option("--device", "devices", multiple=True,
                     help="HOST[:CTR]: give the container a host device node (repeatable)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _make_spec(image: str, command: tuple[str, ...], tty: bool, kw: dict):
    from common.errors import UsageError
    from runtime.container.spec import ContainerSpec
    labels = {}
    for item in kw.pop("labels", ()) or ():
        k, sep, v = item.partition("=")
        if not k or not sep:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE")
        labels[k] = v
    entry = kw.pop("entrypoint", None)
    return ContainerSpec(
        image=image, name=kw["name"], command=list(command) or None,
        entrypoint=[entry] if entry else None, hostname=kw["hostname"], net=kw["net"],
        ip=kw["ip"], ports=list(kw["ports"]), volumes=list(kw["volumes"]), env=list(kw["env"]),
        workdir=kw["workdir"], cpus=kw["cpus"], cpu_quota=kw["cpu_quota"], memory=kw["memory"],
        pids_limit=kw["pids_limit"], tty=tty, labels=labels, restart=kw["restart"],
        user=kw["user"], userns="" if kw["userns"] == "host" else kw["userns"],
        aliases=list(kw["aliases"]), init=kw["init"], privileged=kw["privileged"],
        cap_add=list(kw["cap_add"]), cap_drop=list(kw["cap_drop"]),
        security_opt=list(kw["security_opt"]), read_only=kw["read_only"],
        devices=list(kw["devices"]))


@container.command("create", context_settings=_ARGS)
@_spec_options
@click.option("-t", "--tty", is_flag=True, help="Give it a pty (attach later).")
@click.option("-i", "--interactive", is_flag=True, hidden=True)
@click.argument("image", shell_complete=image_refs)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def create_cmd(ctx, image: str, command: tuple[str, ...], tty: bool, interactive: bool, **kw) -> None:
    """Create a container from IMAGE (a bare name: its newest version, pinned by digest)."""
    from runtime.container import lifecycle
    c = lifecycle.create(ctx.store, _make_spec(image, command, tty, kw))
    click.echo(c.name)


@container.command("run", context_settings=_ARGS)
@_spec_options
@click.option("--rm", is_flag=True, help="Remove the container when it exits.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin connected.")
@click.option("-t", "--tty", is_flag=True, help="Give it a pty.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; print the name.")
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True, metavar="KEYS",
              help="With -it: the keys that detach (it keeps running; --rm removes it later).")
@click.option("-f", "--file", "spec_file", type=click.Path(dir_okay=False),
              help="Take the container from a brocker JSON file.")
@click.argument("image", required=False, shell_complete=image_refs)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run_cmd(ctx, image: str | None, command: tuple[str, ...], rm: bool, interactive: bool,
            tty: bool, detach: bool, detach_keys: str, spec_file: str | None, **kw) -> int:
    """Create and start a container; in the foreground its exit code is cocker's."""
    from common.errors import UsageError
    from runtime.container import lifecycle, record
    from runtime.tty.detach_keys import parse as parse_keys
    keys = parse_keys(detach_keys)
    if spec_file:
        if importlib.util.find_spec("runtime.brocker.files") is None:
            raise UsageError("run -f is not supported in this installation")
        from runtime.brocker import files as brocker_json
        spec, _service = brocker_json.container_spec_from_file(spec_file, ctx.store)
        if tty:
            spec = spec._replace(tty=True)
    else:
        if not image:
            raise UsageError("run needs an IMAGE (or -f FILE)")
        spec = _make_spec(image, command, tty, kw)
    if detach and not spec.name:
        spec = spec._replace(name=record.new_name(ctx.store))
    code = lifecycle.run(ctx.store, spec, rm=rm, detach=detach, interactive=interactive or tty,
                         detach_keys=keys)
    if detach:
        click.echo(spec.name)
        return code
    _fast_exit(code)
    return code


def _fast_exit(code: int) -> None:
    """In the `cocker` process itself, leave with the container's code without the interpreter's
    teardown (a noticeable part of a short `run`); never when called in-process (daemon, tests)."""
    import os
    import sys
    if os.path.basename(sys.argv[0] if sys.argv else "") not in ("cocker", "main.py"):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


@click.command("start")
@click.argument("name", shell_complete=container_names)
@click.option("-a", "--attach", is_flag=True, help="Stay connected; exit with its code.")
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True, metavar="KEYS",
              help="With --attach: the keys that detach.")
@click.pass_obj
def start_cmd(ctx, name: str, attach: bool, detach_keys: str) -> int:
    """Start (boot) a created or stopped container."""
    from runtime.container import lifecycle
    from runtime.tty.detach_keys import parse as parse_keys
    code = lifecycle.start(ctx.store, name, attach=attach, detach_keys=parse_keys(detach_keys))
    return code or 0


@click.command("stop")
@click.argument("names", nargs=-1, required=True, shell_complete=container_names)
@click.option("-t", "--time", "timeout", type=float, default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
@click.pass_obj
def stop_cmd(ctx, names: tuple[str, ...], timeout: float) -> None:
    """Stop (shutdown): SIGTERM, then SIGKILL after the timeout."""
    from runtime.container import lifecycle
    for n in names:
        lifecycle.stop(ctx.store, n, timeout=timeout)
        click.echo(n)


@container.command("restart")
@click.argument("names", nargs=-1, required=True, shell_complete=container_names)
@click.option("-t", "--time", "timeout", type=float, default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
@click.pass_obj
def restart_cmd(ctx, names: tuple[str, ...], timeout: float) -> None:
    """Stop (SIGTERM, then SIGKILL after the timeout) and start again in the background."""
    from runtime.container import lifecycle
    for n in names:
        lifecycle.restart(ctx.store, n, timeout=timeout)
        click.echo(n)


@container.command("kill")
@click.argument("name", shell_complete=container_names)
@click.option("-s", "--signal", "sig", default="KILL", show_default=True,
              help="Signal name or number.")
@click.pass_obj
def kill_cmd(ctx, name: str, sig: str) -> None:
    """Send a signal to the container's main process."""
    import signal as sigmod

    from common.errors import UsageError
    from runtime.container import lifecycle
    try:
        num = int(sig) if sig.isdigit() else int(getattr(sigmod, "SIG" + sig.upper().removeprefix("SIG")))
    except (AttributeError, ValueError):
        raise UsageError(f"unknown signal {sig!r}") from None
    lifecycle.kill(ctx.store, name, num)


@click.command("rm")
@click.argument("names", nargs=-1, required=True, shell_complete=container_names)
@click.option("-f", "--force", is_flag=True, help="Stop it first; clean up after a crash.")
@click.pass_obj
def rm_cmd(ctx, names: tuple[str, ...], force: bool) -> None:
    """Remove (destroy) containers."""
    from runtime.container import lifecycle
    for n in names:
        lifecycle.remove(ctx.store, n, force=force)
        click.echo(n)


@container.command("ls")
@click.option("-a", "--all", "show_all", is_flag=True, help="Also stopped ones.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def ls_cmd(ctx, show_all: bool, as_json: bool) -> None:
    """List containers (running ones unless --all)."""
    from cocker.output import print_json, print_table
    from runtime.container import record
    infos = [c.info() for c in record.list_containers(ctx.store, all=True)]
    if not show_all:
        infos = [i for i in infos if i["status"] == "running"]
    if as_json:
        print_json(infos)
        return
    rows = []
    for i in infos:
        status = i["status"]
        if status == "running":
            status = f"running({i['pid']})" + (" paused" if i["paused"] else "")
        elif status == "exited":
            status = f"exited({i['exit_code']})"
        rows.append([i["name"], i["image"], i["digest"][7:19] if i["digest"] else "-", status,
                     i["net"], i["ip"] or "-", " ".join(i["command"] or [])[:40]])
    print_table(["NAME", "IMAGE", "DIGEST", "STATUS", "NET", "IP", "COMMAND"], rows)


@container.command("inspect")
@click.argument("name", shell_complete=container_names)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def inspect_cmd(ctx, name: str, as_json: bool) -> None:
    """Show a container's record and state."""
    from cocker.output import print_json
    from runtime.container import record
    info = record.load(ctx.store, name).inspect()
    if as_json:
        print_json(info)
        return
    for key in ("name", "image", "digest", "status", "pid", "ip", "net", "ports", "hostname",
                "command", "created", "exit_code", "oom_killed", "labels", "dir"):
        click.echo(f"{key + ':':<12}{info.get(key) if info.get(key) not in (None, [], {}) else '-'}")
    rec = info["record"]
    for key in ("volumes", "env", "workdir", "user", "cpus", "cpu_quota", "memory", "pids_limit"):
        if rec.get(key):
            click.echo(f"{key + ':':<12}{rec[key]}")
    changed = {k: v for k, v in info["security"].items()
               if v not in (False, [], "default")}
    click.echo(f"{'security:':<12}" + (" ".join(f"{k}={v}" for k, v in changed.items())
                                       or "default confinement"))


@container.command("exec", context_settings=_ARGS)
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin connected.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a pty.")
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("-w", "--workdir", help="Working directory inside.")
@click.option("-u", "--user", help="uid[:gid] or a user of the image (default: the container's).")
@click.argument("name", shell_complete=container_names)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_cmd(ctx, interactive: bool, tty: bool, env: tuple[str, ...], workdir: str | None,
             user: str | None, name: str, command: tuple[str, ...]) -> int:
    """Run COMMAND inside a running container, under its confinement; cocker exits with its
    code."""
    from runtime.container import session
    return session.exec_(ctx.store, name, list(command), tty=tty, env=list(env),
                         workdir=workdir, interactive=interactive, user=user)


@container.command("attach")
@click.argument("name", shell_complete=container_names)
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True, metavar="KEYS",
              help="The keys that detach, e.g. ctrl-x,x (each ctrl-KEY or one character).")
@click.pass_obj
def attach_cmd(ctx, name: str, detach_keys: str) -> int:
    """Connect to a running container: its terminal, or without one its output (stdout and
    stderr). The detach keys leave it running."""
    from runtime.container import session
    from runtime.tty.detach_keys import parse as parse_keys
    code = session.attach(ctx.store, name, keys=parse_keys(detach_keys))
    return code or 0


@container.command("logs")
@click.argument("name", shell_complete=container_names)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until it stops.")
@click.pass_obj
def logs_cmd(ctx, name: str, follow: bool) -> None:
    """Print what a detached container wrote."""
    from runtime.container import record
    from runtime.tty import attach
    c = record.load(ctx.store, name)
    attach.follow_log(c, from_start=True, follow=follow)


@container.command("wait")
@click.argument("name", shell_complete=container_names)
@click.pass_obj
def wait_cmd(ctx, name: str) -> int:
    """Wait for a container to stop; print and exit with its code."""
    from runtime.container import lifecycle
    code = lifecycle.wait(ctx.store, name)
    click.echo("-" if code is None else code)
    return code or 0


@container.command("cp")
@click.argument("src")
@click.argument("dest")
@click.pass_obj
def cp_cmd(ctx, src: str, dest: str) -> None:
    """Copy in (`cp HOSTPATH NAME:PATH`, putfile) or out (`cp NAME:PATH HOSTPATH`, getfile)."""
    from runtime.container import cp
    cp.copy(ctx.store, src, dest)


container.add_command(start_cmd, "start")
container.add_command(start_cmd, "boot")
container.add_command(stop_cmd, "stop")
container.add_command(stop_cmd, "shutdown")
container.add_command(rm_cmd, "rm")
container.add_command(rm_cmd, "destroy")


for _mod in EXTENSIONS:
    if importlib.util.find_spec(_mod) is not None:
        importlib.import_module(_mod)
