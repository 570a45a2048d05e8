#!/usr/bin/env python3
"""What the default confinement adds to a container's start, step by step, against a plain
fork + exec of /bin/true (the same work with nothing confined), interleaved in one run:

  * prepare        the host side: the cached BPF of the default profile read (a cache hit)
  * compile        the same profile compiled by libseccomp (what a cache miss costs, once)
  * fork+exec      a child that execs /bin/true, nothing else (the floor)
  * + enter        the child confines itself first: seccomp filter, bounding set, capset
  * + views        and before that masks /proc and /sys paths in a private mount namespace

    python3 bench/confinement.py [--runs 50]
Needs root. Medians and minimums in milliseconds.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from common.home import Home  # noqa: E402
from runtime.process import capabilities, confinement, kernel_views, seccomp  # noqa: E402

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, MS_REC, MS_PRIVATE = 0x00020000, 16384, 1 << 18


def timed_child(setup: Callable[[], None]) -> float:
    """Wall time of fork, `setup` in the child, exec /bin/true, wait."""
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            setup()
            os.execv("/bin/true", ["true"])
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the child failed")
    return time.perf_counter() - t


def private_views() -> None:
    if _libc.unshare(CLONE_NEWNS) != 0 or _libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
        raise OSError(ctypes.get_errno(), "private mount namespace")
    kernel_views.mask()
    kernel_views.make_readonly()


def views_then_enter(conf: confinement.Confinement) -> None:
    private_views()
    confinement.enter(conf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(tmp)
        conf = confinement.prepare(home)                      # fills the cache
        profile = seccomp.parse_profile(seccomp.default_profile_text())
        target = seccomp.Target.here(capabilities.DEFAULT)
        results: dict[str, list[float]] = {k: [] for k in
                                           ("prepare", "compile", "fork+exec", "+ enter", "+ views")}
        for _ in range(args.runs):
            t = time.perf_counter()
            confinement.prepare(home)
            results["prepare"].append(time.perf_counter() - t)
            t = time.perf_counter()
            seccomp.compile_bpf(profile, target)
            results["compile"].append(time.perf_counter() - t)
            results["fork+exec"].append(timed_child(lambda: None))
            results["+ enter"].append(timed_child(lambda: confinement.enter(conf)))
            results["+ views"].append(timed_child(lambda: views_then_enter(conf)))
    print(f"runs: {args.runs} each, interleaved; load average {os.getloadavg()[0]:.1f}; "
          f"filter {len(conf.seccomp_bpf or b'') // 8} BPF instructions")
    for name, values in results.items():
        print(f"{name:12} median {statistics.median(values) * 1000:7.2f} ms   "
              f"min {min(values) * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
