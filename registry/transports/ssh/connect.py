"""SSH connections through paramiko, done the way OpenSSH users expect.

`connect()` honours ~/.ssh/config (HostName, Port, User, IdentityFile, IdentitiesOnly,
UserKnownHostsFile, StrictHostKeyChecking, ProxyJump, ProxyCommand), the ssh agent and
`-i KEY`; it checks the host key against known_hosts (hashed entries included) and
refuses a mismatch; an unknown host is refused unless the caller opted in (`accept_new`,
OpenSSH's accept-new), in which case the key is recorded and a notice printed. Passwords
and key passphrases are asked for only on a terminal. Channels get large windows and the
fastest ciphers paramiko has, because bulk blob transfer is the whole point.
"""

from __future__ import annotations

import getpass
import logging
import os
import shlex
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

if "invoke" not in sys.modules:
    # paramiko imports `invoke` (130 ms) only to run `Match exec` lines of ssh_config;
    # every remote command pays that start-up, so go without (Match exec is then ignored).
    sys.modules["invoke"] = None  # type: ignore[assignment]
import paramiko
from paramiko.auth_strategy import AuthFailure, AuthStrategy, InMemoryPrivateKey, Password

from common.errors import AuthError, TransportError

# paramiko logs what its transport thread catches (a reset connection...) at ERROR; with
# no handler configured Python prints that to stderr beside our own one-line error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# 8 MiB receive windows on exec channels: enough to keep a fast link busy (8 MiB per
# round trip), while a larger one let the transport thread buffer (and copy) far ahead of
# the consumer: smart pulls measured 1.5-3x faster than with 128 MiB windows. SFTP
# sessions use a smaller window still, see registry.transports.ssh.sftp_repo.open_sftp.
WINDOW_SIZE = 8 << 20
# The largest packet we accept; OpenSSH then sends up to this much per packet (its
# limit is 256 KiB), which cuts paramiko's per-packet Python work on pulls about 3x.
# What we send stays within the 32 KiB sshd advertises for its session channels.
MAX_PACKET_SIZE = 2 ** 17
# AES-GCM is one C call per packet (no separate MAC pass), the cheapest in paramiko.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr",
           "aes192-ctr")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512-etm@openssh.com",
        "hmac-sha2-512", "hmac-sha1")
CONNECT_TIMEOUT = float(os.environ.get("COCKER_SSH_TIMEOUT", "20"))
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


class Connection(paramiko.SSHClient):
    """An SSHClient that also owns what it was reached through (jump hosts, agent)."""

    def __init__(self) -> None:
        super().__init__()
        self.hops: list[paramiko.SSHClient] = []
        self.agent: paramiko.Agent | None = None
        self.target = ""  # user@host:port, for messages

    def close(self) -> None:
        super().close()
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        for hop in reversed(self.hops):
            hop.close()
        self.hops = []


def _tty() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown host: refuse, or (explicit opt-in) record the key and say so on stderr.

    Never silent: paramiko's AutoAddPolicy is a man-in-the-middle hole."""

    def __init__(self, accept_new: bool, save_to: str | None, files: list[str]) -> None:
        self.accept_new, self.save_to, self.files = accept_new, save_to, files

    def missing_host_key(self, client, hostname: str, key: paramiko.PKey) -> None:
        if not self.accept_new:
            where = ", ".join(self.files) or "~/.ssh/known_hosts"
            raise AuthError(f"host {hostname} is not in known_hosts ({where}); its key is "
                            f"{_fingerprint(key)} — check it, then retry with "
                            "--accept-new-host-key to trust it")
        if self.save_to:
            d = os.path.dirname(self.save_to)
            if d:
                os.makedirs(d, mode=0o700, exist_ok=True)
            fd = os.open(self.save_to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        print(f"cocker: warning: permanently added host key for {hostname} "
              f"({_fingerprint(key)}) to {self.save_to or 'this session'}", file=sys.stderr)


class _Auth(AuthStrategy):
    """Keys named with -i, then the agent, then IdentityFile/default keys, then a password
    (terminal only). Sources are produced lazily, so a passphrase is only asked for when
    the key is actually needed."""

    def __init__(self, conn: Connection, user: str, target: str, identities: list[str],
                 defaults: list[str], use_agent: bool) -> None:
        super().__init__(ssh_config=paramiko.SSHConfig())  # options come from connect()'s cfg
        self.conn, self.user, self.target = conn, user, target
        self.identities, self.defaults, self.use_agent = identities, defaults, use_agent
        self.tried: list[str] = []
        self.agent_keys: list[paramiko.PKey] | None = None

    def _agent_keys(self) -> list[paramiko.PKey]:
        if self.agent_keys is None:
            self.agent_keys = []
            if self.use_agent and os.environ.get("SSH_AUTH_SOCK"):
                try:
                    self.conn.agent = paramiko.Agent()
                    self.agent_keys = list(self.conn.agent.get_keys())
                except paramiko.SSHException:
                    pass
        return self.agent_keys

    def _agent_holds(self, path: str) -> bool:
        """Whether the agent has the key whose public half is `path`.pub."""
        try:
            with open(path + ".pub") as f:
                b64 = f.read().split()[1]
        except (OSError, IndexError):
            return False
        return any(k.get_base64() == b64 for k in self._agent_keys())

    def _load(self, path: str, explicit: bool):
        try:
            return paramiko.PKey.from_path(path)
        except FileNotFoundError:
            if explicit:
                raise AuthError(f"identity file {path} not found") from None
            return None
        except (paramiko.PasswordRequiredException, TypeError) as e:
            # paramiko says "password required" with a TypeError for OpenSSH-format keys
            if isinstance(e, TypeError) and "password" not in str(e):
                raise
            # As OpenSSH does: the agent's copy first, then a passphrase from a terminal.
            if self._agent_holds(path):
                self.tried.append(f"{path} (encrypted; the agent's copy)")
                return None
            if not _tty():
                self.tried.append(f"{path} (needs its passphrase: load it with ssh-add, or "
                                  "run on a terminal)")
                return None
            pw = getpass.getpass(f"Enter passphrase for key '{path}': ")
            try:
                # positional: paramiko 3 names it `passphrase`, 4+ `password`; the key
                # loader underneath wants bytes whatever the stubs say
                return paramiko.PKey.from_path(path, pw.encode())  # type: ignore[arg-type]
            except (paramiko.SSHException, ValueError):
                self.tried.append(f"{path} (wrong passphrase)")
                return None
        except (paramiko.SSHException, ValueError, OSError) as e:
            if explicit:
                raise AuthError(f"cannot read identity file {path}: {e}") from None
            return None

    def get_sources(self) -> Iterator:
        for path in self.identities:
            k = self._load(path, explicit=True)
            if k is not None:
                self.tried.append(path)
                yield InMemoryPrivateKey(self.user, k)
        for k in self._agent_keys():
            self.tried.append("agent key")
            yield InMemoryPrivateKey(self.user, k)
        for path in self.defaults:
            k = self._load(path, explicit=False)
            if k is not None:
                self.tried.append(path)
                yield InMemoryPrivateKey(self.user, k)
        if _tty():
            self.tried.append("password")
            yield Password(self.user, lambda: getpass.getpass(f"{self.target}'s password: "))


def _load_config(config_path: str | None) -> paramiko.SSHConfig:
    if not config_path:
        return paramiko.SSHConfig()
    path = os.path.expanduser(config_path)
    if not os.path.isfile(path):
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(path)
    except Exception as e:  # noqa: BLE001 (paramiko raises several kinds for a bad config file)
        raise TransportError(f"cannot parse ssh config {path}: {e}") from None


def _known_hosts_files(known_hosts, cfg: dict) -> tuple[list[str], list[str]]:
    """(user files, global files). The first user file is where accept-new writes."""
    if known_hosts:
        user = [known_hosts] if isinstance(known_hosts, str) else list(known_hosts)
    elif cfg.get("userknownhostsfile"):
        user = shlex.split(cfg["userknownhostsfile"])
    else:
        user = ["~/.ssh/known_hosts"]
    user = [os.path.expanduser(p) for p in user if p not in ("none", "/dev/null")]
    glob = ["/etc/ssh/ssh_known_hosts"] if not known_hosts else []
    return user, glob


def _open_socket(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise TransportError(f"cannot resolve host {host}: {e.strerror}") from None
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        s = socket.socket(family, kind, proto)
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(addr)
        except OSError as e:
            s.close()
            last = e
            continue
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Big kernel buffers keep the pipe full while Python encrypts the next packet.
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:
                pass
        s.settimeout(None)
        return s
    if isinstance(last, socket.timeout):
        raise TransportError(f"cannot connect to {host} port {port}: timed out")
    why = (last.strerror if last is not None and last.strerror else str(last)).lower()
    raise TransportError(f"cannot connect to {host} port {port}: {why}")


def _transport_factory(sock: Any, /, *, gss_kex: bool = False, gss_deleg_creds: bool = True,
                       disabled_algorithms: Mapping[str, Iterable[str]] | None = None
                       ) -> paramiko.Transport:
    # paramiko passes disabled_algorithms (and, in some versions, the GSS flags, unused here)
    t = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                           default_max_packet_size=MAX_PACKET_SIZE,
                           disabled_algorithms=disabled_algorithms)
    opts = t.get_security_options()
    have = set(opts.ciphers)
    opts.ciphers = tuple(c for c in CIPHERS if c in have) + tuple(
        c for c in opts.ciphers if c not in CIPHERS)
    have = set(opts.digests)
    opts.digests = tuple(m for m in MACS if m in have) + tuple(
        m for m in opts.digests if m not in MACS)
    return t


def _transport(client: paramiko.SSHClient) -> paramiko.Transport:
    t = client.get_transport()
    if t is None:
        raise TransportError("the SSH connection is closed")
    return t


def _parse_hop(hop: str) -> tuple[str | None, str, int | None]:
    hop = hop.strip()
    if hop.startswith("ssh://"):
        hop = hop[len("ssh://"):].rstrip("/")
    user, _, hostport = hop.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif hostport.count(":") == 1:
        host, p = hostport.split(":")
        port = int(p)
    return user or None, host, port


def connect(host: str, port: int | None = None, user: str | None = None, *,
            identity: str | Sequence[str] | None = None, accept_new: bool = False,
            known_hosts: str | Sequence[str] | None = None,
            config_path: str | None = "~/.ssh/config") -> paramiko.SSHClient:
    """An authenticated SSH connection to `host` (an alias from ~/.ssh/config or a name)."""
    config = _load_config(config_path)
    cfg = config.lookup(host)
    hostname = cfg.get("hostname") or host
    port = int(port or cfg.get("port") or 22)
    user = user or cfg.get("user") or getpass.getuser()
    strict = str(cfg.get("stricthostkeychecking", "")).lower()
    accept_new = accept_new or strict in ("accept-new", "no", "off")

    conn = Connection()
    conn.target = f"{user}@{hostname}" + (f":{port}" if port != 22 else "")
    user_files, global_files = _known_hosts_files(known_hosts, cfg)
    for path in global_files + user_files:
        if os.path.isfile(path):
            try:
                conn.load_system_host_keys(path)
            except (OSError, paramiko.SSHException) as e:
                raise AuthError(f"cannot read known_hosts file {path}: {e}") from None
    conn.set_missing_host_key_policy(
        _HostKeyPolicy(accept_new, user_files[0] if user_files else None, user_files))

    try:
        sock = _route(conn, config_path, cfg, hostname, port, accept_new, known_hosts, identity)
        explicit = [identity] if isinstance(identity, str) else list(identity or [])
        explicit = [os.path.expanduser(p) for p in explicit]
        only = str(cfg.get("identitiesonly", "no")).lower() == "yes"
        configured = [os.path.expanduser(p) for p in cfg.get("identityfile", [])]
        defaults = configured + ([] if only or configured else
                                 [os.path.expanduser(f"~/.ssh/{k}") for k in DEFAULT_KEYS])
        if configured and not only:
            defaults += [os.path.expanduser(f"~/.ssh/{k}") for k in DEFAULT_KEYS]
        defaults = [p for p in dict.fromkeys(defaults) if p not in explicit]
        auth = _Auth(conn, user, conn.target, explicit, defaults, use_agent=not only)
        conn.connect(hostname, port, username=user, sock=sock, auth_strategy=auth,
                     transport_factory=_transport_factory, timeout=CONNECT_TIMEOUT,
                     banner_timeout=CONNECT_TIMEOUT, auth_timeout=CONNECT_TIMEOUT)
    except paramiko.BadHostKeyException as e:
        conn.close()
        name = hostname if port == 22 else f"[{hostname}]:{port}"
        raise AuthError(
            f"HOST KEY MISMATCH for {name}: the server offered {_fingerprint(e.key)}, "
            f"known_hosts has {e.expected_key.fingerprint}; refusing to connect (possible "
            f"man-in-the-middle). If the key really changed: ssh-keygen -R '{name}'") from None
    except AuthFailure:
        conn.close()
        tried = ", ".join(auth.tried) or "no key found"
        raise AuthError(f"{conn.target}: authentication refused (tried {tried}); check the "
                        "user and that the key is in the server's authorized_keys") from None
    except paramiko.AuthenticationException as e:
        conn.close()
        raise AuthError(f"{conn.target}: authentication refused ({e})") from None
    except (AuthError, TransportError):
        conn.close()
        raise
    except paramiko.SSHException as e:
        conn.close()
        raise TransportError(f"ssh {conn.target}: {e}") from None
    except (OSError, EOFError) as e:
        conn.close()
        raise TransportError(f"ssh {conn.target}: connection failed: {e}") from None
    return conn


def _route(conn: Connection, config_path, cfg: dict, hostname: str, port: int,
           accept_new: bool, known_hosts, identity):
    """The byte pipe to the target: a TCP socket, a jump host's channel, or a ProxyCommand."""
    jump = cfg.get("proxyjump")
    if jump and jump.lower() != "none":
        hops = [h for h in jump.split(",") if h.strip()]
        prev: paramiko.SSHClient | None = None
        for hop in hops:
            hu, hh, hp = _parse_hop(hop)
            if prev is None:
                client = connect(hh, hp, hu, accept_new=accept_new, known_hosts=known_hosts,
                                 config_path=config_path, identity=identity)
            else:
                client = _connect_via(prev, hh, hp, hu, accept_new, known_hosts, config_path,
                                      identity)
            conn.hops.append(client)
            prev = client
        if prev is None:
            raise TransportError(f"ProxyJump {jump!r} names no host")
        return _direct(prev, hostname, port)
    proxy = cfg.get("proxycommand")
    if proxy and proxy.lower() != "none":
        return paramiko.ProxyCommand(proxy)
    return _open_socket(hostname, port)


def _direct(via: paramiko.SSHClient, hostname: str, port: int):
    try:
        return _transport(via).open_channel("direct-tcpip", (hostname, port),
                                                ("127.0.0.1", 0), timeout=CONNECT_TIMEOUT)
    except paramiko.ChannelException as e:
        raise TransportError(f"jump host could not reach {hostname} port {port}: "
                             f"{e.text or e}") from None


def _connect_via(prev, host, port, user, accept_new, known_hosts, config_path, identity):
    # A later hop of a ProxyJump chain: same rules, reached through the previous hop.
    config = _load_config(config_path)
    cfg = dict(config.lookup(host))
    cfg.pop("proxyjump", None)
    sub = Connection()
    hostname = cfg.get("hostname") or host
    port = int(port or cfg.get("port") or 22)
    user = user or cfg.get("user") or getpass.getuser()
    user_files, global_files = _known_hosts_files(known_hosts, cfg)
    for path in global_files + user_files:
        if os.path.isfile(path):
            sub.load_system_host_keys(path)
    sub.set_missing_host_key_policy(
        _HostKeyPolicy(accept_new, user_files[0] if user_files else None, user_files))
    sub.target = f"{user}@{hostname}:{port}"
    explicit = [identity] if isinstance(identity, str) else list(identity or [])
    auth = _Auth(sub, user, sub.target, [os.path.expanduser(p) for p in explicit],
                 [os.path.expanduser(p) for p in cfg.get("identityfile", [])], True)
    try:
        sub.connect(hostname, port, username=user, sock=_direct(prev, hostname, port),
                    auth_strategy=auth, transport_factory=_transport_factory,
                    timeout=CONNECT_TIMEOUT)
    except paramiko.BadHostKeyException:
        sub.close()
        raise AuthError(f"HOST KEY MISMATCH for jump host {hostname}:{port}; refusing") from None
    except paramiko.AuthenticationException:
        sub.close()
        raise AuthError(f"{sub.target}: authentication refused") from None
    return sub


# remote commands ----------------------------------------------------------------------
def quote(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def open_exec(client: paramiko.SSHClient, argv: Sequence[str] | str) -> paramiko.Channel:
    """A raw exec channel running `argv` on the remote (stdin/stdout are the channel)."""
    cmd = argv if isinstance(argv, str) else quote(argv)
    try:
        chan = _transport(client).open_session(window_size=WINDOW_SIZE,
                                                   max_packet_size=MAX_PACKET_SIZE)
        chan.exec_command(cmd)
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise TransportError(f"cannot run a command on the remote: {e}") from None
    return chan


def run(client: paramiko.SSHClient, argv: Sequence[str] | str, *, stdin: bytes = b"",
        timeout: float = 60) -> tuple[int, bytes, bytes]:
    """Run a short remote command; (exit status, stdout, stderr)."""
    chan = open_exec(client, argv)
    chan.settimeout(timeout)
    try:
        if stdin:
            chan.sendall(stdin)
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        while True:
            data = chan.recv(1 << 16)
            if not data:
                break
            out += data
        while chan.recv_stderr_ready() or not chan.exit_status_ready():
            data = chan.recv_stderr(1 << 16)
            if not data:
                break
            err += data
        rc = chan.recv_exit_status()
    except TimeoutError:
        raise TransportError("remote command timed out") from None
    finally:
        chan.close()
    return rc, bytes(out), bytes(err)
