"""A tiny test image from the host's busybox-static (cocker's `install_test`)."""

from __future__ import annotations

import os
import shutil
import subprocess

from common.errors import NotFound

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def find_busybox() -> str:
    for p in BUSYBOX_CANDIDATES:
        if os.path.isfile(p):
            return p
    found = shutil.which("busybox")
    if not found:
        raise NotFound("busybox is not installed (Debian: apt-get install busybox-static)")
    return found


def make_busybox_rootfs(dest: str, busybox: str | None = None) -> str:
    """Fill `dest` with busybox, its applet links and the few /etc files a shell wants."""
    bb = busybox or find_busybox()
    for d in ("bin", "sbin", "etc", "root", "tmp", "proc", "sys", "dev", "usr/bin", "var/www"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    shutil.copy2(bb, os.path.join(dest, "bin", "busybox"))
    applets = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        p = os.path.join(dest, "bin", a)
        if not os.path.lexists(p):
            os.symlink("busybox", p)
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        "etc/group": "root:x:0:\nnogroup:x:65534:\n",
        "etc/hostname": "cocker\n",
        "etc/motd": "--- Welcome to a cocker container ---\n",
        "var/www/index.html": "hello from cocker\n",
    }
    for rel, text in files.items():
        with open(os.path.join(dest, rel), "w") as f:
            f.write(text)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    return dest
