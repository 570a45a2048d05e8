"""`cocker repo ...`: configured remote repositories (store config/repos.json) and remote gc."""

from __future__ import annotations

import click

from cocker.output import human_size, print_json, print_table
from registry import transfer
from registry.transports import remotes as reposmod


@click.group()
def repo() -> None:
    """Configured repositories: ssh://, srepo://, http(s)://, file:// or a path."""


@repo.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--default", "make_default", is_flag=True, help="Make it the default repo.")
@click.option("--init", is_flag=True, help="Create the repository at URL if it is not one.")
@click.option("-i", "--identity", type=click.Path(dir_okay=False), help="SSH key for this repo.")
@click.option("--accept-new-host-key", "accept_new", is_flag=True,
              help="Trust and record the host key on first contact (with --init or --check).")
@click.option("--mode", type=click.Choice(["auto", "smart", "sftp"]), default=None,
              help="ssh:// only: force the smart protocol or plain SFTP.")
@click.option("--remote-command", default=None, metavar="PATH",
              help="ssh:// only: srepo-server's path on the remote.")
@click.option("--legacy", is_flag=True, help="A cocker 0.x *.cockerimage directory.")
@click.option("--check", is_flag=True, help="Connect once to check the URL.")
@click.option("-f", "--force", is_flag=True, help="Replace an existing entry of that name.")
@click.pass_obj
def add_cmd(ctx, name, url, make_default, init, identity, accept_new, mode, remote_command,
            legacy, check, force) -> None:
    """Remember URL as NAME (the first repo added becomes the default)."""
    entry = transfer.add_repository(ctx.store, name, url, default=make_default, force=force,
                                    init=init, check=check, legacy=legacy,
                                    **_remote_kw(identity, accept_new, mode, remote_command))
    click.echo(f"added repo {name} -> {entry['url']}")


def _remote_kw(identity, accept_new, mode, remote_command) -> dict:
    kw = {"identity": identity, "accept_new": accept_new, "remote_command": remote_command}
    if mode:
        kw["mode"] = mode
    return kw


@repo.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def ls_cmd(ctx, as_json) -> None:
    """List configured repos (* marks the default)."""
    rows = reposmod.list_repos(ctx.store)
    if as_json:
        print_json(rows)
        return
    print_table(["NAME", "URL", "DEFAULT"],
                [[r["name"], r["url"] + ("  (legacy)" if r.get("legacy") else ""),
                  "*" if r["default"] else ""] for r in rows])


@repo.command("rm")
@click.argument("name")
@click.pass_obj
def rm_cmd(ctx, name) -> None:
    """Forget a configured repo (nothing on the remote is touched)."""
    reposmod.remove_repo(ctx.store, name)
    click.echo(f"removed repo {name}")


@repo.command("gc")
@click.argument("repo_spec", required=False, metavar="[REPO]")
@click.option("--grace", type=click.FloatRange(0), default=3600.0, show_default=True,
              help="Spare unreferenced blobs younger than this (a push in flight may have just "
                   "sent them; its ref is checked again under the repo lock).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("-i", "--identity", type=click.Path(dir_okay=False), help="SSH private key.")
@click.option("--accept-new-host-key", "accept_new", is_flag=True,
              help="Trust and record the host key of a new host.")
@click.option("--mode", type=click.Choice(["auto", "smart", "sftp"]), default=None)
@click.option("--remote-command", default=None, metavar="PATH")
@click.pass_obj
def gc_cmd(ctx, repo_spec, grace, dry_run, identity, accept_new, mode, remote_command) -> None:
    """Drop blobs no ref of REPO reaches (and stale partial uploads)."""
    removed, freed, where = transfer.gc_remote(
        ctx.store, repo_spec, grace=grace, dry_run=dry_run,
        **_remote_kw(identity, accept_new, mode, remote_command))
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {removed} blob(s), {human_size(freed)} from {where}")
