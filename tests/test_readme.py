"""The README's tour, run: every command of every `sh` block under "## A tour", in order, on a
fresh store, as a reader would type it (tests/support/readme.py: optional parts left out, the
first of each choice). A README claim that drifts from the code fails here.

What a reader's machine has and a test machine must stand in for is substituted, and only that:
ports (8080, 2222, 5000) become free ones, /srv and /etc paths become temporary ones,
`deploy@build-host` is the test sshd (an ssh config entry named build-host), the default bridge
and the network's subnet are private to the test. Commands that need a person at a terminal run
in tmux and are typed into; servers the tour starts run in the background until the end of
their block. A few commands must also print what the README says (CLAIMS). A command whose comment starts
with "refused" must fail with a one-line error naming what
the comment names; every other command must exit 0.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.net import free_port, unique, unique_subnet
from tests.support.readme import TourCommand, tour_commands
from tests.support.sshd import keygen, scripts_dir, sshd
from tests.support.tmux import TmuxTerminal

pytestmark = pytest.mark.root

README = Path(__file__).resolve().parent.parent / "README.md"
RECIPE_RE = re.compile(r"```toml\n(.*?)```", re.S)


class Tour:
    def __init__(self, work: Path, sshd) -> None:
        self.work, self.sshd = work, sshd
        self.home = work / "home"
        self.background: list[tuple[str, subprocess.Popen]] = []
        self.ports = {"8080": free_port(), "2222": free_port(), "5000": free_port()}
        self.subst = self._substitutions()
        self.env = self._env()
        self.log: list[str] = []

    # the reader's machine, stood in for ------------------------------------------------
    def _substitutions(self) -> list[tuple[str, str]]:
        w = str(self.work)
        return [
            ("deploy@build-host/srv/cocker-repo", f"root@build-host{w}/remote-repo"),
            ("file:///mnt/usb/repo", f"file://{w}/usb-repo"),
            ("/srv/www", f"{w}/www"),
            ("/srv/repo", f"{w}/remote-repo"),      # the repository the tour pushed to
            ("/etc/srepo/", f"{w}/srepo-etc/"),
            ("/run/cocker/cocker.sock", f"{w}/cocker.sock"),
            ("10.77.0.0/24", unique_subnet()),
            ("ssh build-host", f"ssh -F {self.sshd.client_home}/.ssh/config build-host"),
            *[(f"127.0.0.1:{p}", f"127.0.0.1:{n}") for p, n in self.ports.items()],
        ]

    def _env(self) -> dict[str, str]:
        bin_dir = self.work / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "cocker"
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m cocker.main \"$@\"\n")
        wrapper.chmod(0o755)
        env = self.sshd.client_env()
        env.update({
            "PATH": f"{bin_dir}:{scripts_dir()}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": str(README.parent),
            "COCKER_HOME": str(self.home), "COCKER_QUIET": "1",
            "COCKER_BRIDGE": unique("ckd"), "COCKER_BRIDGE_SUBNET": unique_subnet(),
            "TERM": "xterm",
        })
        for k in ("COCKER_HOST", "COCKER_TOKEN", "COCKER_TOKEN_FILE"):
            env.pop(k, None)
        return env

    def prepare(self, readme: str) -> None:
        """The files the tour's commands name, made as a reader would have them."""
        from builder.testimage import make_busybox_rootfs
        w = self.work
        make_busybox_rootfs(str(w / "rootfs"))
        (w / "www").mkdir()
        (w / "www" / "index.html").write_text("served from /srv/www\n")
        (w / "site.conf").write_text("listen 80\n")
        (w / "hello.txt").write_text("hello from the recipe\n")
        recipe = RECIPE_RE.search(readme)
        assert recipe, "the README's recipe (a toml block) is gone"
        (w / "cocker-build.toml").write_text(recipe.group(1))
        gw = unique_subnet().rsplit(".", 1)[0] + ".1"
        # brocker's service file, with the image cocker needs (brocker ran host binaries)
        (w / "svc.json").write_text(json.dumps({"name": "mydetails", "bridge-ip": gw,
                                                "image": "demo/busybox", "replicas": 0}))
        (w / "app.json").write_text(json.dumps({"service-name": "mydetails",
                                                "command": "httpd -f -p 8080 -h /app",
                                                "copy-file": True, "file": str(w / "hello.txt")}))
        etc = w / "srepo-etc"
        etc.mkdir()
        keygen(str(etc / "host_key"), "srepo-test-host")
        shutil.copy(self.sshd.client_key + ".pub", etc / "authorized_keys")
        (etc / "tokens").write_text("tour-token-0123456789abcdef read,write\n")
        (etc / "tokens").chmod(0o600)
        # `build-host` is the test sshd, under the name the README gives it
        ssh = Path(self.sshd.client_home) / ".ssh"
        self.sshd.write_ssh_config(
            f"Host build-host\n  HostName {self.sshd.host}\n  Port {self.sshd.port}\n"
            f"  User root\n  IdentityFile {self.sshd.client_key}\n"
            f"  UserKnownHostsFile {self.sshd.known_hosts}\n  StrictHostKeyChecking yes\n")
        kind_b64 = self.sshd.host_key_line().split(None, 1)[1]
        with open(ssh / "known_hosts", "a") as f:
            f.write(f"build-host {kind_b64}[build-host]:{self.sshd.port} {kind_b64}")

    def concrete(self, cmd: str) -> str:
        for a, b in self.subst:
            cmd = cmd.replace(a, b)
        if cmd == "cocker daemon":
            cmd += f" --socket {self.work}/cocker.sock"
        return cmd

    # running -----------------------------------------------------------------------------
    def run(self, tc: TourCommand) -> subprocess.CompletedProcess:
        cmd = self.concrete(tc.command)
        p = subprocess.run(["bash", "-c", cmd], cwd=self.work, env=self.env, capture_output=True,
                           text=True, timeout=300, stdin=subprocess.DEVNULL)
        self.log.append(f"$ {cmd}\n{p.stdout}{p.stderr}")
        where = f"README line {tc.line}: `{tc.text}`"
        if tc.comment.startswith("refused"):
            # a refusal the README promises: one clear line, non-zero, nothing done
            assert p.returncode != 0, f"{where} should be refused ({tc.comment}) but ran:\n{p.stdout}"
            assert p.stderr.startswith("cocker: error: ") and p.stderr.count("\n") == 1, p.stderr
            for word in re.findall(r"container (\S+)", tc.comment):
                assert word in p.stderr, f"{where}: the refusal does not name {word}: {p.stderr}"
            return p
        assert p.returncode == 0, (f"{where} exited {p.returncode}\n"
                                   f"ran: {cmd}\n{p.stdout}\n{p.stderr}\n"
                                   "before it:\n" + "\n".join(self.log[-6:-1]))
        return p

    def start_background(self, tc: TourCommand, ready: Callable[[], bool]) -> None:
        cmd = self.concrete(tc.command)
        with open(self.work / f"bg-{len(self.background)}.log", "w") as log:
            proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=self.work, env=self.env,
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.background.append((cmd, proc))
        deadline = time.monotonic() + 30
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                out = (self.work / f"bg-{len(self.background) - 1}.log").read_text()
                raise AssertionError(f"README line {tc.line}: `{tc.text}` did not come up "
                                     f"(exit {proc.poll()}):\n{out}")
            time.sleep(0.1)

    def stop_background(self) -> None:
        for cmd, proc in self.background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), \
                f"`{cmd}` ended with {proc.returncode}"
        self.background.clear()

    def terminal(self, tc: TourCommand) -> TmuxTerminal:
        return TmuxTerminal(str(self.work), self.concrete(tc.command), env=self.env,
                            cwd=str(self.work))

    def cocker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "cocker.main", *args], env=self.env,
                           capture_output=True, text=True, timeout=300, cwd=self.work)
        assert not check or p.returncode == 0, p.stderr
        return p

    def cleanup(self) -> None:
        self.stop_background()
        for s in json.loads(self.cocker("service", "ls", "--json", check=False).stdout or "[]"):
            self.cocker("service", "rm", s["name"], check=False)
        for c in json.loads(self.cocker("container", "ls", "--all", "--json",
                                        check=False).stdout or "[]"):
            self.cocker("container", "rm", "-f", c["name"], check=False)
        for n in json.loads(self.cocker("network", "ls", "--json", check=False).stdout or "[]"):
            if not n.get("default"):
                self.cocker("network", "rm", n["name"], check=False)

    def assert_nothing_left(self) -> None:
        assert json.loads(self.cocker("service", "ls", "--json").stdout) == []
        assert json.loads(self.cocker("container", "ls", "--all", "--json").stdout) == []
        links = set(os.listdir("/sys/class/net"))
        assert self.env["COCKER_BRIDGE"] not in links
        assert not [cmd for cmd, proc in self.background if proc.poll() is None]


def _listening(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False
    return ready


def _unix_listening(path: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            return True
        except OSError:
            return False
    return ready


# commands that need a person at a terminal: what the person types, and what they see
def shell_in_container(tour: Tour, tc: TourCommand) -> None:
    with tour.terminal(tc) as term:
        term.wait_for("/ #")
        term.type("tty && echo IS-A-$((6*7))-TTY\n")
        term.wait_for("IS-A-42-TTY")
        term.type("exit\n")
        assert term.exit_status() == 0, term.screen()


def attach_and_detach(tour: Tour, tc: TourCommand) -> None:
    with tour.terminal(tc) as term:
        time.sleep(1)
        term.keys("C-p", "C-q")
        assert term.exit_status() == 0, term.screen()
    status = json.loads(tour.cocker("container", "inspect", "web", "--json").stdout)["status"]
    assert status == "running"                     # detaching leaves it running


def edit_image(tour: Tour, tc: TourCommand) -> None:
    before = {i["version"] for i in json.loads(tour.cocker("image", "ls", "demo/busybox",
                                                           "--json").stdout)}
    with tour.terminal(tc) as term:
        term.wait_for("#")
        term.type("echo edited > /etc/edited\nexit\n")
        assert term.exit_status() == 0, term.screen()
    after = {i["version"] for i in json.loads(tour.cocker("image", "ls", "demo/busybox",
                                                          "--json").stdout)}
    assert len(after - before) == 1, (before, after)   # its changes became the next version


INTERACTIVE: dict[str, Callable[[Tour, TourCommand], None]] = {
    "cocker container run --rm -it demo/busybox": shell_in_container,
    "cocker container attach web": attach_and_detach,
    "cocker image edit demo/busybox": edit_image,
}


# what some commands print, as the README says (the rest must succeed)
CLAIMS: dict[str, Callable[[str], bool]] = {
    "cocker image ls": lambda out: re.search(r"^demo/busybox\s+1\.0\.0\s", out, re.M) is not None,
    "cocker container run --rm demo/busybox:1.0.0 cat /etc/motd":
        lambda out: out == "--- Welcome to a cocker container ---\n",
    "cocker container ls": lambda out: re.search(r"^web\s.*\brunning", out, re.M) is not None,
    "curl http://127.0.0.1:8080/": lambda out: re.fullmatch(r"web-\d+\n", out) is not None,
}


def background_ready(tour: Tour, cmd: str) -> Callable[[], bool] | None:
    """For a server the tour starts: how to tell it is serving (None: not a server)."""
    if cmd.startswith("srepo-server") and "--ssh 127.0.0.1:2222" in cmd:
        return _listening(tour.ports["2222"])
    if cmd.startswith("srepo-server") and "--http 127.0.0.1:5000" in cmd:
        return _listening(tour.ports["5000"])
    if cmd == "cocker daemon":
        return _unix_listening(f"{tour.work}/cocker.sock")
    return None


def test_readme_tour_runs(tmp_path, sshd):
    readme = README.read_text()
    commands = tour_commands(readme)
    assert len(commands) > 40, "the tour lost its commands"
    plain = {tc.command for tc in commands}
    assert set(CLAIMS) <= plain and set(INTERACTIVE) <= plain, \
        f"checked commands no longer in the README: {(set(CLAIMS) | set(INTERACTIVE)) - plain}"
    tour = Tour(tmp_path, sshd)
    tour.prepare(readme)
    block = 0
    try:
        for tc in commands:
            if tc.block != block:
                tour.stop_background()
                block = tc.block
            if tc.command in INTERACTIVE:
                INTERACTIVE[tc.command](tour, tc)
                continue
            ready = background_ready(tour, tc.command)
            if ready is not None:
                tour.start_background(tc, ready)
                continue
            p = tour.run(tc)
            claim = CLAIMS.get(tc.command)
            assert claim is None or claim(p.stdout), \
                f"README line {tc.line}: `{tc.text}` printed {p.stdout!r}"
    finally:
        tour.cleanup()
    tour.assert_nothing_left()
