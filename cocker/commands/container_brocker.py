"""brocker's container files on `cocker container run -f FILE.json`: a file with a
`service-name` makes the container a member of that service (on its network, in its nginx
rotation, watched by its monitor) instead of a lone container."""

from __future__ import annotations

import click

from cocker.commands.container import container

_run = container.commands.get("run")
_plain_run = _run.callback if _run is not None else None


def _run_with_services(*args, **kw):
    spec_file = kw.get("spec_file")
    if spec_file:
        from runtime.brocker import files as brocker_json
        data = brocker_json.read_json(spec_file)
        if data.get("service-name") is not None:
            ctx = click.get_current_context().obj
            name, _ = brocker_json.run_file(ctx.store, spec_file)
            click.echo(name)
            return 0
    assert _plain_run is not None  # installed only over an existing run command
    return _plain_run(*args, **kw)


if _run is not None:
    _run.callback = _run_with_services
