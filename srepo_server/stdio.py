"""The stdio door: `srepo-server --stdio --root PATH` speaks the smart protocol on stdin/stdout.

This is what an `ssh://host/PATH` push runs on the remote when srepo-server is installed
there (as git runs git-upload-pack), and what an OpenSSH `command=` line can pin a key to:

    command="srepo-server --stdio --root /srv/cocker --perms read,write --prefixes team/*" ssh-ed25519 AAAA...

stdout carries protocol bytes only: anything else (logs, warnings) goes to stderr, and the
descriptor is re-pointed so a stray print() in a library cannot corrupt the stream.
"""

from __future__ import annotations

import os
import signal
import sys

from common.errors import CockerError
from registry.repo.layout import LayoutRepo
from registry.wire import framing
from registry.wire.channel import tune_allocator
from srepo_server.access import Access
from srepo_server.handler import serve


def serve_stdio(root: str, access: Access | None = None, *, namespace: str | None = None,
                verbose: bool = False) -> None:
    # Keep the protocol stream private: dup the real stdout for the handler, then point fd 1
    # (and sys.stdout) at stderr.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    in_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # A client that hangs up should end us quietly, not with a traceback about SIGPIPE.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    tune_allocator()
    rfile = os.fdopen(in_fd, "rb", buffering=1 << 16)
    wfile = os.fdopen(out_fd, "wb", buffering=1 << 16)
    try:
        repo = LayoutRepo(root)
    except CockerError as e:
        # Answer the client's first request with the reason, so it reads "not a repository"
        # rather than "connection closed".
        _refuse(rfile, wfile, e)
        raise
    log = (lambda line: print(f"srepo-server[{os.getpid()}]: {line}", file=sys.stderr,
                              flush=True)) if verbose else None
    try:
        serve(rfile, wfile, repo, access, namespace=namespace, log=log)
    finally:
        for f in (wfile, rfile):
            try:
                f.close()
            except OSError:
                pass


def _refuse(rfile, wfile, exc: CockerError) -> None:
    try:
        if framing.read_line(rfile, framing.MAX_REQUEST_LINE) is not None:
            wfile.write(framing.encode(framing.error_frame(exc)))
            wfile.flush()
    except (CockerError, OSError):
        pass
