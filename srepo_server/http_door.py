"""The HTTP door: the OCI Distribution API over the server's LayoutRepo.

    GET  /v2/                                   API version check (401 + challenge when needed)
    HEAD|GET /v2/<name>/blobs/<digest>          Range -> 206
    POST /v2/<name>/blobs/uploads/              202 session | ?digest= monolithic | ?mount=&from=
    PATCH|PUT|GET|DELETE /v2/<name>/blobs/uploads/<uuid>
    HEAD|GET|PUT|DELETE /v2/<name>/manifests/<tag|digest>
    GET  /v2/<name>/tags/list?n=&last=          GET /v2/_catalog?n=&last=
    GET  /v2/<name>/referrers/<digest>?artifactType=

Everything acknowledged is durable (fsync before 201); nothing half-written is ever visible
(uploads live in tmp/ and are verified before the rename into blobs/).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TextIO

from common.errors import (
    CockerError,
    Conflict,
    CorruptImage,
    InvalidReference,
    LockBusy,
    NotFound,
)
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo.layout import LayoutRepo
from registry.repo.repository import ANY
from srepo_server import http_store as hs
from srepo_server.blob_links import BlobLinks
from srepo_server.blob_send import send_range
from srepo_server.http_auth import Authenticator, Grant
from srepo_server.http_server import BadBody, Body, ClientGone, Server, parse_addr, tls_context
from srepo_server.http_store import ApiError
from srepo_server.http_uploads import Limits, Session, Uploads
from srepo_server.manifest_shape import check_manifest_shape
from srepo_server.web import routes as web_routes

CHUNK = 1 << 20
API_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
_NAME = r"(?P<name>[^?#]+?)"
ROUTES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^/v2/?$"), "base"),
    (re.compile(r"^/v2/_catalog$"), "catalog"),
    (re.compile(rf"^/v2/{_NAME}/tags/list$"), "tags"),
    (re.compile(rf"^/v2/{_NAME}/manifests/(?P<ref>[^/]+)$"), "manifest"),
    (re.compile(rf"^/v2/{_NAME}/blobs/uploads/?$"), "upload_start"),
    (re.compile(rf"^/v2/{_NAME}/blobs/uploads/(?P<uuid>[^/]+)$"), "upload"),
    (re.compile(rf"^/v2/{_NAME}/blobs/(?P<digest>[^/]+)$"), "blob"),
    (re.compile(rf"^/v2/{_NAME}/referrers/(?P<digest>[^/]+)$"), "referrers"),
]
READ_METHODS = ("GET", "HEAD")
NO_CREDENTIALS = ("authentication required: send a token (Authorization: Bearer TOKEN) "
                  "or a user name and password")


class App:
    """Shared state of one running door."""

    def __init__(self, root: str, auth: Authenticator, *, access_log: TextIO | None = None,
                 idle_timeout: float = 60.0, manifest_limit: int = hs.MANIFEST_LIMIT,
                 upload_limits: Limits | None = None) -> None:
        self.repo = LayoutRepo(root, create=True)
        self.uploads = Uploads(self.repo, upload_limits)
        self.links = BlobLinks(self.repo)
        self.auth = auth
        self.access_log = access_log if access_log is not None else sys.stderr
        self.idle_timeout = idle_timeout
        self.manifest_limit = manifest_limit
        self._log_lock = threading.Lock()

    def log_line(self, line: str) -> None:
        with self._log_lock:
            try:
                self.access_log.write(line + "\n")
                self.access_log.flush()
            except (OSError, ValueError):
                pass


def _is_digest_like(ref: str) -> bool:
    return ":" in ref


def _check_digest(d: str | None, code: str = "DIGEST_INVALID") -> str:
    if not d:
        raise ApiError(400, code, "a digest is required")
    if not digestmod.is_valid(d):
        algo = d.split(":", 1)[0] if ":" in d else ""
        msg = (f"unsupported digest algorithm {algo!r} (sha256 only)"
               if algo and algo != "sha256" else f"invalid digest {d!r}")
        raise ApiError(400, "DIGEST_INVALID", msg)
    return d


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # even a garbage request line gets a status line
    server_version = "srepo-server/0.1"
    sys_version = ""
    server: Server
    _body_obj: Body | None = None
    _linger: bool = False

    # plumbing ------------------------------------------------------------------------
    def version_string(self) -> str:
        return self.server_version

    @property
    def app(self) -> App:
        return self.server.app

    def handle_expect_100(self) -> bool:
        # Answer "100 Continue" only when the body is really wanted, so a refused upload
        # (401, 413) never makes the client send gigabytes.
        self._expect = True
        return True

    def _continue(self) -> None:
        if getattr(self, "_expect", False):
            self._expect = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def log_request(self, code="-", size="-") -> None:
        pass

    def log_message(self, format: str, *args) -> None:
        pass

    def log_error(self, format: str, *args) -> None:
        if args and "timed out" in str(format % args):
            return
        self.app.log_line(f"{self.client_address[0]} - - [{self.log_date_time_string()}] "
                          f"error: {format % args}")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed request lines and headers get the spec's JSON too.
        self._status = code
        body = json.dumps({"errors": [{"code": "UNSUPPORTED" if code in (405, 501) else
                                       "BAD_REQUEST", "message": message or "bad request",
                                       "detail": explain}]}).encode()
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass
        self.close_connection = True

    def finish(self) -> None:
        super().finish()
        if self._linger:
            _lingering_close(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _respond(self, status: int, headers: dict | None = None, body: bytes = b"",
                 content_type: str | None = None, length: int | None = None) -> None:
        self._status = status
        self.send_response(status)
        self.send_header(*API_HEADER)
        if content_type:
            self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body) if length is None else length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
            self._sent += len(body)

    def _json(self, status: int, obj: object, headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self._respond(status, headers, json.dumps(obj).encode(), content_type)

    def _error(self, e: ApiError) -> None:
        err: dict = {"code": e.code, "message": e.message}
        if e.detail is not None:
            err["detail"] = e.detail
        headers = dict(e.headers)
        if e.status == 401:
            headers["WWW-Authenticate"] = self.app.auth.challenge()
        self._json(e.status, {"errors": [err]}, headers)

    def _body(self) -> Body:
        if self._body_obj is None:
            te = (self.headers.get("Transfer-Encoding") or "").strip().lower()
            cl = self.headers.get("Content-Length")
            if te and te != "chunked":
                raise ApiError(501, "UNSUPPORTED", f"Transfer-Encoding {te} is not supported")
            length = None
            if cl is not None and not te:
                try:
                    length = int(cl)
                    if length < 0:
                        raise ValueError
                except ValueError:
                    raise ApiError(400, "SIZE_INVALID", "invalid Content-Length") from None
            self._body_obj = Body(self.rfile, length, te == "chunked", self._continue)
        return self._body_obj

    def _declared_length(self) -> int | None:
        if (self.headers.get("Transfer-Encoding") or "").strip():
            return None
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None

    def _dispatch(self) -> None:
        start = time.monotonic()
        self._status, self._sent, self._who = 0, 0, "-"
        self._body_obj = None
        with self.server.count_lock:
            self.server.busy += 1
        try:
            self._route()
        except ApiError as e:
            self._finish_error(e)
        except (ClientGone, ConnectionError, TimeoutError):
            self.close_connection = True
            self._status = self._status or 499
        except BadBody as e:
            self.close_connection = True
            self._finish_error(ApiError(400, "BLOB_UPLOAD_INVALID", str(e)))
        except InvalidReference as e:
            self._finish_error(ApiError(400, "NAME_INVALID", str(e)))
        except (LockBusy, Conflict) as e:
            self._finish_error(ApiError(409, "DENIED", str(e)))
        except NotFound as e:
            self._finish_error(ApiError(404, "NAME_UNKNOWN", str(e)))
        except CockerError as e:
            self._finish_error(ApiError(500, "UNKNOWN", str(e)))
        except Exception as e:  # noqa: BLE001 (never a traceback to the client; one log line)
            self.app.log_line(f"srepo-server: internal error on {self.command} {self.path}: "
                              f"{type(e).__name__}: {e}")
            self._finish_error(ApiError(500, "UNKNOWN", "internal server error"))
        finally:
            with self.server.count_lock:
                self.server.busy -= 1
            self._settle_body()
            self._expect = False  # per request; the next one on this connection starts afresh
            self._access_log(time.monotonic() - start)

    def _settle_body(self) -> None:
        """Skip a small unread body so keep-alive works; otherwise close the connection."""
        if self.close_connection:
            return
        b = self._body_obj
        if b is None:
            declared = self._declared_length()
            if declared == 0:
                return
            if getattr(self, "_expect", False):
                self.close_connection = True  # the client is waiting for our go-ahead
                return
            try:
                b = self._body()
            except ApiError:
                self.close_connection = self._linger = True
                return
        if not b.done and not b.drain():
            self.close_connection = self._linger = True

    def _finish_error(self, e: ApiError) -> None:
        if self._status:
            self.close_connection = True  # headers already went out; nothing sane to add
            return
        b = self._body_obj
        if (b is None and self._declared_length() != 0) or (b is not None and not b.done):
            self.close_connection = True  # don't read a body we refuse
            self._linger = True
        try:
            self._error(e)
        except OSError:
            self.close_connection = True

    def _access_log(self, dt: float) -> None:
        req = self.requestline.replace('"', "%22")
        self.app.log_line(f'{self.client_address[0]} - {self._who} [{self.log_date_time_string()}] '
                          f'"{req}" {self._status or "-"} {self._sent} {dt:.3f}')

    # routing and auth -------------------------------------------------------------------
    def _route(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self.query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        path = url.path
        if not path.startswith("/v2"):
            self._h_web(path)
            return
        for rx, endpoint in ROUTES:
            m = rx.match(path)
            if m is None:
                continue
            params = m.groupdict()
            if "name" in params:
                try:
                    refmod.validate_name(params["name"])
                except InvalidReference as e:
                    raise ApiError(400, "NAME_INVALID", str(e)) from None
            getattr(self, "_h_" + endpoint)(**params)
            return
        raise ApiError(404, "NOT_FOUND", f"no such endpoint {path}")

    def _grant(self) -> Grant:
        header = self.headers.get("Authorization")
        g = self.app.auth.authenticate(header)
        if g is None:
            raise ApiError(401, "UNAUTHORIZED", self.app.auth.refusal(header or ""))
        self._who = g.who
        return g

    def _require(self, op: str, name: str | None) -> Grant:
        g = self._grant()
        if not g.can(op, name):
            if g.who == "-":
                raise ApiError(401, "UNAUTHORIZED", NO_CREDENTIALS)
            raise ApiError(403, "DENIED", f"{g.who} may not {op} {name or 'this registry'} "
                           f"(it may {g.describe()})")
        return g

    def _method(self, allowed: tuple[str, ...]) -> None:
        if self.command not in allowed:
            raise ApiError(405, "UNSUPPORTED", f"{self.command} is not supported here",
                           headers={"Allow": ", ".join(allowed)})

    # endpoints --------------------------------------------------------------------------
    def _h_web(self, path: str) -> None:
        """The read-only web page (srepo_server/web), under the API's authentication."""
        self._method(READ_METHODS)
        g = self._require("read", None)
        scheme = "https" if self.server.tls is not None else "http"
        host = self.headers.get("Host") or f"{self.server.server_name}:{self.server.server_port}"
        page = web_routes.render(self.app.repo, path, can_read=lambda n: g.can("read", n),
                                 base_url=f"{scheme}://{host}",
                                 referrers=lambda d: hs.referrers(self.app.repo, d, None))
        self._respond(page.status, {"Cache-Control": "no-store"}, page.body, page.content_type)

    def _h_base(self) -> None:
        self._method(READ_METHODS)
        g = self._grant()
        if g.who == "-" and (self.app.auth.has_credentials or not g.ops):
            raise ApiError(401, "UNAUTHORIZED", NO_CREDENTIALS)
        self._json(200, {})

    def _h_catalog(self) -> None:
        self._method(READ_METHODS)
        g = self._require("read", None)
        names = [n for n in hs.names(self.app.repo) if g.can("read", n)]
        self._paginated(names, "repositories", "/v2/_catalog", {})

    def _h_tags(self, name: str) -> None:
        self._method(READ_METHODS)
        self._require("read", name)
        tags = hs.tags(self.app.repo, name)
        if tags is None:
            raise ApiError(404, "NAME_UNKNOWN", f"repository {name} not found")
        self._paginated(tags, "tags", f"/v2/{name}/tags/list", {"name": name})

    def _paginated(self, items: list[str], key: str, path: str, extra: dict) -> None:
        items = sorted(items)
        last = self.query.get("last")
        if last:
            items = [t for t in items if t > last]
        headers = {}
        n = self.query.get("n")
        if n is not None:
            if not n.isdigit():
                raise ApiError(400, "PAGINATION_NUMBER_INVALID", f"invalid n={n!r}")
            k = int(n)
            if len(items) > k:
                items = items[:k]
                if items:
                    q = urllib.parse.urlencode({"n": k, "last": items[-1]})
                    headers["Link"] = f'<{path}?{q}>; rel="next"'
        self._json(200, {**extra, key: items}, headers)

    def _h_blob(self, name: str, digest: str) -> None:
        self._method(("GET", "HEAD", "DELETE"))
        if self.command == "DELETE":
            self._require("delete", name)
            _check_digest(digest)
            # Only this name stops serving it; gc frees the bytes once nothing reaches them.
            if not self.app.links.unlink(name, digest):
                raise ApiError(404, "BLOB_UNKNOWN", f"blob {digest} not found in {name}")
            self._respond(202)
            return
        self._require("read", name)
        _check_digest(digest)
        repo = self.app.repo
        if not self.app.links.linked(name, digest):
            # Known elsewhere perhaps, but not through this name: as if absent.
            raise ApiError(404, "BLOB_UNKNOWN", f"blob {digest} not found in {name}")
        try:
            f = open(repo.blob_path(digest), "rb")  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:
            raise ApiError(404, "BLOB_UNKNOWN", f"blob {digest} not found") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            start, end, status = 0, size - 1, 200
            headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
                       "ETag": f'"{digest}"', "Cache-Control": "max-age=31536000"}
            rng = self.headers.get("Range")
            if rng:
                r = _parse_range(rng, size)
                if r is None:
                    raise ApiError(416, "BLOB_UNKNOWN", "requested range not satisfiable",
                                   headers={"Content-Range": f"bytes */{size}"})
                start, end = r
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            count = end - start + 1 if size else 0
            self._respond(status, headers, content_type="application/octet-stream", length=count)
            if self.command == "HEAD" or count <= 0:
                return
            self._send_file(f, start, count)

    def _send_file(self, f, offset: int, count: int) -> None:
        sock = self.connection
        if self.server.tls is None:
            self._sent += send_range(sock, f.fileno(), offset, count, self.app.idle_timeout)
            return
        f.seek(offset)
        left = count
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise ClientGone("blob shrank while being sent")
            self.wfile.write(chunk)
            left -= len(chunk)
            self._sent += len(chunk)

    def _location(self, name: str, uid: str) -> str:
        return f"/v2/{name}/blobs/uploads/{uid}"

    def _upload_headers(self, name: str, s: Session) -> dict:
        return {"Location": self._location(name, s.uuid), "Docker-Upload-UUID": s.uuid,
                "Range": f"0-{max(s.offset - 1, 0)}"}

    def _h_upload_start(self, name: str) -> None:
        self._method(("POST",))
        g = self._require("write", name)
        mount = self.query.get("mount")
        if mount and self._mountable(name, mount, self.query.get("from"), g):
            self.app.links.link(name, [mount])
            self._respond(201, {"Location": f"/v2/{name}/blobs/{mount}",
                                "Docker-Content-Digest": mount})
            return
        digest = self.query.get("digest")
        if digest:
            _check_digest(digest)
            s = self.app.uploads.create(name, g.who)
            try:
                with s.lock:
                    self._stream_into(s)
                    self.app.uploads.finish(s, digest)
            except BaseException:
                if s.fd >= 0:
                    self.app.uploads.drop(s)
                raise
            self.app.links.link(name, [digest])
            self._respond(201, {"Location": f"/v2/{name}/blobs/{digest}",
                                "Docker-Content-Digest": digest})
            return
        s = self.app.uploads.create(name, g.who)
        self._respond(202, self._upload_headers(name, s))

    def _mountable(self, name: str, digest: str, src: str | None, g: Grant) -> bool:
        """May `digest` be mounted into `name`? Only from a name the caller may read and that
        links the blob (without `from`, only what `name` links already). Anything else,
        malformed arguments included, is an ordinary upload: the spec's fallback (202)."""
        if not digestmod.is_valid(digest):
            return False
        links = self.app.links
        if not src:
            return links.linked(name, digest)
        try:
            refmod.validate_name(src)
        except InvalidReference:
            return False
        return g.can("read", src) and links.linked(src, digest)

    def _stream_into(self, s: Session) -> None:
        body = self._body()
        while chunk := body.read(CHUNK):
            self.app.uploads.write(s, chunk)

    def _content_range(self) -> tuple[int, int] | None:
        cr = self.headers.get("Content-Range")
        if not cr:
            return None
        m = re.match(r"^\s*(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?\s*$", cr)
        if not m or int(m.group(2)) < int(m.group(1)):
            raise ApiError(416, "BLOB_UPLOAD_INVALID", f"invalid Content-Range {cr!r}")
        return int(m.group(1)), int(m.group(2))

    def _h_upload(self, name: str, uuid: str) -> None:
        self._method(("GET", "PATCH", "PUT", "DELETE"))
        g = self._require("read" if self.command == "GET" else "write", name)
        ups = self.app.uploads
        s = ups.get(uuid, name, g.who)
        if not s.lock.acquire(timeout=30):
            raise ApiError(409, "BLOB_UPLOAD_INVALID", "another request is writing this upload")
        try:
            ups.ensure_open(s)
            if self.command == "GET":
                self._respond(204, self._upload_headers(name, s))
                return
            if self.command == "DELETE":
                ups.drop(s)
                self._respond(204)
                return
            cr = self._content_range()
            if cr is not None:
                start, end = cr
                length = self._declared_length()
                if start != s.offset:
                    raise ApiError(416, "BLOB_UPLOAD_INVALID",
                                   f"chunk starts at {start}, the upload is at {s.offset}",
                                   headers=self._upload_headers(name, s))
                if length is not None and length != end - start + 1:
                    raise ApiError(400, "BLOB_UPLOAD_INVALID",
                                   "Content-Length does not match Content-Range")
            if self.command == "PATCH":
                self._stream_into(s)
                self._respond(202, self._upload_headers(name, s))
                return
            digest = _check_digest(self.query.get("digest"))
            self._stream_into(s)
            ups.finish(s, digest)
            self.app.links.link(name, [digest])
            self._respond(201, {"Location": f"/v2/{name}/blobs/{digest}",
                                "Docker-Content-Digest": digest})
        finally:
            s.lock.release()

    def _h_manifest(self, name: str, ref: str) -> None:
        self._method(("GET", "HEAD", "PUT", "DELETE"))
        repo = self.app.repo
        if self.command in READ_METHODS:
            self._require("read", name)
            if not _is_digest_like(ref) and not refmod.VERSION_RE.match(ref):
                # No tag can have this spelling, so no such manifest: what the spec's
                # conformance suite expects, rather than a complaint about the spelling.
                raise ApiError(404, "MANIFEST_UNKNOWN", f"manifest {name}:{ref} not found")
            digest = hs.resolve_manifest(repo, name, ref)
            if _is_digest_like(ref) and not self.app.links.linked(name, digest):
                raise ApiError(404, "MANIFEST_UNKNOWN", f"manifest {ref} not found in {name}")
            data, mt = hs.read_manifest(repo, digest)
            self._respond(200, {"Docker-Content-Digest": digest, "ETag": f'"{digest}"'},
                          data, content_type=mt)
            return
        if self.command == "DELETE":
            self._require("delete", name)
            hs.delete_manifest(repo, name, ref)
            self._respond(202)
            return
        self._require("write", name)
        if _is_digest_like(ref):
            _check_digest(ref)
        elif not refmod.VERSION_RE.match(ref):
            raise ApiError(400, "TAG_INVALID", f"invalid tag {ref!r}")
        limit = self.app.manifest_limit
        declared = self._declared_length()
        if declared is not None and declared > limit:
            raise ApiError(413, "SIZE_INVALID", f"manifest is larger than {limit} bytes")
        body = self._body().read_all(limit)
        if body is None:
            raise ApiError(413, "SIZE_INVALID", f"manifest is larger than {limit} bytes")
        data = body
        check_manifest_shape(data)
        if _is_digest_like(ref) and digestmod.of_bytes(data) != ref:
            raise ApiError(400, "DIGEST_INVALID", "manifest content does not match the digest "
                           "in the URL", {"expected": ref, "got": digestmod.of_bytes(data)})
        self._check_named_blobs_linked(name, data)
        expect = self._tag_precondition(ref)
        try:
            digest, subject = hs.put_manifest(repo, name, ref, data,
                                              self.headers.get("Content-Type"), expect=expect)
        except Conflict as e:
            raise ApiError(412, "DENIED", str(e)) from None
        self.app.links.link(name, [digest])
        headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
        if subject:
            headers["OCI-Subject"] = subject
        self._respond(201, headers)

    def _check_named_blobs_linked(self, name: str, data: bytes) -> None:
        """A manifest may name only blobs its repository links: otherwise pushing one that
        names another repository's layer would be a way to read that layer."""
        try:
            m = oci.parse_manifest(data)
        except CorruptImage:
            return  # put_manifest gives the precise complaint
        missing = self.app.links.unlinked([name], oci.referenced_blobs(m))
        if missing:
            raise ApiError(400, "MANIFEST_BLOB_UNKNOWN",
                           f"manifest names blobs that are not in {name}",
                           {"missing": missing[:20]})
        # A descriptor whose size lies would make every client that trusts it misbehave.
        descs = m["manifests"] if oci.is_index(m) else [m["config"], *m["layers"]]
        for i, desc in enumerate(descs):
            have = self.app.repo.blob_size(desc["digest"])
            if have is not None and have != desc["size"]:
                raise ApiError(400, "MANIFEST_INVALID",
                               f"descriptor {i} ({desc['digest']}) says {desc['size']} bytes, "
                               f"the blob has {have}")

    def _tag_precondition(self, ref: str) -> object:
        """The compare-and-swap a client asks for on a tag: `If-None-Match: *` (the tag
        must not exist) or `If-Match: "<digest>"` (it must hold that digest now)."""
        none_match = (self.headers.get("If-None-Match") or "").strip()
        match = (self.headers.get("If-Match") or "").strip()
        if not (none_match or match) or _is_digest_like(ref):
            return ANY
        if none_match:
            if none_match != "*":
                raise ApiError(400, "UNSUPPORTED", "If-None-Match takes only *")
            return None
        d = match.strip('"')
        if not digestmod.is_valid(d):
            raise ApiError(400, "DIGEST_INVALID", f"If-Match wants a quoted digest, not {match!r}")
        return d

    def _h_referrers(self, name: str, digest: str) -> None:
        self._method(READ_METHODS)
        self._require("read", name)
        _check_digest(digest)
        art = self.query.get("artifactType")
        links = self.app.links
        items = [i for i in hs.referrers(self.app.repo, digest, art)
                 if links.linked(name, i["digest"])]
        headers = {"OCI-Filters-Applied": "artifactType"} if art else {}
        self._json(200, {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": items},
                   headers, content_type=oci.INDEX)


def _lingering_close(sock, seconds: float = 2.0, limit: int = 64 << 20) -> None:
    """Half-close, then swallow what the client is still sending for a moment.

    Closing a socket with unread data makes the kernel send a reset, which can destroy our
    error answer (413, 401) before the client reads it; this is what web servers call a
    lingering close."""
    import socket
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        sock.settimeout(0.5)
        got = 0
        while got < limit and time.monotonic() < deadline:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
    except OSError:
        pass


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    m = re.match(r"^\s*bytes=(\d*)-(\d*)\s*$", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    a, b = m.group(1), m.group(2)
    if a:
        start = int(a)
        end = min(int(b), size - 1) if b else size - 1
    else:
        n = int(b)
        if n == 0:
            return None
        start, end = max(size - n, 0), size - 1
    if start >= size or end < start:
        return None
    return start, end


class Door:
    """A running HTTP door (in a thread of its own); `serve()` is the blocking form."""

    def __init__(self, root: str, addr: str = "127.0.0.1:5000", *, tls_cert: str | None = None,
                 tls_key: str | None = None, anonymous_read: bool = False,
                 token_file: str | None = None, htpasswd: str | None = None,
                 access_log: TextIO | None = None, idle_timeout: float = 60.0,
                 max_connections: int = 2048, upload_limits: Limits | None = None) -> None:
        if bool(tls_cert) != bool(tls_key):
            raise InvalidReference("--tls-cert and --tls-key go together")
        auth = Authenticator(token_file, htpasswd, anonymous_read)
        self.app = App(root, auth, access_log=access_log, idle_timeout=idle_timeout,
                       upload_limits=upload_limits)
        tls = tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
        host, port = parse_addr(addr)
        _raise_nofile()
        try:
            self.server = Server((host, port), Handler, self.app, tls=tls,
                                 max_connections=max_connections)
        except OSError as e:
            raise CockerError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self.scheme = "https" if tls else "http"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{self.scheme}://{host}:{port}"

    def start(self) -> Door:
        self._thread = threading.Thread(target=self.server.serve_forever, name="http-door",
                                        daemon=True)
        self._thread.start()
        threading.Thread(target=self._reaper, name="http-uploads-reaper", daemon=True).start()
        return self

    def _reaper(self) -> None:
        limits = self.app.uploads.limits
        every = max(0.5, min(60.0, limits.ttl / 4, limits.fd_idle / 2))
        while not self._stop.wait(every):
            self.app.uploads.expire()

    def stop(self, drain: float = 10.0) -> None:
        """Stop accepting, let requests in progress finish (up to `drain` s), close."""
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.server.wait_idle(drain)
        self.app.uploads.close()


def _raise_nofile() -> None:
    # Each connection and each held upload session is a descriptor.
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 1 << 20), hard))


def serve(root: str, addr: str = "127.0.0.1:5000", *, ready: Callable[[str], None] | None = None,
          **kw) -> None:
    """Run the door until SIGTERM/SIGINT; then stop cleanly."""
    door = Door(root, addr, **kw)
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        door.start()
        msg = (f"srepo-server: serving {door.app.repo.root} on {door.url} "
               f"(OCI API at /v2/, web page at /)")
        door.app.log_line(msg)
        if ready:
            ready(door.url)
        while not stop.wait(1.0):
            pass
        door.app.log_line("srepo-server: shutting down")
        door.stop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
