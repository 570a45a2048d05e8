"""`cocker service ...`: replicas of one image version behind an nginx, brocker's workflow."""

from __future__ import annotations

import click

from cocker.output import print_json, print_table


@click.group()
def service() -> None:
    """Services: N replicas of an image version behind a real nginx, on a bridge of their own."""


@service.command("create")
@click.argument("name")
@click.option("--image", required=True, help="Image version every replica runs.")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(min=0))
@click.option("--publish", "-p", "publish", multiple=True, metavar="[HOSTIP:]PORT:CTRPORT",
              help="Host port to nginx; CTRPORT is the port replicas listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port replicas listen on (default: CTRPORT of --publish, else 8080).")
@click.option("--subnet", default=None, help="The service network's subnet (default: a free private /24).")
@click.option("--restart", type=click.Choice(["always", "on-failure", "no"]), default="always",
              show_default=True, help="What the monitor does when a replica dies.")
@click.option("-e", "--env", multiple=True, metavar="KEY=VALUE")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:CTR[:ro]")
@click.option("-w", "--workdir", default=None)
@click.option("--entrypoint", default=None, help="Replace the image's entrypoint (one word).")
@click.option("--cpus", default=None, help="cpuset of each replica, e.g. 0-1.")
@click.option("--cpu-quota", type=int, default=None, help="CPU percent of each replica.")
@click.option("--memory", default=None, help="Memory limit of each replica, e.g. 64m.")
@click.option("--pids-limit", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the service's record.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def create_cmd(ctx, name, image, replicas, publish, port, subnet, restart, env, volumes, workdir,
               entrypoint, cpus, cpu_quota, memory, pids_limit, as_json, command) -> None:
    """Create service NAME: a network, nginx, and --replicas containers of --image.

    Everything after `--` is the replicas' command."""
    from runtime.services import manager as services
    rec = services.create_from_options(
        ctx.store, name, image, replicas=replicas, publish=list(publish), port=port,
        subnet=subnet, restart=restart, env=list(env), volumes=list(volumes), workdir=workdir,
        entrypoint=entrypoint, cpus=cpus, cpu_quota=cpu_quota, memory=memory,
        pids_limit=pids_limit, command=list(command))
    _report(rec, as_json)


@service.command("add")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def add_cmd(ctx, file: str, as_json: bool) -> None:
    """Create a service from brocker's JSON file (+ cocker's image/replicas/publish/port)."""
    from runtime.brocker import files as brocker_json
    from runtime.services import manager as services
    rec = services.create(ctx.store, brocker_json.service_spec_from_file(file))
    _report(rec, as_json)


def _report(rec: dict, as_json: bool) -> None:
    if as_json:
        print_json(rec)
        return
    ng = rec.get("nginx", {})
    pub = ", ".join(rec.get("publish") or []) or "not published"
    click.echo(f"service {rec['name']}: {len(rec['replicas'])} replica(s) of "
               f"{rec.get('image_ref') or '(no image)'} behind nginx {ng.get('ip')} "
               f"on {rec.get('subnet')}; {pub}")


@service.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def ls_cmd(ctx, as_json: bool) -> None:
    """List services."""
    from runtime.services import manager as services
    svcs = services.list_services(ctx.store)
    if as_json:
        print_json(svcs)
        return
    rows = [[s["name"], s.get("image_ref") or "-", f"{s['running_replicas']}/{s['desired_replicas']}",
             ",".join(s.get("publish") or []) or "-", s.get("subnet") or "-",
             s.get("state")] for s in svcs]
    print_table(["NAME", "IMAGE", "REPLICAS", "PUBLISH", "SUBNET", "STATE"], rows)


@service.command("inspect")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def inspect_cmd(ctx, name: str, as_json: bool) -> None:
    """Show a service: its replicas, nginx and monitor."""
    from runtime.services import manager as services
    s = services.inspect(ctx.store, name)
    if as_json:
        print_json(s)
        return
    ng = s["nginx"]
    click.echo(f"Name:      {s['name']}")
    click.echo(f"State:     {s['state']}")
    click.echo(f"Image:     {s.get('image_ref') or '-'} ({s.get('digest') or '-'})")
    click.echo(f"Network:   {s['network']} {s.get('subnet') or ''} (bridge {s.get('bridge') or '-'})")
    click.echo(f"Nginx:     {ng.get('ip')}:80 pid {ng.get('pid') or '-'} "
               f"({'running' if ng.get('running') else 'NOT running'})")
    click.echo(f"Publish:   {', '.join(s.get('publish') or []) or '-'}")
    click.echo(f"Restart:   {s['spec'].get('restart')}   monitor pid {s.get('monitor_pid') or '-'}")
    click.echo(f"Replicas:  {s['running_replicas']} running, {s['desired_replicas']} wanted")
    print_table(["  NAME", "IP", "PORT", "STATUS", "IN ROTATION", "ORIGIN"],
                [[f"  {r['name']}", r.get("ip"), r.get("port"), r["status"],
                  "yes" if r.get("active") else "no", r.get("origin", "template")]
                 for r in s["replicas"]])


@service.command("scale")
@click.argument("name")
@click.argument("replicas", type=click.IntRange(min=0))
@click.pass_obj
def scale_cmd(ctx, name: str, replicas: int) -> None:
    """Run REPLICAS replicas (new ones serve before they join; old ones drain before they go)."""
    from runtime.services import manager as services
    rec = services.scale(ctx.store, name, replicas)
    click.echo(f"service {name}: {len(rec['replicas'])} replica(s)")


@service.command("update")
@click.argument("name")
@click.option("--image", required=True, help="The new image version.")
@click.pass_obj
def update_cmd(ctx, name: str, image: str) -> None:
    """Rolling update to another image version, one replica at a time, no request lost."""
    from runtime.services import manager as services
    rec = services.update(ctx.store, name, image)
    click.echo(f"service {name}: {len(rec['replicas'])} replica(s) of {rec['image_ref']}")


@service.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm_cmd(ctx, names: tuple[str, ...]) -> None:
    """Remove services and everything they made (replicas, nginx, network, ports)."""
    from runtime.services import manager as services
    for n in names:
        services.remove(ctx.store, n)
        click.echo(n)
