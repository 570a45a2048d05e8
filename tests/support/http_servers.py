"""Fixtures for the HTTP door tests: tiny images, a srepo-server --http and a docker-registry,
each on 127.0.0.1 at a free port, stopped by pid."""

from __future__ import annotations

import base64
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

from registry.oci import manifest as oci
from registry.repo.layout import LayoutRepo
from tests.support.tools import tool

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
    from registry.oci import digest as digestmod
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
                 extra: list[str] | None = None, token_lines: list[str] = ()) -> None:
        """`token_lines` are added to the token file (TOKEN PERMS [PREFIX...])."""
        self.root, self.workdir = root, workdir
        self.port = free_port()
        self.tokens = os.path.join(workdir, "tokens")
        with open(self.tokens, "w") as f:
            f.write(f"{TOKEN} all\n{RO_TOKEN} read\n" + "".join(t + "\n" for t in token_lines))
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
        with open(os.path.join(self.workdir, "server.err"), "ab") as err:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stderr=err)
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


DOCKER_REGISTRY = tool("docker-registry")


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
        with open(os.path.join(self.dir, "err.log"), "ab") as err:
            self.proc = subprocess.Popen([DOCKER_REGISTRY, "serve", cfg],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err)
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


class TokenRegistry:
    """docker-registry in token-auth mode, with a small token service beside it that signs
    JWTs (RS256, x5c) for one user, the way Docker Hub, Harbor or GitLab hand out tokens."""

    USER, PASSWORD = "tokenuser", "token-password-1"

    def __init__(self, workdir: str) -> None:
        import datetime
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.dir = os.path.join(workdir, f"token-registry-{os.getpid()}")
        os.makedirs(self.dir, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token issuer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .sign(key, hashes.SHA256()))
        bundle = os.path.join(self.dir, "root.pem")
        with open(bundle, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.issued: list[str] = []
        outer = self

        def b64url(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).decode().rstrip("=")

        def sign(scope: str) -> str:
            from cryptography.hazmat.primitives.asymmetric import padding
            access = []
            for s in filter(None, scope.split(" ")):
                typ, _, rest = s.partition(":")
                nm, _, actions = rest.rpartition(":")
                access.append({"type": typ, "name": nm, "actions": actions.split(",")})
            t = int(time.time())
            header = {"typ": "JWT", "alg": "RS256", "x5c": [der]}
            claims = {"iss": "test-issuer", "sub": outer.USER, "aud": "test-registry",
                      "exp": t + 600, "nbf": t - 10, "iat": t, "jti": os.urandom(8).hex(),
                      "access": access}
            signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
            sig = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
            return signing + "." + b64url(sig)

        class TokenHandler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:
                pass

            def do_GET(self) -> None:
                import urllib.parse
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                want = "Basic " + base64.b64encode(
                    f"{outer.USER}:{outer.PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                scope = " ".join(q.get("scope", []))
                outer.issued.append(scope)
                body = json.dumps({"token": sign(scope), "expires_in": 600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.token_server = ThreadingHTTPServer(("127.0.0.1", 0), TokenHandler)
        self.token_server.daemon_threads = True
        threading.Thread(target=self.token_server.serve_forever, daemon=True).start()
        realm = f"http://127.0.0.1:{self.token_server.server_address[1]}/token"
        self.port = free_port()
        cfg = os.path.join(self.dir, "config.yml")
        with open(cfg, "w") as f:
            f.write(json.dumps({
                "version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": os.path.join(self.dir, "data")},
                            "delete": {"enabled": True}},
                "http": {"addr": f"127.0.0.1:{self.port}"},
                "auth": {"token": {"realm": realm, "service": "test-registry",
                                   "issuer": "test-issuer", "rootcertbundle": bundle}},
            }))
        with open(os.path.join(self.dir, "err.log"), "ab") as err:
            self.proc = subprocess.Popen([DOCKER_REGISTRY, "serve", cfg],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err)
        wait_port(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.token_server.shutdown()
        self.token_server.server_close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
