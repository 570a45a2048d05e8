"""The seccomp filter of a container: profiles in docker's JSON format (the default one ships as
seccomp_default.json beside this file), compiled to BPF by libseccomp once per (profile,
architecture, capabilities, kernel) and cached under the store, so a start only reads bytes and
hands them to prctl(PR_SET_SECCOMP).

Loading a filter without no_new_privs needs CAP_SYS_ADMIN: the child installs it before it drops
its capabilities (as runc does), or last of all when no_new_privs is set.
"""

import ctypes
import hashlib
import json
import os
from typing import Any, NamedTuple

from common.errors import RuntimeFailure, UsageError
from common.fsutil import atomic_write
from common.home import Home

DEFAULT_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp_default.json")
UNCONFINED = "unconfined"

EPERM = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_INSN = 8                  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k

_ACTIONS = {"SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP",
            "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG"}
# profile spelling -> pyseccomp's; names only, so checking a profile does not load libseccomp
_OPS = {"SCMP_CMP_NE": "NE", "SCMP_CMP_LT": "LT", "SCMP_CMP_LE": "LE", "SCMP_CMP_EQ": "EQ",
        "SCMP_CMP_GE": "GE", "SCMP_CMP_GT": "GT", "SCMP_CMP_MASKED_EQ": "MASKED_EQ"}
_ARCHES = {f"SCMP_ARCH_{a}": a for a in (
    "X86", "X86_64", "X32", "ARM", "AARCH64", "MIPS", "MIPS64", "MIPS64N32", "MIPSEL", "MIPSEL64",
    "MIPSEL64N32", "PPC", "PPC64", "PPC64LE", "S390", "S390X", "RISCV64", "PARISC", "PARISC64",
    "LOONGARCH64", "M68K", "SH", "SHEB")}
# uname -m -> (libseccomp name, Go name as profiles' includes/excludes "arches" spell it)
_MACHINES = {"x86_64": ("SCMP_ARCH_X86_64", "amd64"), "aarch64": ("SCMP_ARCH_AARCH64", "arm64"),
             "s390x": ("SCMP_ARCH_S390X", "s390x"), "ppc64le": ("SCMP_ARCH_PPC64LE", "ppc64le"),
             "riscv64": ("SCMP_ARCH_RISCV64", "riscv64")}


# part of every cache key: a change to compile_bpf makes the filters it cached stale
COMPILER = "2"
# syscalls newer than libseccomp 2.5 (Debian 12's), by number on each native architecture
# (kernel ABI: the same numbers in the unified table of x86_64 and the asm-generic ones)
_UNIFIED_NEWER = {"statmount": 457, "listmount": 458, "lsm_get_self_attr": 459,
                  "lsm_set_self_attr": 460, "lsm_list_modules": 461, "mseal": 462,
                  "setxattrat": 463, "getxattrat": 464, "listxattrat": 465, "removexattrat": 466}
NEWER_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {**_UNIFIED_NEWER, "uretprobe": 335},
    "aarch64": dict(_UNIFIED_NEWER),
    "riscv64": {**_UNIFIED_NEWER, "riscv_hwprobe": 258},
}


class ProfileError(UsageError):
    """A seccomp profile that is not valid JSON in docker's format."""


class Target(NamedTuple):
    """What a compiled filter depends on besides the profile. (A NamedTuple, not a dataclass:
    this module is imported on every start, and a dataclass costs ~1.5 ms to define.)"""
    machine: str              # uname -m
    kernel: tuple[int, int]   # for the rules' minKernel
    caps: frozenset[str]      # the container's capabilities, without CAP_ prefix

    @classmethod
    def here(cls, caps: frozenset[str]) -> "Target":
        u = os.uname()
        return cls(u.machine, kernel_version(u.release), caps)

    def key(self) -> str:
        return f"{self.machine} {self.kernel[0]}.{self.kernel[1]} {','.join(sorted(self.caps))}"


def kernel_version(release: str) -> tuple[int, int]:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


# profiles ------------------------------------------------------------------------------
def default_profile_text() -> str:
    with open(DEFAULT_PROFILE) as f:
        return f.read()


def read_profile_file(path: str) -> str:
    """`--security-opt seccomp=FILE.json`: the file's text once it parses and compiles here,
    to be recorded with the container (a later edit of the file changes nothing)."""
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"seccomp profile {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        compile_bpf(parse_profile(text, path), Target.here(frozenset()))
    except ProfileError:
        raise
    except (OSError, ValueError) as e:
        raise ProfileError(f"seccomp profile {path}: libseccomp refused it: {e}") from None
    return text


def parse_profile(text: str, source: str = "seccomp profile") -> dict[str, Any]:
    """Parse and check a profile in docker's format; any fault is one ProfileError line."""
    try:
        prof = json.loads(text)
    except ValueError as e:
        raise ProfileError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(prof, dict):
        raise ProfileError(f"{source}: expected a JSON object")
    _check_action(prof.get("defaultAction"), source, "defaultAction")
    _check_errno(prof.get("defaultErrnoRet"), source, "defaultErrnoRet")
    if "architectures" in prof and "archMap" in prof:
        raise ProfileError(f"{source}: 'architectures' and 'archMap' are exclusive")
    for a in prof.get("architectures") or []:
        if a not in _ARCHES:
            raise ProfileError(f"{source}: unknown architecture {a!r}")
    for entry in prof.get("archMap") or []:
        if not isinstance(entry, dict):
            raise ProfileError(f"{source}: archMap entries are objects")
        for a in [entry.get("architecture"), *(entry.get("subArchitectures") or [])]:
            if a not in _ARCHES:
                raise ProfileError(f"{source}: unknown architecture {a!r}")
    rules = prof.get("syscalls") or []
    if not isinstance(rules, list):
        raise ProfileError(f"{source}: 'syscalls' must be a list")
    for i, rule in enumerate(rules):
        where = f"syscalls[{i}]"
        if not isinstance(rule, dict):
            raise ProfileError(f"{source}: {where} must be an object")
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ProfileError(f"{source}: {where} needs 'names', a list of syscall names")
        _check_action(rule.get("action"), source, f"{where}.action")
        _check_errno(rule.get("errnoRet"), source, f"{where}.errnoRet")
        for a in rule.get("args") or []:
            if (not isinstance(a, dict) or a.get("op") not in _OPS
                    or not isinstance(a.get("index"), int) or not 0 <= a["index"] <= 5
                    or not isinstance(a.get("value", 0), int)
                    or not isinstance(a.get("valueTwo", 0), int)):
                raise ProfileError(f"{source}: {where}.args: each needs index 0-5, integer "
                                   f"value(s) and an op among {', '.join(sorted(_OPS))}")
        for part in ("includes", "excludes"):
            flt = rule.get(part) or {}
            if not isinstance(flt, dict):
                raise ProfileError(f"{source}: {where}.{part} must be an object")
            if "minKernel" in flt and kernel_version(str(flt["minKernel"])) == (0, 0):
                raise ProfileError(f"{source}: {where}.{part}.minKernel: expected 'X.Y'")
    return prof


def _check_action(action: object, source: str, where: str) -> None:
    if action not in _ACTIONS:
        raise ProfileError(f"{source}: {where}: expected one of {', '.join(sorted(_ACTIONS))}"
                           f", got {action!r}")


def _check_errno(value: object, source: str, where: str) -> None:
    if value is not None and (not isinstance(value, int) or not 0 <= value < 4096):
        raise ProfileError(f"{source}: {where}: expected an errno number")


def _applies(rule: dict[str, Any], target: Target, go_arch: str) -> bool:
    """includes: every condition must hold; excludes: any condition drops the rule."""
    caps = {f"CAP_{c}" for c in target.caps}
    inc = rule.get("includes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and go_arch not in inc["arches"]:
        return False
    if inc.get("minKernel") and target.kernel < kernel_version(str(inc["minKernel"])):
        return False
    exc = rule.get("excludes") or {}
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    if exc.get("arches") and go_arch in exc["arches"]:
        return False
    return not (exc.get("minKernel") and target.kernel >= kernel_version(str(exc["minKernel"])))


def _action(lib: Any, name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ERRNO":
        return int(lib.ERRNO(EPERM if errno_ret is None else errno_ret))
    if name == "SCMP_ACT_TRACE":
        return int(lib.TRACE(EPERM if errno_ret is None else errno_ret))
    return int(getattr(lib, {"SCMP_ACT_KILL": "KILL_THREAD", "SCMP_ACT_KILL_THREAD": "KILL_THREAD",
                             "SCMP_ACT_KILL_PROCESS": "KILL_PROCESS", "SCMP_ACT_TRAP": "TRAP",
                             "SCMP_ACT_ALLOW": "ALLOW", "SCMP_ACT_LOG": "LOG"}[name]))


def _arches(prof: dict[str, Any], native: str) -> list[str]:
    if prof.get("architectures"):
        return list(prof["architectures"])
    for entry in prof.get("archMap") or []:
        if entry.get("architecture") == native:
            return [native, *(entry.get("subArchitectures") or [])]
    return [native]


def compile_bpf(prof: dict[str, Any], target: Target) -> bytes:
    """The classic BPF program libseccomp makes of `prof` for `target`. A syscall this
    libseccomp cannot name is added by its number on the native architecture when NEWER_SYSCALLS
    knows it (so new libcs that probe them get what the profile says, not EPERM), else left to
    the default action, as runc does."""
    # imported here, not at the top: loading libseccomp costs ~20 ms (find_library runs
    # ldconfig), which a start that finds its filter in the cache must not pay
    import pyseccomp

    native, go_arch = _MACHINES.get(target.machine, ("", target.machine))
    default = _action(pyseccomp, prof["defaultAction"], prof.get("defaultErrnoRet"))
    here = pyseccomp.system_arch()
    others = {getattr(pyseccomp.Arch, _ARCHES[a], None) for a in _arches(prof, native)} - {None, here}
    # raw numbers are refused in a filter of several architectures: the native one gets a
    # filter of its own, merged with the others' at the end
    main = pyseccomp.SyscallFilter(default)
    filters = [main]
    if others:
        rest = pyseccomp.SyscallFilter(default)
        for arch in others:
            rest.add_arch(arch)
        rest.remove_arch(here)
        filters.append(rest)
    newer = NEWER_SYSCALLS.get(target.machine, {})
    for rule in prof.get("syscalls") or []:
        if not _applies(rule, target, go_arch):
            continue
        action = _action(pyseccomp, rule["action"], rule.get("errnoRet"))
        if action == default:
            continue             # libseccomp refuses a rule that repeats the default
        args = [pyseccomp.Arg(a["index"], getattr(pyseccomp, _OPS[a["op"]]), a.get("value", 0),
                              a.get("valueTwo", 0))
                for a in rule.get("args") or []]
        # several comparisons of one argument are alternatives (docker's reading), not a conjunction
        indices = [a["index"] for a in rule.get("args") or []]
        groups = [[a] for a in args] if len(set(indices)) < len(indices) else [args]
        for name in rule.get("names") or [rule.get("name")]:
            nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
            targets = filters
            if nr == -1:         # __NR_SCMP_ERROR: unknown to this libseccomp
                if name not in newer:
                    continue
                nr, targets = newer[name], [main]
            for flt in targets:
                for group in groups:
                    flt.add_rule(action, nr, *group)
    if len(filters) > 1:
        main.merge(filters[1])
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            main.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


# the cache -----------------------------------------------------------------------------
def filter_for(home: Home, profile_text: str | None, caps: frozenset[str]) -> bytes:
    """The BPF program for a container: `profile_text` None means the default profile. Read
    from the cache when this (profile, architecture, kernel, capabilities) was compiled before;
    else compiled once and stored (tmp + rename, so a concurrent start never reads half)."""
    text = default_profile_text() if profile_text is None else profile_text
    target = Target.here(caps)
    key = hashlib.sha256(f"{COMPILER}\n{target.key()}\n{text}".encode()).hexdigest()
    path = home.seccomp_filter(key)
    try:
        with open(path, "rb") as f:
            bpf = f.read()
        if bpf and len(bpf) % _BPF_INSN == 0:
            return bpf
    except FileNotFoundError:
        pass
    try:
        bpf = compile_bpf(parse_profile(text), target)
    except (OSError, ValueError) as e:
        raise RuntimeFailure(f"cannot compile the seccomp profile: {e}") from None
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    atomic_write(path, bpf)
    return bpf


# in the child, between fork and exec ------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def set_no_new_privs() -> None:
    """No execve may grant privileges again (setuid bits, file capabilities)."""
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(NO_NEW_PRIVS): {os.strerror(e)}")


def install(bpf: bytes) -> None:
    """Attach the program to the calling thread (and what it forks and execs). Without
    no_new_privs this needs CAP_SYS_ADMIN: call it before the capabilities are dropped."""
    if not bpf or len(bpf) % _BPF_INSN:
        raise OSError(22, "seccomp: not a BPF program")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // _BPF_INSN, ctypes.cast(buf, ctypes.c_void_p))
    if _libc.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(prog),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp: {os.strerror(e)}")
