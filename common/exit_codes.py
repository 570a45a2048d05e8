"""The one table from the project's exception classes to process exit codes.

Both command lines (cocker, srepo-server) exit through it, so a script can tell a typo
from an unreachable server from a corrupt image without parsing messages.
"""

from __future__ import annotations

from common import errors

OK = 0
ERROR = 1      # anything else the user can act on: not found, conflict, permission, kernel
USAGE = 2      # bad arguments, options, references or limit settings
REMOTE = 3     # a remote could not be reached, refused us, or broke the protocol
INTEGRITY = 4  # content that is corrupt, hostile or does not match its digest

# First match wins: subclasses before their bases.
_TABLE: tuple[tuple[type[errors.CockerError], int], ...] = (
    (errors.UsageError, USAGE),
    (errors.InvalidReference, USAGE),
    (errors.TransportError, REMOTE),
    (errors.DigestMismatch, INTEGRITY),
    (errors.CorruptImage, INTEGRITY),
)

HELP = ("Exit status: 0 success; 1 error (not found, conflict, permission...); 2 usage "
        "(bad arguments, reference or setting); 3 remote unreachable or refused (SSH, HTTP, "
        "srepo); 4 integrity (corrupt or hostile content, digest mismatch). `container run` "
        "and `exec` exit with the container's own status.")


def exit_code_for(e: BaseException) -> int:
    """The exit status for an error that reached the command line. An error may carry its own
    (a workload that could not start exits 125/126/127, as with docker)."""
    own = vars(e).get("exit_code")
    if isinstance(own, int):
        return own
    for cls, code in _TABLE:
        if isinstance(e, cls):
            return code
    return ERROR
