"""scripts/install.sh installs every system package whose programs the code, the tests and the
benches run, so `bash scripts/test.sh` on a fresh Debian machine skips nothing. Programs are
found in the sources (shutil.which("x"), tool("x"), subprocess argv[0], /usr/bin/x literals), mapped to
their Debian package with dpkg, and each package must be in install.sh's list unless Debian
always has it (Essential or priority required/important)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("cocker", "builder", "runtime", "registry", "srepo_server", "common", "tests", "bench",
           "scripts")
OWN_PROGRAMS = {"cocker", "srepo-server"}
PROGRAM_PATTERNS = [
    re.compile(r"""shutil\.which\(\s*["']([\w.+-]+)["']"""),
    re.compile(r"""\btool\(\s*["']([\w.+-]+)["']"""),   # tests/support/tools.py
    re.compile(r"""subprocess\.(?:run|Popen|check_output|check_call|call)\(\s*\[\s*["']([\w./+-]+)["']"""),
    re.compile(r"""["'](/usr/s?bin/[\w.+-]+)["']"""),
]


def install_packages() -> set[str]:
    text = (ROOT / "scripts" / "install.sh").read_text()
    m = re.search(r"^pkgs=\((.*?)\)", text, re.S | re.M)
    assert m, "install.sh has no pkgs=(...) list"
    return set(m.group(1).split())


def programs() -> dict[str, str]:
    """program -> a file that runs it."""
    found: dict[str, str] = {}
    for top in SOURCES:
        for path in (ROOT / top).rglob("*"):
            if (path.suffix not in (".py", ".sh") or "__pycache__" in path.parts
                    or path.name == Path(__file__).name):
                continue
            text = path.read_text(errors="replace")
            for rx in PROGRAM_PATTERNS:
                for prog in rx.findall(text):
                    found.setdefault(prog, str(path.relative_to(ROOT)))
    return found


def package_of(prog: str) -> str | None:
    exe = prog if prog.startswith("/") else shutil.which(prog, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not exe or not os.path.exists(exe):
        return None
    real = os.path.realpath(exe)
    # merged /usr: dpkg may know the file under /bin or /sbin
    merged = [p.replace("/usr/bin/", "/bin/").replace("/usr/sbin/", "/sbin/") for p in (exe, real)]
    for candidate in dict.fromkeys([exe, real, *merged]):
        p = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def always_there(pkg: str) -> bool:
    p = subprocess.run(["dpkg-query", "-W", "-f", "${Essential} ${Priority}", pkg],
                       capture_output=True, text=True)
    essential, _, priority = p.stdout.partition(" ")
    return essential == "yes" or priority in ("required", "important")


def test_install_script_lists_every_package_the_code_runs():
    wanted = install_packages()
    missing, unknown = [], []
    for prog, where in sorted(programs().items()):
        if prog.startswith(("python", "/usr/bin/python")) or prog in OWN_PROGRAMS:
            continue
        pkg = package_of(prog)
        if pkg is None:
            unknown.append(f"{prog} (run by {where})")
        elif pkg not in wanted and not always_there(pkg):
            missing.append(f"{pkg} for {prog} (run by {where})")
    assert not missing, "install.sh does not install: " + "; ".join(missing)
    assert not unknown, "no Debian package provides: " + "; ".join(unknown)


def test_the_scan_finds_the_programs_it_should():
    found = programs()
    for prog in ("skopeo", "podman", "sshd", "nginx", "docker-registry", "zsh", "chromium"):
        assert any(p == prog or p.endswith("/" + prog) for p in found), prog
