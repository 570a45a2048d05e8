"""Fixtures shared by every test: a private store, a busybox rootfs, the CLI as a subprocess.

Area-specific fixtures (sshd, servers, networks) live in tests/support/ modules that the
tests import explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.support.tools import tool

BUSYBOX = shutil.which("busybox")


@pytest.fixture
def home(tmp_path, monkeypatch) -> str:
    """A fresh COCKER_HOME for this test, also exported to subprocesses."""
    h = str(tmp_path / "home")
    monkeypatch.setenv("COCKER_HOME", h)
    monkeypatch.setenv("COCKER_QUIET", "1")
    # Its own default bridge and private /24 (not cocker0 on 10.88/16): tests running in
    # parallel, or on a host with real containers, never share a bridge (runtime/ipam.py).
    monkeypatch.setenv("COCKER_BRIDGE", f"ckt{os.getpid() % 100000}{os.urandom(2).hex()}")
    monkeypatch.setenv("COCKER_BRIDGE_SUBNET",
                       f"10.{160 + os.urandom(1)[0] % 90}.{os.urandom(1)[0]}.0/24")
    return h


@pytest.fixture
def store(home):
    from registry.repo.store import Store
    return Store(home)


def make_busybox_rootfs(dest: str) -> str:
    """A minimal rootfs: busybox-static and its applet links, /etc basics."""
    tool("busybox")
    from builder.testimage import make_busybox_rootfs as make
    return make(dest)


@pytest.fixture
def busybox_rootfs(tmp_path) -> str:
    return make_busybox_rootfs(str(tmp_path / "rootfs"))


def run_cocker(*args: str, check: bool = True, input: str | None = None, timeout: float = 120,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (what users run), capturing text output."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "cocker.main", *args], capture_output=True,
                       text=True, input=input, timeout=timeout, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"cocker {' '.join(args)} exited {p.returncode}\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


@pytest.fixture
def cocker():
    return run_cocker


ROOT_NEEDED = "needs root: the suite runs as root (README), as CI does"


def pytest_runtest_setup(item):
    # a failure, not a skip: a test that cannot run has not passed
    if "root" in item.keywords and os.geteuid() != 0:
        pytest.fail(ROOT_NEEDED)


def pytest_addoption(parser):
    parser.addoption("--fail-on-skip", action="store_true",
                     help="exit non-zero when any test was skipped (CI: every dependency is installed)")


def pytest_sessionfinish(session, exitstatus):
    # A skip in CI means a missing package or privilege: a test that silently stopped testing.
    if not session.config.getoption("--fail-on-skip") or exitstatus not in (0, 1):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped") if reporter is not None else None
    if skipped:
        reporter.write_line(f"--fail-on-skip: {len(skipped)} skipped (reasons above): failing the run",
                            red=True)
        session.exitstatus = 1
