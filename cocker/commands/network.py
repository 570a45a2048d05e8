"""`cocker network ...`: bridge networks (the default "bridge" and named ones for services)."""

from __future__ import annotations

import click

from cocker.output import print_json, print_table


@click.group()
def network() -> None:
    """Bridge networks for containers and services."""


@network.command("create")
@click.argument("name")
@click.option("--subnet", help="IPv4 CIDR, e.g. 10.89.5.0/24 (default: a free /24 of 10.89.0.0/16).")
@click.option("--bridge", "bridge", metavar="IFNAME", help="Bridge interface name (max 15 chars).")
@click.pass_obj
def create_cmd(ctx, name: str, subnet: str | None, bridge: str | None) -> None:
    """Create a network with its own bridge (NAME "bridge" reconfigures the default one)."""
    from runtime.net import network as net
    info = net.create_network(ctx.store, name, subnet=subnet, bridge=bridge)
    click.echo(f"{info['name']}  {info['subnet']}  bridge {info['bridge']}")


@network.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def ls_cmd(ctx, as_json: bool) -> None:
    """List networks."""
    from runtime.net import network as net
    nets = net.list_networks(ctx.store)
    if as_json:
        print_json(nets)
        return
    print_table(["NAME", "SUBNET", "GATEWAY", "BRIDGE", "ENDPOINTS", "STATE"],
                [[n["name"] + (" (default)" if n["default"] else ""), n["subnet"], n["gateway"],
                  n["bridge"], len(n["endpoints"]), "up" if n["active"] else "down"] for n in nets])


@network.command("inspect")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def inspect_cmd(ctx, name: str, as_json: bool) -> None:
    """Show a network and its endpoints."""
    from runtime.net import network as net
    info = net.get_network(ctx.store, name)
    if as_json:
        print_json(info)
        return
    for key in ("name", "subnet", "gateway", "bridge"):
        click.echo(f"{key.capitalize() + ':':<10}{info[key]}")
    click.echo(f"{'State:':<10}{'up' if info['active'] else 'down'}")
    click.echo("Endpoints:" if info["endpoints"] else "Endpoints: none")
    for owner, ep in info["endpoints"].items():
        ports = f"  ports {', '.join(ep['ports'])}" if ep["ports"] else ""
        click.echo(f"  {owner}  {ep['ip']}  {ep['veth']}{ports}")


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm_cmd(ctx, names: tuple[str, ...]) -> None:
    """Remove networks (refused while containers use them)."""
    from runtime.net import network as net
    for name in names:
        net.remove_network(ctx.store, name)
        click.echo(name)
