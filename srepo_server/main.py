"""`srepo-server` entry point.

`srepo-server --stdio --root PATH [--perms LIST] [--prefixes LIST]` is what every ssh://
push and pull starts on the remote, so that invocation is parsed here by hand and served
without importing click or the HTTP/SSH door modules (tens of ms per connection). Anything
else goes to the full command line in `srepo_server.cli`.
"""

from __future__ import annotations

import sys

_STDIO_VALUES = ("--root", "--perms", "--prefixes")


def stdio_args(argv: list[str]) -> dict[str, str] | None:
    """{"root", "perms"?, "prefixes"?} for a plain --stdio invocation; None for anything
    else (other options, help, a repeated or missing value), which the click CLI handles."""
    if "--stdio" not in argv:
        return None
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg == "--stdio" and "stdio" not in out:
            out["stdio"] = ""
        elif name in _STDIO_VALUES and name[2:] not in out:
            if not eq:
                i += 1
                if i >= len(argv):
                    return None
                value = argv[i]
            out[name[2:]] = value
        else:
            return None
        i += 1
    del out["stdio"]
    return out if out.get("root") else None


def _serve_stdio(opts: dict[str, str]) -> None:
    from common.errors import CockerError
    from common.exit_codes import exit_code_for
    try:
        from srepo_server.stdio import serve_stdio
        access = None
        if "perms" in opts or "prefixes" in opts:
            from srepo_server.access import Access
            access = Access.parse(opts.get("perms") or "all", opts.get("prefixes"))
        serve_stdio(opts["root"], access)
    except CockerError as e:
        print(f"srepo-server: error: {e}", file=sys.stderr)
        sys.exit(exit_code_for(e))
    except KeyboardInterrupt:
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    opts = stdio_args(argv)
    if opts is not None:
        _serve_stdio(opts)
        return
    from srepo_server.cli import main as cli_main
    cli_main(argv)


if __name__ == "__main__":
    main()
