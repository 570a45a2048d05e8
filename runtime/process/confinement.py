"""A container's privileges in one value: capabilities, seccomp filter, no_new_privs. Prepared on
the host side before fork (so the child reads no profile and compiles nothing), entered by the
child as the last step before exec, in runc's order:

    without no_new_privs: seccomp (needs CAP_SYS_ADMIN, still held) -> bounding set -> user -> caps
    with no_new_privs:    bounding set -> user -> caps -> no_new_privs -> seccomp
"""

from typing import NamedTuple

from common.home import Home
from runtime.process import capabilities, seccomp


class Confinement(NamedTuple):
    caps: frozenset[str]
    seccomp_bpf: bytes | None           # None: unconfined
    no_new_privs: bool = False

    @property
    def cap_mask(self) -> int:
        return capabilities.to_mask(self.caps)


def prepare(home: Home, *, cap_add: list[str] | tuple[str, ...] = (),
            cap_drop: list[str] | tuple[str, ...] = (), privileged: bool = False,
            seccomp_profile: str | None = None, no_new_privs: bool = False) -> Confinement:
    """`seccomp_profile`: None for the default profile, "unconfined", or a profile's JSON text
    (as read by seccomp.read_profile_file when the container was created). --privileged means
    every capability and no filter, as in docker."""
    caps = capabilities.resolve(cap_add, cap_drop, privileged=privileged)
    if privileged or seccomp_profile == seccomp.UNCONFINED:
        bpf = None
    else:
        bpf = seccomp.filter_for(home, seccomp_profile, caps)
    return Confinement(caps, bpf, no_new_privs)


def enter(conf: Confinement, uid: int = 0, gid: int = 0, groups: list[int] | None = None) -> None:
    """Confine the calling process (the container's first process or an exec'd one) and become
    uid:gid with `groups`. Call it last before exec: afterwards the process may have no
    capability left, and with a user profile some syscalls may be refused."""
    if conf.seccomp_bpf is not None and not conf.no_new_privs:
        seccomp.install(conf.seccomp_bpf)
    capabilities.apply(conf.cap_mask, uid, gid, groups)
    if conf.no_new_privs:
        seccomp.set_no_new_privs()
        if conf.seccomp_bpf is not None:
            seccomp.install(conf.seccomp_bpf)
