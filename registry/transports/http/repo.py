"""`http://` / `https://` repositories: any OCI Distribution registry (docker-registry, Harbor,
cloud registries, srepo-server's HTTP door) as a cocker Repository.

    http[s]://[user[:password]@]host[:port][/prefix]

cocker names map to `<prefix>/<name>` on the registry. The Distribution API scopes blobs by
repository name, so blob operations happen on a view bound to one name (`for_name`); the
copy routine binds its source and destination, and `resolve` binds itself.

Credentials, first found wins: the URL's user:password; COCKER_REGISTRY_TOKEN (a bearer
token); COCKER_REGISTRY_USER + COCKER_REGISTRY_PASSWORD; the `auths` entry for the host in
$REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json (what
`skopeo login` / `docker login` write). Both Basic and the Bearer token flow
(`WWW-Authenticate: Bearer realm=...`) are answered. TLS is verified unless `insecure=True`
or COCKER_REGISTRY_INSECURE is 1 or lists the host[:port]; COCKER_REGISTRY_CA names a CA file.
"""

from __future__ import annotations

import base64
import contextlib
import copy as copymod
import http.client
import io
import json
import os
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable
from typing import BinaryIO, cast

from common.errors import (
    AuthError,
    Conflict,
    CorruptImage,
    DigestMismatch,
    InvalidReference,
    NotFound,
    PermissionDenied,
    TransportError,
    UsageError,
)
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.oci.reference import Reference
from registry.repo.repository import (
    ANY,
    MOUNT,
    REFERRERS,
    BlobWriter,
    RefRecord,
    Repository,
)
from registry.transports.http.upload_journal import UploadJournal, UploadRecord

CHUNK = 1 << 20
SMALL = 4 << 20  # blobs up to this size are sent in one request (and checked for manifest-ness)
UPLOAD_CHUNK = 8 << 20  # one PATCH; what a killed push can lose at most
RETRY_WAIT = float(os.environ.get("COCKER_HTTP_RETRY_WAIT", "60"))
RETRY_STATUSES = (502, 503, 504)  # the spec's "temporary condition"
MANIFEST_ACCEPT = ", ".join(oci.MANIFEST_TYPES + oci.INDEX_TYPES)
_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
              http.client.CannotSendRequest, http.client.BadStatusLine)


def _is_manifest(data: bytes) -> str | None:
    """The media type when `data` is an image manifest or index (not a config or a layer)."""
    if len(data) > SMALL or not data.lstrip()[:1] == b"{":
        return None
    try:
        m = oci.parse_manifest(data)
    except CorruptImage:
        return None
    if m.get("schemaVersion") != 2:
        return None
    return oci.manifest_media_type(data)


def _error_message(data: bytes) -> str:
    """The first error message of a registry's JSON error answer ("" when there is none)."""
    with contextlib.suppress(ValueError, AttributeError, IndexError, TypeError, KeyError):
        return str(json.loads(data)["errors"][0].get("message") or "")
    return ""


class _Unreachable(TransportError):
    """The connection failed or was lost (not an answer from the registry): worth retrying."""


class _Auth:
    """Credentials and the tokens obtained with them, shared by every view of one registry."""

    def __init__(self, host: str, user: str | None, password: str | None, token: str | None):
        self.user, self.password, self.token = user, password, token
        if not (user or token):
            self.user, self.password = _stored_credentials(host)
        self.scheme: str | None = "bearer" if token else None
        self.challenge: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.lock = threading.Lock()

    def basic(self) -> str | None:
        if self.user is None and self.password is None:
            return None
        raw = f"{self.user or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def _stored_credentials(host: str) -> tuple[str | None, str | None]:
    env_user, env_pw = os.environ.get("COCKER_REGISTRY_USER"), os.environ.get(
        "COCKER_REGISTRY_PASSWORD")
    if env_user or env_pw:
        return env_user, env_pw
    paths = [os.environ.get("REGISTRY_AUTH_FILE")]
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    paths.append(os.path.expanduser("~/.docker/config.json"))
    for p in filter(None, paths):
        try:
            with open(p, encoding="utf-8") as f:
                auths = json.load(f).get("auths", {})
        except (OSError, ValueError, AttributeError):
            continue
        for key in (host, f"https://{host}", f"http://{host}"):
            entry = auths.get(key) if isinstance(auths, dict) else None
            if isinstance(entry, dict) and entry.get("auth"):
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    u, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
                    return u, pw
    return None, None


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


def _insecure_from_env(netloc: str) -> bool:
    v = os.environ.get("COCKER_REGISTRY_INSECURE", "").strip()
    if v in ("1", "true", "yes"):
        return True
    return netloc in {h.strip() for h in v.split(",") if h.strip()}


class _Response:
    """A streamed response body that gives its connection back when fully read."""

    def __init__(self, repo: HttpRepo, conn_key, conn, resp: http.client.HTTPResponse) -> None:
        self.repo, self.key, self.conn, self.resp = repo, conn_key, conn, resp
        self.closed = False

    def skip(self, n: int) -> None:
        while n > 0:
            got = self.resp.read(min(n, CHUNK))
            if not got:
                break
            n -= len(got)

    def read(self, n: int = -1) -> bytes:
        data = self.resp.read() if n is None or n < 0 else self.resp.read(n)
        if not data and not self.closed:
            self.close()
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.resp.isclosed():
            self.repo._give_back(self.key, self.conn)
        else:
            self.resp.close()
            self.conn.close()

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HttpRepo(Repository):
    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 token: str | None = None, insecure: bool | None = None,
                 ca_file: str | None = None, timeout: float = 120.0,
                 resume_dir: str | None = None, retry_wait: float = RETRY_WAIT) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise InvalidReference(f"invalid registry URL {url!r}: expected http[s]://host[:port][/prefix]")
        self.scheme = u.scheme
        self.host = u.hostname
        try:
            self.port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise InvalidReference(f"invalid port in {url!r}") from None
        self.netloc = f"{self.host}:{u.port}" if u.port else self.host
        if ":" in self.host:
            self.netloc = f"[{self.host}]:{u.port}" if u.port else f"[{self.host}]"
        self.prefix = u.path.strip("/")
        if self.prefix:
            refmod.validate_name(self.prefix)
        self.url = f"{self.scheme}://{self.netloc}" + (f"/{self.prefix}" if self.prefix else "")
        user = urllib.parse.unquote(u.username) if u.username else username
        pw = urllib.parse.unquote(u.password) if u.password else password
        self._auth = _Auth(self.netloc, user, pw,
                           token or (None if user else os.environ.get("COCKER_REGISTRY_TOKEN")))
        self.timeout = timeout
        self.retry_wait = retry_wait
        self._journal = UploadJournal(resume_dir)
        # Blob bytes that went over the wire (resent ones included), for reports and tests.
        self.transferred = {"uploaded": 0, "downloaded": 0, "download_resumes": 0}
        self._count_lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        if self.scheme == "https":
            ctx = ssl.create_default_context(cafile=ca_file or os.environ.get("COCKER_REGISTRY_CA"))
            if insecure if insecure is not None else _insecure_from_env(self.netloc):
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        self._local = threading.local()
        self._manifests: dict[str, tuple[bytes, str]] = {}
        self._pending: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._cache_lock = threading.Lock()
        self._name: str | None = None

    def count(self, kind: str, n: int) -> None:
        with self._count_lock:
            self.transferred[kind] += n

    # naming ------------------------------------------------------------------------------
    def for_name(self, name: str) -> HttpRepo:
        """A view whose blob operations happen under repository `name` (shares everything else)."""
        refmod.validate_name(name)
        if name == self._name:
            return self
        view = copymod.copy(self)
        view._name = name
        return view

    def _remote(self, name: str) -> str:
        refmod.validate_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _bound(self) -> str:
        if self._name is None:
            raise UsageError(f"{self.describe()}: blob operations need a repository name "
                             "(use for_name)")
        return self._remote(self._name)

    def describe(self) -> str:
        return self.url

    # connections -------------------------------------------------------------------------
    def _pool(self) -> dict:
        p = getattr(self._local, "pool", None)
        if p is None:
            p = self._local.pool = {}
        return p

    def _conn(self, scheme: str, host: str, port: int):
        key = (scheme, host, port)
        conn = self._pool().pop(key, None)
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                                   context=self._ssl or ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        return key, conn

    def _give_back(self, key, conn) -> None:
        pool = self._pool()
        old = pool.get(key)
        if old is not None and old is not conn:
            old.close()
        pool[key] = conn

    def close(self) -> None:
        for conn in self._pool().values():
            conn.close()
        self._pool().clear()

    # requests ----------------------------------------------------------------------------
    def _scope(self, name: str | None, push: bool) -> str:
        if name is None:
            return "registry:catalog:*"
        return f"repository:{name}:{'pull,push' if push else 'pull'}"

    def _authorization(self, scope: str) -> str | None:
        a = self._auth
        if a.token:
            return f"Bearer {a.token}"
        if a.scheme == "bearer":
            with a.lock:
                tok = a.tokens.get(scope)
            if tok is None:
                tok = self._fetch_token(scope)
            return f"Bearer {tok}"
        if a.scheme == "basic":
            return a.basic()
        return None

    def _fetch_token(self, scope: str) -> str:
        a = self._auth
        realm = a.challenge.get("realm")
        if not realm:
            raise AuthError(f"{self.describe()}: bearer challenge without a realm")
        q = {"scope": scope}
        if a.challenge.get("service"):
            q["service"] = a.challenge["service"]
        ru = urllib.parse.urlsplit(realm)
        if ru.scheme not in ("http", "https") or not ru.hostname:
            raise AuthError(f"{self.describe()}: bad token realm {realm!r}")
        path = (ru.path or "/") + "?" + "&".join(
            filter(None, [ru.query, urllib.parse.urlencode(q)]))
        headers = {}
        if a.basic():
            headers["Authorization"] = a.basic()
        key, conn = self._conn(ru.scheme, ru.hostname, ru.port or (443 if ru.scheme == "https" else 80))
        try:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise TransportError(f"cannot get a token from {realm}: {e}") from None
        self._give_back(key, conn)
        if r.status in (401, 403):
            raise AuthError(f"{self.describe()}: the token service refused our credentials")
        if r.status != 200:
            raise TransportError(f"token service {realm} answered {r.status}")
        try:
            obj = json.loads(body)
            tok = obj.get("token") or obj.get("access_token")
        except (ValueError, AttributeError):
            tok = None
        if not tok:
            raise AuthError(f"token service {realm} sent no token")
        with a.lock:
            a.tokens[scope] = tok
        return tok

    def _request(self, method: str, path: str, *, name: str | None = None, push: bool = False,
                 body: bytes | None = None, headers: dict | None = None,
                 stream: bool = False, full_url: str | None = None):
        """Send one request (auth, redirects, one retry on a stale keep-alive connection).

        Returns (response, body bytes) or, with stream=True, (response, _Response) for 2xx.
        """
        scope = self._scope(name, push)
        url = full_url or f"{self.scheme}://{self.netloc}{path}"
        auth_tries = 0
        redirects = 0
        retried = False
        while True:
            u = urllib.parse.urlsplit(url)
            same_host = (u.hostname == self.host)
            h = dict(headers or {})
            if same_host:
                authz = self._authorization(scope)
                if authz:
                    h["Authorization"] = authz
            if body is not None:
                h["Content-Length"] = str(len(body))
            port = u.port or (443 if u.scheme == "https" else 80)
            key, conn = self._conn(u.scheme, u.hostname or self.host, port)
            target = (u.path or "/") + (f"?{u.query}" if u.query else "")
            try:
                conn.request(method, target, body=body, headers=h)
                resp = conn.getresponse()
            except _RETRYABLE as e:
                conn.close()
                if retried:
                    raise _Unreachable(f"{self.describe()}: connection lost ({e})") from None
                retried = True
                continue
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise _Unreachable(f"cannot reach {self.describe()}: {e}") from None
            if resp.status == 401 and same_host and auth_tries < 2:
                said = _error_message(resp.read())
                self._give_back(key, conn)
                auth_tries += 1
                if not self._learn_challenge(resp.headers.get("WWW-Authenticate", ""), scope,
                                             h.get("Authorization")):
                    # The registry's own words tell "no token" from "bad token".
                    raise AuthError(f"{self.describe()}: {said or 'authentication required'} "
                                    "(set credentials, see `cocker` docs on http:// repos)")
                continue
            if resp.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD") \
                    and redirects < 5:
                loc = resp.headers.get("Location")
                resp.read()
                self._give_back(key, conn)
                if not loc:
                    raise TransportError(f"{self.describe()}: redirect without Location")
                url = urllib.parse.urljoin(url, loc)
                redirects += 1
                continue
            if stream and 200 <= resp.status < 300:
                return resp, _Response(self, key, conn, resp)
            data = resp.read()  # HEAD too: it ends the response for http.client
            if resp.will_close:
                conn.close()
            else:
                self._give_back(key, conn)
            return resp, data

    def _learn_challenge(self, header: str, scope: str, sent: str | None) -> bool:
        """Adapt to a 401; True when a retry can do better than what was `sent`."""
        a = self._auth
        scheme, params = _parse_challenge(header)
        if scheme == "bearer":
            if a.token:
                return False  # our fixed token was refused
            with a.lock:
                a.scheme, a.challenge = "bearer", params
                if sent and a.tokens.get(scope) and sent.endswith(a.tokens[scope]):
                    a.tokens.pop(scope, None)  # expired: fetch a new one
            return True
        if scheme == "basic":
            if sent and sent.lower().startswith("basic"):
                return False  # these credentials were refused
            with a.lock:
                if a.token:
                    # A fixed token against a Basic-only server: send it as the password.
                    a.user, a.password, a.token = a.user or "token", a.token, None
                if a.basic() is None:
                    return False
                a.scheme = "basic"
            return True
        return False

    def _fail(self, resp, data: bytes, what: str):
        msg = ""
        code = ""
        with contextlib.suppress(ValueError, AttributeError, IndexError, TypeError):
            err = json.loads(data)["errors"][0]
            code, msg = err.get("code", ""), err.get("message", "")
        text = f"{self.describe()}: {what}: {resp.status} {code} {msg}".rstrip()
        if resp.status == 401:
            raise AuthError(text)
        if resp.status == 403:
            raise PermissionDenied(text)
        if resp.status == 404:
            raise NotFound(text)
        if code == "DIGEST_INVALID":
            raise DigestMismatch(text)
        if code in ("MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN"):
            raise NotFound(text)
        raise TransportError(text)

    # refs --------------------------------------------------------------------------------
    def _paged(self, path: str, key: str, name: str | None) -> list[str]:
        out: list[str] = []
        url: str | None = path
        while url:
            resp, data = self._request("GET", url, name=name)
            if resp.status == 404:
                return out
            if resp.status != 200:
                self._fail(resp, data, f"GET {url}")
            try:
                items = json.loads(data).get(key) or []
            except (ValueError, AttributeError):
                raise TransportError(f"{self.describe()}: malformed answer to {url}") from None
            out += [i for i in items if isinstance(i, str)]
            link = resp.headers.get("Link", "")
            m = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", link)
            url = urllib.parse.urljoin(path, m.group(1)) if m and items else None
            if url and url.startswith(("http://", "https://")):
                url = urllib.parse.urlsplit(url)._replace(scheme="", netloc="").geturl()
        return out

    def list_names(self) -> list[str]:
        names = self._paged("/v2/_catalog", "repositories", None)
        pre = self.prefix + "/" if self.prefix else ""
        out = []
        for n in names:
            if pre and not n.startswith(pre):
                continue
            short = n[len(pre):]
            if refmod.NAME_RE.match(short):
                out.append(short)
        return sorted(set(out))

    def list_refs(self, name: str | None = None) -> list[RefRecord]:
        if name is None:
            return [r for n in self.list_names() for r in self.list_refs(n)]
        remote = self._remote(name)
        tags = self._paged(f"/v2/{remote}/tags/list", "tags", remote)
        out = []
        for t in refmod.sort_versions(t for t in tags if refmod.VERSION_RE.match(t)):
            d = self.get_ref(name, t)
            if d:
                out.append(RefRecord(name, t, d))
        return out

    def get_ref(self, name: str, version: str) -> str | None:
        refmod.validate_version(version)
        remote = self._remote(name)
        resp, data = self._request("HEAD", f"/v2/{remote}/manifests/{version}", name=remote,
                                   headers={"Accept": MANIFEST_ACCEPT})
        if resp.status == 404:
            return None
        if resp.status != 200:
            self._fail(resp, data, f"HEAD {name}:{version}")
        d = resp.headers.get("Docker-Content-Digest")
        if d and digestmod.is_valid(d):
            return d
        data, _ = self._get_manifest(remote, version)  # old registries: hash it ourselves
        return digestmod.of_bytes(data)

    def _get_manifest(self, remote: str, ref: str) -> tuple[bytes, str]:
        resp, data = self._request("GET", f"/v2/{remote}/manifests/{ref}", name=remote,
                                   headers={"Accept": MANIFEST_ACCEPT})
        if resp.status != 200:
            self._fail(resp, data, f"GET manifest {remote}:{ref}")
        mt = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if mt not in oci.MANIFEST_TYPES + oci.INDEX_TYPES:
            mt = _is_manifest(data) or mt
        return data, mt

    def _remember(self, digest: str, data: bytes, mt: str) -> None:
        with self._cache_lock:
            if len(self._manifests) > 512:
                self._manifests.clear()
            self._manifests[digest] = (data, mt)

    def _manifest_bytes(self, digest: str) -> tuple[bytes, str]:
        with self._cache_lock:
            hit = self._manifests.get(digest)
        if hit:
            return hit
        data, mt = self._get_manifest(self._bound(), digest)
        if digestmod.of_bytes(data) != digest:
            raise DigestMismatch(f"{self.describe()}: manifest {digestmod.short(digest)} "
                                 "came back with other content")
        self._remember(digest, data, mt)
        return data, mt

    def put_ref(self, name: str, version: str, digest: str, expect: object = ANY) -> None:
        refmod.validate_version(version)
        digestmod.validate(digest)
        view = self.for_name(name)
        data, mt = view._manifest_bytes(digest)
        precondition = {}
        if expect is not ANY:
            current = self.get_ref(name, version)
            if current != expect:
                raise Conflict(f"{name}:{version} changed in {self.describe()}")
            # Checked again by the registry in the same step as the write, where it can
            # (srepo-server does; others ignore these headers and keep the check above).
            precondition = {"If-None-Match": "*"} if expect is None else \
                {"If-Match": f'"{expect}"'}
        self._put_manifest(self._remote(name), version, data, mt, precondition)

    def _put_manifest(self, remote: str, ref: str, data: bytes, mt: str,
                      precondition: dict | None = None) -> None:
        """PUT a manifest, after the held-back manifests it names (an index's children)."""
        m = oci.parse_manifest(data)
        children = [d["digest"] for d in m["manifests"]] if oci.is_index(m) else []
        for child in children:
            with self._cache_lock:
                held = self._pending.pop((remote, child), None)
            if held:
                self._put_manifest(remote, child, *held)
        with self._cache_lock:
            self._pending.pop((remote, digestmod.of_bytes(data)), None)
        resp, body = self._request("PUT", f"/v2/{remote}/manifests/{ref}", name=remote,
                                   push=True, body=data,
                                   headers={"Content-Type": mt, **(precondition or {})})
        if resp.status == 412:
            raise Conflict(f"{remote}:{ref} changed in {self.describe()} while we pushed")
        if resp.status not in (200, 201, 202):
            self._fail(resp, body, f"PUT manifest {remote}:{ref}")

    def capabilities(self) -> frozenset[str]:
        # The registry runs its own gc. Resume is chunk-granular (what the registry
        # acknowledged, through the store's journal), not at any byte: not claimed here.
        return frozenset({REFERRERS, MOUNT})

    def put_manifest(self, name: str, data: bytes, media_type: str | None = None) -> str:
        digest = digestmod.of_bytes(data)
        self._put_manifest(self._remote(name), digest, data,
                           media_type or oci.manifest_media_type(data))
        return digest

    def referrers(self, subject: str, artifact_type: str | None = None) -> list[dict]:
        """GET /v2/<name>/referrers/<digest> of the name this view is bound to."""
        remote = self._bound()
        q = f"?artifactType={urllib.parse.quote(artifact_type)}" if artifact_type else ""
        resp, body = self._request("GET", f"/v2/{remote}/referrers/{digestmod.validate(subject)}{q}",
                                   name=remote, headers={"Accept": oci.INDEX})
        if resp.status != 200:
            self._fail(resp, body, f"GET referrers of {digestmod.short(subject)}")
        found = oci.parse_json(body, "referrers index").get("manifests") or []
        return [d for d in found if isinstance(d, dict)
                and (not artifact_type or d.get("artifactType") == artifact_type)]

    def delete_ref(self, name: str, version: str, expect: object = ANY) -> None:
        refmod.validate_version(version)
        current = self.get_ref(name, version)
        if current is None:
            raise NotFound(f"{name}:{version} not found in {self.describe()}")
        if expect is not ANY and current != expect:
            raise Conflict(f"{name}:{version} changed in {self.describe()}")
        remote = self._remote(name)
        resp, body = self._request("DELETE", f"/v2/{remote}/manifests/{version}", name=remote,
                                   push=True)
        if resp.status in (200, 202, 204):
            return
        if resp.status in (400, 405):
            # Older distribution registries only delete by digest, which drops every tag on
            # it: do that only when no other tag of this name shares the digest.
            others = [r.version for r in self.list_refs(name)
                      if r.digest == current and r.version != version]
            if others:
                raise UsageError(f"{self.describe()} cannot delete only the tag {version} "
                                 f"(it deletes by digest, and {others[0]} shares it)")
            resp, body = self._request("DELETE", f"/v2/{remote}/manifests/{current}",
                                       name=remote, push=True)
            if resp.status in (200, 202, 204):
                return
        self._fail(resp, body, f"DELETE {name}:{version}")

    def resolve(self, ref: Reference) -> RefRecord:
        return Repository.resolve(self.for_name(ref.name), ref)

    # blobs -------------------------------------------------------------------------------
    def blob_size(self, digest: str) -> int | None:
        digestmod.validate(digest)
        remote = self._bound()
        with self._cache_lock:
            hit = self._manifests.get(digest)
        resp, data = self._request("HEAD", f"/v2/{remote}/blobs/{digest}", name=remote)
        if resp.status == 200:
            return int(resp.headers.get("Content-Length") or 0)
        if resp.status != 404:
            self._fail(resp, data, f"HEAD blob {digestmod.short(digest)}")
        # Registries keep manifests apart from blobs; a manifest counts as present too.
        resp, data = self._request("HEAD", f"/v2/{remote}/manifests/{digest}", name=remote,
                                   headers={"Accept": MANIFEST_ACCEPT})
        if resp.status == 200:
            return int(resp.headers.get("Content-Length") or (len(hit[0]) if hit else 0))
        return None

    def missing_blobs(self, digests: Iterable[str]) -> list[str]:
        return [d for d in dict.fromkeys(digests) if not self.has_blob(d)]

    def open_blob(self, digest: str, offset: int = 0) -> BinaryIO:
        digestmod.validate(digest)
        remote = self._bound()
        with self._cache_lock:
            hit = self._manifests.get(digest)
        if hit:
            return io.BytesIO(hit[0][offset:])
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp, r = self._request("GET", f"/v2/{remote}/blobs/{digest}", name=remote,
                                headers=headers, stream=True)
        if resp.status == 404:
            # A manifest (e.g. an index's child) is fetched through the manifests endpoint.
            with contextlib.suppress(NotFound):
                return io.BytesIO(self._manifest_bytes(digest)[0][offset:])
            raise NotFound(f"blob {digest} not found in {self.describe()}/{self._name}")
        if not 200 <= resp.status < 300:
            self._fail(resp, r, f"GET blob {digestmod.short(digest)}")
        body = _ResumingBody(self, f"/v2/{remote}/blobs/{digest}", remote, offset, resp, r)
        return cast(BinaryIO, body)

    def read_blob(self, digest: str, limit: int = 16 << 20) -> bytes:
        with self._cache_lock:
            hit = self._manifests.get(digest)
        if hit:
            return hit[0]
        data = Repository.read_blob(self, digest, limit)
        mt = _is_manifest(data)
        if mt:
            self._remember(digest, data, mt)
        return data

    def upload(self, digest: str, size: int | None = None) -> BlobWriter:
        return _HttpUpload(self, digestmod.validate(digest), size)

    def put_blob_bytes(self, digest: str, data: bytes) -> None:
        w = self.upload(digest, len(data))
        try:
            w.write(data)
            w.commit()
        except BaseException:
            w.abort()
            raise


class _HttpUpload(BlobWriter):
    """One blob going up.

    Small blobs go in one POST+PUT (a manifest is held for the manifests endpoint instead).
    Larger ones go in PATCH requests of UPLOAD_CHUNK bytes with `Content-Range`, then a
    closing PUT with the digest. After each acknowledged chunk the session's location and
    offset are written to the store's journal, so a push killed half-way continues where the
    registry stands; a connection lost mid-push (a registry restart) is retried for
    RETRY_WAIT seconds from the offset the registry reports."""

    def __init__(self, repo: HttpRepo, digest: str, size: int | None) -> None:
        self.repo, self.digest, self.size = repo, digest, size
        self.remote = repo._bound()
        self.buf = bytearray()
        self.location: str | None = None
        self.acked = 0  # bytes the registry has acknowledged
        self.journal = repo._journal
        self.key = self.journal.key(repo.url, self.remote, digest)
        if size is None or size > SMALL:
            self._resume()
        self.offset = self.acked

    # resuming ----------------------------------------------------------------------------
    def _resume(self) -> None:
        rec = self.journal.load(self.key)
        if rec is None:
            return
        try:
            at = self._status(rec.location)
        except TransportError:
            at = None
        if not at or (self.size is not None and at > self.size):
            # Gone (expired, finished, another registry) or nothing worth keeping.
            self.journal.forget(self.key)
            return
        self.location, self.acked = rec.location, at

    def _status(self, location: str) -> int | None:
        """Bytes the registry holds for the session at `location`; None when it is gone."""
        resp, _ = self.repo._request("GET", "", full_url=location, name=self.remote, push=True)
        if resp.status != 204:
            return None
        m = re.match(r"^\s*(?:bytes=)?0-(\d+)\s*$", resp.headers.get("Range") or "")
        if not m or m.group(1) == "0":
            return None  # "0-0" may mean 0 or 1 byte: start afresh rather than guess
        loc = resp.headers.get("Location")
        if loc:
            self.location = urllib.parse.urljoin(location, loc)
        return int(m.group(1)) + 1

    def _save(self) -> None:
        assert self.location is not None
        self.journal.save(self.key, UploadRecord(self.location, self.acked, self.repo.url,
                                                 self.remote, self.digest))

    # sending -----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.buf += data
        if self.location is None:
            if len(self.buf) + self.acked <= SMALL and (self.size is None or self.size <= SMALL):
                return
            self.location = self._start()
            self._save()
        while len(self.buf) >= UPLOAD_CHUNK:
            self._send_chunk(bytes(self.buf[:UPLOAD_CHUNK]))
            del self.buf[:UPLOAD_CHUNK]

    def _start(self) -> str:
        resp, body = self.repo._request("POST", f"/v2/{self.remote}/blobs/uploads/",
                                        name=self.remote, push=True, body=b"")
        if resp.status != 202 or not resp.headers.get("Location"):
            self.repo._fail(resp, body, f"start upload of {digestmod.short(self.digest)}")
        return urllib.parse.urljoin(f"{self.repo.scheme}://{self.repo.netloc}/v2/",
                                    resp.headers["Location"])

    def _send_chunk(self, chunk: bytes) -> None:
        """PATCH `chunk` at the acknowledged offset. When the connection is lost (a registry
        restart), wait for the registry, ask where the session stands and send what it lacks
        of this chunk: nothing is sent twice that it already has."""
        assert self.location is not None
        start, end = self.acked, self.acked + len(chunk)
        at = start
        deadline = time.monotonic() + self.repo.retry_wait
        while at < end:
            try:
                self._patch(chunk[at - start:], at)
                at = end
            except _Unreachable:
                at = self._wait_for_session(deadline, start, end)
        self.acked = end
        self._save()

    def _patch(self, piece: bytes, at: int) -> None:
        assert self.location is not None
        resp, body = self.repo._request(
            "PATCH", "", full_url=self.location, name=self.remote, push=True, body=piece,
            headers={"Content-Type": "application/octet-stream",
                     "Content-Range": f"{at}-{at + len(piece) - 1}"})
        self.repo.count("uploaded", len(piece))
        if resp.status in RETRY_STATUSES:
            raise _Unreachable(f"{self.repo.describe()} answered {resp.status}")
        if resp.status != 202:
            self.repo._fail(resp, body, f"upload of {digestmod.short(self.digest)}")
        loc = resp.headers.get("Location")
        if loc:
            self.location = urllib.parse.urljoin(self.location, loc)

    def _wait_for_session(self, deadline: float, start: int, end: int) -> int:
        """Where the session stands once the registry answers again, within [start, end]."""
        assert self.location is not None
        delay = 0.2
        while True:
            if time.monotonic() > deadline:
                raise TransportError(f"{self.repo.describe()}: the upload of "
                                     f"{digestmod.short(self.digest)} was cut and the registry "
                                     "did not come back; push again to continue")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                at = self._status(self.location)
            except _Unreachable:
                continue
            if at is None and start == 0:
                at = 0  # "0-0": nothing (or one byte) arrived; resend from the start
            if at is None or not start <= at <= end:
                raise TransportError(f"{self.repo.describe()}: the upload of "
                                     f"{digestmod.short(self.digest)} is at byte {at}, "
                                     f"expected {start}..{end}; push again to continue")
            return at

    def commit(self) -> None:
        repo = self.repo
        if self.location is None:
            data = bytes(self.buf)
            got = digestmod.of_bytes(data)
            if got != self.digest or (self.size is not None and len(data) != self.size):
                raise DigestMismatch(f"blob {digestmod.short(self.digest)}: content hashes to "
                                     f"{digestmod.short(got)}")
            mt = _is_manifest(data)
            if mt:
                # A registry wants a manifest after everything it names, and the copy routine
                # sends blobs in parallel: hold it until put_ref pushes the tree.
                repo._remember(self.digest, data, mt)
                with repo._cache_lock:
                    repo._pending[(self.remote, self.digest)] = (data, mt)
                return
            # Small: one more request is all it costs, so POST then PUT with the body.
            self.location = self._start()
            self._finish(data)
        else:
            if self.buf:
                self._send_chunk(bytes(self.buf))
                self.buf = bytearray()
            self._finish(b"")
        self.journal.forget(self.key)

    def _finish(self, data: bytes) -> None:
        """The closing PUT with the digest (and, for a small blob, its bytes)."""
        assert self.location is not None
        deadline = time.monotonic() + self.repo.retry_wait
        while True:
            sep = "&" if "?" in self.location else "?"
            url = f"{self.location}{sep}digest={urllib.parse.quote(self.digest)}"
            try:
                resp, body = self.repo._request(
                    "PUT", "", full_url=url, name=self.remote, push=True, body=data,
                    headers={"Content-Type": "application/octet-stream"})
            except _Unreachable:
                if data or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            self.repo.count("uploaded", len(data))
            if resp.status in RETRY_STATUSES and not data and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            break
        if resp.status == 404 and not data and self.repo.has_blob(self.digest):
            return  # a previous attempt finished it; its answer was lost
        if resp.status not in (201, 204):
            if resp.status == 400 and b"DIGEST_INVALID" in body:
                self.journal.forget(self.key)  # the kept prefix was bad: start over
            self.repo._fail(resp, body, f"finish upload of {digestmod.short(self.digest)}")
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != self.digest:
            raise DigestMismatch(f"{self.repo.describe()} stored "
                                 f"{digestmod.short(self.digest)} as {got}")

    def abort(self) -> None:
        # The journal keeps the session: the next push of this blob continues it.
        self.buf = bytearray()


class _ResumingBody:
    """A blob download that survives a cut connection: it asks again with `Range` from the
    byte it got to (for up to RETRY_WAIT seconds, so a registry restart is waited out)."""

    def __init__(self, repo: HttpRepo, path: str, remote: str, offset: int,
                 resp: http.client.HTTPResponse, body: _Response) -> None:
        self.repo, self.path, self.remote = repo, path, remote
        self.pos = offset
        self._use(resp, body)

    def _use(self, resp: http.client.HTTPResponse, body: _Response) -> None:
        if resp.status == 200 and self.pos:
            body.skip(self.pos)  # the server ignored Range
        elif resp.status == 206:
            m = re.match(r"^\s*bytes\s+(\d+)-", resp.headers.get("Content-Range") or "")
            if not m or int(m.group(1)) != self.pos:
                body.close()
                raise TransportError(f"{self.repo.describe()}: asked for bytes from {self.pos}, "
                                     f"got {resp.headers.get('Content-Range')!r}")
        length = resp.headers.get("Content-Length")
        self.end = self.pos + int(length) - (self.pos if resp.status == 200 else 0) \
            if length and length.isdigit() else None
        self.body = body

    def read(self, n: int = -1) -> bytes:
        while True:
            try:
                data = self.body.read(n)
            except (OSError, http.client.HTTPException):
                data = b""
            if data:
                self.pos += len(data)
                self.repo.count("downloaded", len(data))
                return data
            if self.end is None or self.pos >= self.end:
                return b""
            self.body.close()
            self._reopen()

    def _reopen(self) -> None:
        deadline = time.monotonic() + self.repo.retry_wait
        delay = 0.2
        while True:
            try:
                resp, body = self.repo._request("GET", self.path, name=self.remote,
                                                headers={"Range": f"bytes={self.pos}-"},
                                                stream=True)
            except _Unreachable:
                resp = None
            if resp is not None:
                if 200 <= resp.status < 300:
                    self._use(resp, body)
                    self.repo.count("download_resumes", 1)
                    return
                if resp.status not in RETRY_STATUSES:
                    self.repo._fail(resp, body, f"resume download at byte {self.pos}")
            if time.monotonic() > deadline:
                raise TransportError(f"{self.repo.describe()}: download cut at byte {self.pos} "
                                     f"and the registry did not come back")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> _ResumingBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
