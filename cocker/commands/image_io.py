"""`cocker image import` and `cocker image export`: foreign formats in and out."""

from __future__ import annotations

import sys

import click

from cocker.commands.image import image
from cocker.complete import image_refs
from cocker.output import dropped_devices_notice, print_json

# Spelled out here so that loading the image group does not import the codec (start-up time).
IMPORT_FORMATS = ("rootfs-dir", "rootfs-tar", "cockerimage", "oci-dir", "oci-tar",
                  "docker-archive", "docker-dir", "skopeo-dir")
EXPORT_FORMATS = ("oci", "docker-archive", "cockerimage", "rootfs")


@image.command("import")
@click.argument("source", type=click.Path())
@click.argument("ref", required=False)
@click.option("--format", "fmt", type=click.Choice(IMPORT_FORMATS),
              help="Source format (default: detected).")
@click.option("--source-ref", help="Which image of a multi-image archive (its ref.name or tag).")
@click.option("--compression", type=click.Choice(["zstd", "gzip"]), default="zstd",
              show_default=True, help="Compression for layers cocker packs.")
@click.option("-f", "--force", is_flag=True, help="Replace REF if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def import_cmd(ctx, source: str, ref: str | None, fmt: str | None, source_ref: str | None,
               compression: str, force: bool, as_json: bool) -> None:
    """Import SOURCE as REF: a rootfs directory or tarball, an OCI layout (dir or tar),
    a `docker save` archive, a `skopeo copy ... dir:` directory or a legacy
    NAME[:VERSION].cockerimage (REF defaults to the name in the file). SOURCE `-` reads
    a tarball or archive from standard input (REF required)."""
    from builder import importers
    progress = ctx.progress()
    try:
        res = importers.import_image(ctx.store, source, ref, source_ref=source_ref,
                                     compression=compression, force=force, fmt=fmt,
                                     progress=progress, stdin=sys.stdin.buffer)
    finally:
        progress.close()
    dropped_devices_notice(res.ref, res.dropped_devices)
    if as_json:
        print_json(res.as_dict())
    else:
        click.echo(f"{res.ref}  {res.digest}  (from {res.format})")


@image.command("export")
@click.argument("ref", shell_complete=image_refs)
@click.argument("dest", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS),
              help="oci (a layout dir, or a tar if DEST ends in .tar), docker-archive, "
                   "cockerimage, rootfs (a dir, or .tar/.tar.gz/.tar.zst). "
                   "Default: cockerimage for *.cockerimage, else oci.")
@click.option("--compression", type=click.Choice(["keep", "gzip", "zstd"]), default="keep",
              show_default=True,
              help="oci: keep the layer blobs as stored, or recompress them (gzip for "
                   "readers without zstd, such as umoci 0.4).")
@click.pass_obj
def export_cmd(ctx, ref: str, dest: str, fmt: str | None, compression: str) -> None:
    """Write image REF to DEST."""
    from builder import exporters
    progress = ctx.progress()
    try:
        path = exporters.export_image(ctx.store, ref, dest, fmt, compression=compression,
                                      progress=progress)
    finally:
        progress.close()
    click.echo(path)
