"""The project's exception hierarchy.

Library code raises these; only the command line turns them into one-line messages.
"""


class CockerError(Exception):
    """Base of every error cocker reports to a user (its exit status: common/exit_codes.py)."""


class InvalidReference(CockerError):
    """A name, version, reference or digest that does not parse."""


class UsageError(CockerError):
    """Arguments that make no sense together."""


class NotFound(CockerError):
    """An image, blob, container, network or repo that does not exist."""


class NotARepository(NotFound):
    """A path that holds no repository layout (no oci-layout): maybe a legacy cocker repo,
    maybe a place to `--init`."""


class AlreadyExists(CockerError):
    """A name that is already taken."""


class DigestMismatch(CockerError):
    """Content that does not hash to the digest it claims."""


class CorruptImage(CockerError):
    """An archive, manifest or config that is malformed or hostile."""


class UnsafeArchive(CorruptImage):
    """A tar that tries to escape its root, plant devices, or exhaust the disk."""


class LockBusy(CockerError):
    """Another process holds a lock and we were told not to wait."""


class Conflict(CockerError):
    """A compare-and-swap lost its race, or an object is in use."""


class TransportError(CockerError):
    """A remote could not be reached, refused us, or broke the protocol."""


class AuthError(TransportError):
    """Authentication or host-key verification failed."""


class PermissionDenied(CockerError):
    """The caller may not do this (not root, read-only key, ACL)."""


class RuntimeFailure(CockerError):
    """The kernel refused something the runtime needed (mount, netns, cgroup)."""
