"""Fixtures for the HTTP door tests: tiny images, a srepo-server --http and a docker-registry,
each on 127.0.0.1 at a free port, stopped by pid."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request

from registry import oci
from registry.layout import LayoutRepo

TOKEN = "test-token-rw-0123456789"
RO_TOKEN = "test-token-ro-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def tar_gz(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, data in sorted(files.items()):
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            t.addfile(ti, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), raw.getvalue()


def make_image(repo: LayoutRepo, name: str, version: str, files: dict[str, bytes] | None = None,
               extra_layers: list[bytes] | None = None) -> str:
    """Publish a small gzip-layered OCI image in `repo`; returns the manifest digest."""
    from registry import digest as digestmod
    layers, diff_ids = [], []
    for content in [files or {"hello.txt": f"{name}:{version}\n".encode()}] + \
            [{"blob.bin": b} for b in (extra_layers or [])]:
        gz, raw = tar_gz(content)
        repo.put_blob_bytes(digestmod.of_bytes(gz), gz)
        layers.append(oci.descriptor(oci.LAYER_GZIP, gz))
        diff_ids.append(digestmod.of_bytes(raw))
    config = oci.canonical_json(oci.new_config(diff_ids, created="2024-01-01T00:00:00Z"))
    repo.put_blob_bytes(digestmod.of_bytes(config), config)
    manifest = oci.canonical_json(oci.new_manifest(config, layers))
    d = digestmod.of_bytes(manifest)
    repo.put_blob_bytes(d, manifest)
    repo.put_ref(name, version, d)
    return d


class SrepoHttp:
    """`srepo-server --http` as a real subprocess."""

    def __init__(self, root: str, workdir: str, *, anonymous_read: bool = True,
                 extra: list[str] | None = None) -> None:
        self.root, self.workdir = root, workdir
        self.port = free_port()
        self.tokens = os.path.join(workdir, "tokens")
        with open(self.tokens, "w") as f:
            f.write(f"{TOKEN} all\n{RO_TOKEN} read\n")
        self.log = os.path.join(workdir, f"access-{self.port}.log")
        self.args = [sys.executable, "-m", "srepo_server.main", "--root", root,
                     "--http", f"127.0.0.1:{self.port}", "--token-file", self.tokens,
                     "--access-log", self.log] + (["--anonymous-read"] if anonymous_read else []) \
            + (extra or [])
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.workdir, "server.err"), "ab"))
        wait_port(self.port, self.proc)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc else None


DOCKER_REGISTRY = shutil.which("docker-registry")


class DockerRegistry:
    """The CNCF distribution registry from Debian, filesystem storage in tmp."""

    def __init__(self, workdir: str) -> None:
        self.port = free_port()
        self.dir = os.path.join(workdir, f"docker-registry-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        cfg = os.path.join(self.dir, "config.yml")
        with open(cfg, "w") as f:
            f.write(json.dumps({
                "version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": os.path.join(self.dir, "data")},
                            "delete": {"enabled": True}},
                "http": {"addr": f"127.0.0.1:{self.port}",
                         "debug": {"addr": "", "prometheus": {"enabled": False}}},
            }))  # YAML is a superset of JSON
        self.proc = subprocess.Popen([DOCKER_REGISTRY, "serve", cfg], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "err.log"), "ab"))
        wait_port(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def request(url: str, method: str = "GET", data: bytes | None = None,
            headers: dict | None = None, token: str | None = TOKEN):
    """(status, headers, body) without raising on 4xx/5xx."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
