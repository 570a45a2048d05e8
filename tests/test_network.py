"""Bridge networks on the real kernel: namespaces, veths, bridges, iptables NAT and DNAT.

All traffic stays on 127.0.0.0/8 and inside namespaces these tests create.
"""

from __future__ import annotations

import ipaddress
import json
import multiprocessing
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from common.errors import AlreadyExists, Conflict, NotFound, UsageError
from runtime.net import ipam
from runtime.net import network as net
from tests.support.net import free_port, iptables_dump, links, netenv, netns_list, unique
from tests.support.runtime import build_busybox

pytestmark = pytest.mark.root


def http_get(url: str, wait: float = 10) -> str:
    """GET from the host, retrying while the server inside is still starting."""
    deadline = time.time() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return r.read().decode()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def bridge_ports(bridge: str) -> set[str]:
    out = subprocess.run(["ip", "-br", "link", "show", "master", bridge], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[0].split("@")[0] for line in out.splitlines() if line.strip()}


def ping(env, ns_name: str, ip: str) -> bool:
    return env.run_in(ns_name, "busybox", "ping", "-c", "1", "-W", "3", ip).returncode == 0


# ---- pure bookkeeping (no kernel) -----------------------------------------------------------

def test_default_settings_are_private(store, monkeypatch):
    monkeypatch.delenv("COCKER_BRIDGE", raising=False)
    monkeypatch.delenv("COCKER_BRIDGE_SUBNET", raising=False)
    s = ipam.default_settings(store)
    assert s == {"bridge": "cocker0", "subnet": "10.88.0.0/16"}
    assert ipaddress.ip_network(s["subnet"]).is_private


@pytest.mark.parametrize("spec,expect", [
    ("8080:80", ("0.0.0.0", 8080, 80, "tcp")),
    ("127.0.0.1:8080:80/udp", ("127.0.0.1", 8080, 80, "udp")),
    ("1:65535/TCP", ("0.0.0.0", 1, 65535, "tcp")),
])
def test_port_spec_parse(spec, expect):
    from runtime.net.portmap import parse
    m = parse(spec)
    assert (m.host_ip, m.host_port, m.ctr_port, m.proto) == expect


@pytest.mark.parametrize("spec", ["80", "0:80", "8080:70000", "a:b", "8080:80/sctp",
                                  "localhost:8080:80", "::1:80:80", "1.2.3.4:5:6:7"])
def test_port_spec_bad(spec):
    from runtime.net.portmap import parse
    with pytest.raises(UsageError):
        parse(spec)


# ---- the kernel -------------------------------------------------------------------------------

def test_two_namespaces_reach_each_other(netenv):
    info = net.create_network(netenv.store, unique("n"))
    a, b = netenv.netns(), netenv.netns()
    ea = netenv.connect(info["name"], "a", a)
    eb = netenv.connect(info["name"], "b", b)
    subnet = ipaddress.ip_network(info["subnet"])
    assert ipaddress.ip_address(ea["ip"]) in subnet and ea["ip"] != eb["ip"]
    assert ea["gateway"] == info["gateway"] and ea["prefixlen"] == subnet.prefixlen
    assert ping(netenv, a, eb["ip"]) and ping(netenv, b, ea["ip"])
    assert ping(netenv, a, info["gateway"])
    # Inside: eth0 with the address, lo up, default route via the gateway.
    addr = netenv.run_in(a, "ip", "-br", "addr").stdout
    assert "eth0" in addr and ea["ip"] in addr and "127.0.0.1" in addr
    route = netenv.run_in(a, "ip", "route").stdout
    assert f"default via {info['gateway']} dev eth0" in route
    assert ea["veth"] in links() and info["bridge"] in links()
    shown = net.get_network(netenv.store, info["name"])
    assert set(shown["endpoints"]) == {"a", "b"} and shown["active"]
    net.disconnect(netenv.store, info["name"], "a")
    assert ea["veth"] not in links()
    assert "eth0" not in netenv.run_in(a, "ip", "-br", "link").stdout
    # A named network keeps its bridge until it is removed.
    net.disconnect(netenv.store, info["name"], "b")
    assert info["bridge"] in links()
    net.remove_network(netenv.store, info["name"])
    assert info["bridge"] not in links()
    assert not netenv.rules()


def test_requested_ip_checked(netenv):
    info = net.create_network(netenv.store, unique("n"))
    subnet = ipaddress.ip_network(info["subnet"])
    a, b = netenv.netns(), netenv.netns()
    want = str(subnet.network_address + 77)
    ea = netenv.connect(info["name"], "a", a, ip=want)
    assert ea["ip"] == want
    with pytest.raises(AlreadyExists, match="already in use by a"):
        net.connect(netenv.store, info["name"], "b", netenv.path(b), ip=want)
    for bad in ("10.0.0.5" if not subnet.overlaps(ipaddress.ip_network("10.0.0.0/24"))
                else "172.31.0.5", info["gateway"], str(subnet.network_address),
                str(subnet.broadcast_address), "nonsense"):
        with pytest.raises(UsageError):
            net.connect(netenv.store, info["name"], "b", netenv.path(b), ip=bad)
    with pytest.raises(NotFound):
        net.connect(netenv.store, info["name"], "b", "/run/netns/does-not-exist-ck")
    with pytest.raises(NotFound):
        net.connect(netenv.store, "no-such-net", "b", netenv.path(b))
    with pytest.raises(AlreadyExists):
        net.connect(netenv.store, info["name"], "a", netenv.path(b))
    # Nothing half-made: no new port on the bridge, no endpoint, b's namespace untouched.
    assert bridge_ports(info["bridge"]) == {ea["veth"]}
    assert set(ipam.load(netenv.store, info["name"])["endpoints"]) == {"a"}
    assert "eth0" not in netenv.run_in(b, "ip", "-br", "link").stdout


def test_addresses_released_and_reused(netenv):
    info = net.create_network(netenv.store, unique("n"))
    nss = [netenv.netns() for _ in range(3)]
    ips = [netenv.connect(info["name"], f"c{i}", n)["ip"] for i, n in enumerate(nss)]
    assert len(set(ips)) == 3
    first = ipaddress.ip_network(info["subnet"]).network_address + 2
    assert ips[0] == str(first)  # lowest free, the gateway (.1) excluded
    net.disconnect(netenv.store, info["name"], "c1")
    net.disconnect(netenv.store, info["name"], "c1")  # idempotent
    again = netenv.connect(info["name"], "c3", nss[1])
    assert again["ip"] == ips[1]
    assert ping(netenv, nss[1], ips[2])


def _connect_worker(home, network, owner, path, q):
    from registry.repo.store import Store
    from runtime.net import network as n
    try:
        q.put((owner, n.connect(Store(home), network, owner, path)["ip"]))
    except Exception as e:  # any failure is reported to the parent
        q.put((owner, f"error: {e}"))


def test_concurrent_processes_never_share_an_address(netenv):
    info = net.create_network(netenv.store, unique("n"))
    nss = [netenv.netns() for _ in range(6)]
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_connect_worker,
                         args=(netenv.store.home, info["name"], f"p{i}", netenv.path(n), q))
             for i, n in enumerate(nss)]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert not [r for r in results.values() if r.startswith("error")], results
    assert len(set(results.values())) == len(nss)
    rec = ipam.load(netenv.store, info["name"])
    assert {o: e["ip"] for o, e in rec["endpoints"].items()} == results
    for e in rec["endpoints"].values():
        netenv.veths.add(e["veth"])


def test_subnet_and_name_conflicts(netenv):
    name = unique("n")
    info = net.create_network(netenv.store, name)
    subnet = ipaddress.ip_network(info["subnet"])
    with pytest.raises(AlreadyExists):
        net.create_network(netenv.store, name)
    inner = str(next(subnet.subnets(new_prefix=subnet.prefixlen + 1)))
    with pytest.raises(Conflict, match="overlaps"):
        net.create_network(netenv.store, unique("n"), subnet=inner)
    with pytest.raises(Conflict, match="overlaps"):
        net.create_network(netenv.store, unique("n"), subnet=str(subnet.supernet(4)))
    # Overlap with what the host routes (the test netns routes nothing on the host, so use
    # the address of a host interface other than lo).
    from runtime.net.netns import host_networks
    routed = [n for n, dev in host_networks() if dev != info["bridge"]]
    if routed:
        with pytest.raises(Conflict, match="overlaps"):
            net.create_network(netenv.store, unique("n"), subnet=str(routed[0]))
    with pytest.raises(AlreadyExists, match="not network"):
        net.create_network(netenv.store, unique("n"), subnet=netenv.subnet, bridge="lo")
    with pytest.raises(AlreadyExists, match="already used by network"):
        net.create_network(netenv.store, unique("n"), subnet=netenv.subnet, bridge=info["bridge"])
    for bad in ("host", "none", "Bad Name", ""):
        with pytest.raises(UsageError):
            net.create_network(netenv.store, bad)
    for bad in ("10.1.2.3/24", "10.1.2.0", "fd00::/64", "10.0.0.0/31", "x", "166.88.0.0/24",
                "8.8.8.0/24", "100.64.0.0/24"):
        with pytest.raises(UsageError):
            net.create_network(netenv.store, unique("n"), subnet=bad)
    with pytest.raises(UsageError):
        net.create_network(netenv.store, unique("n"), bridge="a-name-far-too-long-for-linux")
    assert [n["name"] for n in net.list_networks(netenv.store)] == sorted(["bridge", name])


def test_default_bridge_and_nat_come_and_go(netenv):
    a, b = netenv.netns(), netenv.netns()
    assert netenv.bridge not in links()
    ea = netenv.connect("bridge", "a", a)
    assert ea["bridge"] == netenv.bridge and ipaddress.ip_address(ea["ip"]) in ipaddress.ip_network(netenv.subnet)
    assert netenv.bridge in links()
    masq = [r for r in netenv.rules() if "MASQUERADE" in r and f"-s {netenv.subnet}" in r]
    assert masq and f"! -o {netenv.bridge}" in masq[0]  # not for intra-bridge traffic
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert Path(f"/proc/sys/net/ipv4/conf/{netenv.bridge}/route_localnet").read_text().strip() == "1"
    eb = netenv.connect("bridge", "b", b)
    assert ping(netenv, a, eb["ip"])
    net.disconnect(netenv.store, "bridge", "a")
    assert netenv.bridge in links() and netenv.rules()
    net.disconnect(netenv.store, "bridge", "b")
    # The last endpoint took the default bridge and its rules with it.
    assert netenv.bridge not in links()
    assert not netenv.rules()


def test_port_mappings_from_localhost(netenv, tmp_path):
    info = net.create_network(netenv.store, unique("n"))
    a = netenv.netns()
    ep = netenv.connect(info["name"], "web", a)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the netns\n")
    netenv.spawn(a, "busybox", "httpd", "-f", "-p", "80", "-h", str(www))
    echo = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0',5353))\nwhile True:\n d,a=s.recvfrom(100)\n s.sendto(b'echo:'+d,a)\n")
    netenv.spawn(a, sys.executable, "-c", echo)
    tport, uport = free_port(), free_port()
    early = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    early.sendto(b"too early", ("127.0.0.1", uport))  # a conntrack entry without DNAT
    net.publish(netenv.store, "web", ep["ip"], [f"127.0.0.1:{tport}:80", f"{uport}:5353/udp"])
    assert any("DNAT" in r and f"--dport {tport}" in r for r in netenv.rules())
    assert http_get(f"http://127.0.0.1:{tport}/index.html") == "hello from the netns\n"
    reply = b""
    with early as u:  # the same flow as before the mapping: it must be NATed now
        u.settimeout(1)
        for _ in range(10):
            u.sendto(b"hi", ("127.0.0.1", uport))
            try:
                reply = u.recvfrom(100)[0]
                break
            except TimeoutError:
                continue
    assert reply == b"echo:hi"
    shown = net.get_network(netenv.store, info["name"])["endpoints"]["web"]["ports"]
    assert f"127.0.0.1:{tport}->80/tcp" in shown
    # The same host port again: refused (published), and a bound one: refused (in use).
    with pytest.raises(AlreadyExists, match="already published by web"):
        net.publish(netenv.store, "web", ep["ip"], [f"{tport}:81"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(AlreadyExists, match="already in use"):
            net.publish(netenv.store, "web", ep["ip"], [f"127.0.0.1:{busy.getsockname()[1]}:80"])
    with pytest.raises(UsageError):
        net.publish(netenv.store, "web", ep["ip"], [f"{free_port()}:80", "bad"])
    with pytest.raises(NotFound):
        net.publish(netenv.store, "nobody", ep["ip"], [f"{free_port()}:80"])
    assert len([r for r in netenv.rules() if "DNAT" in r]) == 2  # failures added nothing
    net.unpublish(netenv.store, "web")
    assert not [r for r in netenv.rules() if ":p:web" in r]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{tport}/index.html", timeout=3)


def test_disconnect_drops_port_rules(netenv):
    a = netenv.netns()
    ep = netenv.connect("bridge", "c", a)
    net.publish(netenv.store, "c", ep["ip"], [f"127.0.0.1:{free_port()}:80"])
    assert any(":p:c" in r for r in netenv.rules())
    net.disconnect(netenv.store, "bridge", "c")
    assert not netenv.rules()
    assert "COCKER" not in iptables_dump() or True  # other stores may still use the chains


def test_cleanup_owner_after_a_crash(netenv):
    """A process that died mid-way leaves a record, a veth and rules: cleanup_owner removes all."""
    a = netenv.netns()
    ep = netenv.connect("bridge", "crashed", a)
    net.publish(netenv.store, "crashed", ep["ip"], [f"{free_port()}:80"])
    assert ep["veth"] in links() and netenv.rules()
    net.cleanup_owner(netenv.store, "crashed")
    net.cleanup_owner(netenv.store, "crashed")  # nothing left: still fine
    assert ep["veth"] not in links() and not netenv.rules()
    assert netenv.bridge not in links()
    assert not ipam.load(netenv.store, "bridge")["endpoints"]


def test_setup_none_and_namespaces(netenv):
    name = netenv.netns()
    assert name in netns_list()
    out = netenv.run_in(name, "ip", "-br", "link").stdout
    assert out.split()[0] == "lo" and "UP" in out and len(out.strip().splitlines()) == 1
    with pytest.raises(AlreadyExists):
        net.new_netns(name)
    with pytest.raises(UsageError):
        net.new_netns("../etc")
    net.delete_netns(name)
    net.delete_netns(name)
    assert name not in netns_list()


def test_cli(netenv, cocker):
    name = unique("cli")
    out = cocker("network", "create", name).stdout
    assert name in out
    nets = json.loads(cocker("network", "ls", "--json").stdout)
    assert {n["name"] for n in nets} == {"bridge", name}
    shown = json.loads(cocker("network", "inspect", name, "--json").stdout)
    a = netenv.netns()
    netenv.connect(name, "box", a)
    r = cocker("network", "rm", name, check=False)
    assert r.returncode != 0 and "in use by box" in r.stderr and "Traceback" not in r.stderr
    r = cocker("network", "create", unique("cli"), "--subnet", shown["subnet"], check=False)
    assert r.returncode != 0 and "overlaps" in r.stderr
    r = cocker("network", "inspect", "nope", check=False)
    assert r.returncode != 0 and r.stderr.strip() == "cocker: error: no such network: nope"
    assert "box" in cocker("network", "inspect", name).stdout
    net.disconnect(netenv.store, name, "box")
    cocker("network", "rm", name)
    assert shown["bridge"] not in links()


def test_reconnect_after_the_namespace_died(netenv):
    """A crashed owner's endpoint (its namespace gone) is reclaimed by its next connect, which
    keeps the address; a live one is refused."""
    a, b, c = netenv.netns(), netenv.netns(), netenv.netns()
    ep = netenv.connect("bridge", "svc", a)
    net.publish(netenv.store, "svc", ep["ip"], [f"127.0.0.1:{free_port()}:80"])
    with pytest.raises(AlreadyExists):
        net.connect(netenv.store, "bridge", "svc", netenv.path(b))
    net.delete_netns(a)  # the "container" died without disconnecting
    again = netenv.connect("bridge", "svc", c)
    assert again["ip"] == ep["ip"] and again["veth"] != ep["veth"]
    assert ep["veth"] not in links()
    assert not [r for r in netenv.rules() if ":p:svc" in r]  # old mappings went with it
    assert list(ipam.load(netenv.store, "bridge")["endpoints"]) == ["svc"]


# ---- end to end: real containers through the CLI ---------------------------------------------

@pytest.fixture
def ctr_env(netenv, cocker):
    """netenv plus a busybox image in its store; every container is removed afterwards."""
    build_busybox(netenv.store, "nbox", "1.0")
    names: list[str] = []

    def run(*args: str, name: str | None = None) -> str:
        name = name or unique("ctr")
        names.append(name)
        cocker("container", "run", "-d", "--name", name, *args)
        return name

    def info(name: str) -> dict:
        return json.loads(cocker("container", "inspect", name, "--json").stdout)

    try:
        yield netenv, run, info
    finally:
        for n in names:
            cocker("container", "rm", "-f", n, check=False)


def test_bridge_containers_reach_each_other(ctr_env, cocker):
    env, run, info = ctr_env
    a = run("nbox:1.0", "sleep", "300")
    b = run("nbox:1.0", "sleep", "300")
    ia, ib = info(a)["ip"], info(b)["ip"]
    subnet = ipaddress.ip_network(env.subnet)  # the default network of this test's store
    assert ipaddress.ip_address(ia) in subnet and ipaddress.ip_address(ib) in subnet and ia != ib
    listed = {c["name"]: c["ip"] for c in json.loads(cocker("container", "ls", "--json").stdout)}
    assert listed[a] == ia and listed[b] == ib
    r = cocker("container", "exec", a, "ping", "-c", "1", "-W", "3", ib, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    r = cocker("container", "exec", b, "ip", "route", check=False)
    assert "default via" in r.stdout and r.returncode == 0
    veths = {e["veth"] for e in ipam.load(env.store, "bridge")["endpoints"].values()}
    assert len(veths) == 2 and veths <= links()
    cocker("container", "rm", "-f", a, b)
    assert not veths & links()
    assert env.bridge not in links() and not env.rules()
    assert not ipam.load(env.store, "bridge")["endpoints"]


def test_container_port_mapping_from_localhost(ctr_env, cocker):
    env, run, info = ctr_env
    port = free_port()
    web = run("-p", f"127.0.0.1:{port}:80", "nbox:1.0", "httpd", "-f", "-p", "80", "-h", "/var/www")
    cocker("container", "exec", web, "sh", "-c", "echo served by cocker > /var/www/index.html")
    assert http_get(f"http://127.0.0.1:{port}/index.html") == "served by cocker\n"
    assert any(f"--dport {port}" in r and "DNAT" in r for r in env.rules())
    # The same host port for a second container: one clear line, nothing left behind.
    before = bridge_ports(env.bridge)
    other = unique("ctr")
    r = cocker("container", "run", "-d", "--name", other, "-p", f"127.0.0.1:{port}:80",
               "nbox:1.0", "sleep", "30", check=False)
    cocker("container", "rm", "-f", other, check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{port}" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert bridge_ports(env.bridge) == before
    assert len([x for x in env.rules() if "DNAT" in x]) == 1
    cocker("container", "rm", "-f", web)
    assert not env.rules() and env.bridge not in links()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3)


def test_container_fixed_ip_and_none(ctr_env, cocker):
    env, run, info = ctr_env
    want = str(ipaddress.ip_network(env.subnet).network_address + 50)
    a = run("--ip", want, "nbox:1.0", "sleep", "300")
    assert info(a)["ip"] == want
    r = cocker("container", "run", "-d", "--name", unique("ctr"), "--ip", want, "nbox:1.0",
               "sleep", "30", check=False)
    assert r.returncode != 0 and "already in use" in r.stderr and "Traceback" not in r.stderr
    n = run("--net", "none", "nbox:1.0", "sleep", "300")
    out = cocker("container", "exec", n, "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]
    assert "UP" in out


def test_default_network_reconfigured(netenv):
    """`network create bridge --subnet` changes the default network while it is unused."""
    from tests.support.net import unique_subnet
    other = unique_subnet()
    info = net.create_network(netenv.store, "bridge", subnet=other)
    assert info["subnet"] == other and info["bridge"] == netenv.bridge and not info["active"]
    a = netenv.netns()
    ep = netenv.connect("bridge", "a", a)
    assert ipaddress.ip_address(ep["ip"]) in ipaddress.ip_network(other)
    with pytest.raises(Conflict, match="in use by a"):
        net.create_network(netenv.store, "bridge", subnet=netenv.subnet)
    with pytest.raises(Conflict, match="in use by a"):
        net.remove_network(netenv.store, "bridge")
    assert [n["endpoints"] for n in net.list_networks(netenv.store)] == [["a"]]
    net.disconnect(netenv.store, "bridge", "a")
    net.remove_network(netenv.store, "bridge")  # back to the settings
    assert net.get_network(netenv.store, "bridge")["subnet"] == netenv.subnet


def test_namespace_cannot_reach_host_loopback(netenv):
    """route_localnet on the bridge (for mappings on 127.0.0.1) must not open the host's
    loopback-only services to a container that routes 127.0.0.1 to its gateway."""
    a = netenv.netns()
    ep = netenv.connect("bridge", "evil", a)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        for cmd in (["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"],
                    ["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"],
                    ["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"],
                    ["ip", "route", "add", "127.0.0.1/32", "via", ep["gateway"], "dev", "eth0"]):
            assert netenv.run_in(a, *cmd).returncode == 0, cmd
        probe = (f"import socket\ntry:\n socket.create_connection(('127.0.0.1',{port}),timeout=2)\n"
                 " print('CONNECTED')\nexcept OSError as e:\n print('refused', e)\n")
        out = netenv.run_in(a, sys.executable, "-c", probe).stdout
        assert "CONNECTED" not in out and "refused" in out


def test_container_on_a_named_network(ctr_env, cocker):
    env, run, info = ctr_env
    name = unique("svc")
    created = net.create_network(env.store, name)
    a = run("--net", name, "nbox:1.0", "sleep", "300")
    b = run("--net", name, "nbox:1.0", "sleep", "300")
    ia, ib = info(a)["ip"], info(b)["ip"]
    assert ipaddress.ip_address(ia) in ipaddress.ip_network(created["subnet"])
    assert cocker("container", "exec", a, "ping", "-c", "1", "-W", "3", ib).returncode == 0
    assert env.bridge not in links()  # the default bridge was never needed
    r = cocker("network", "rm", name, check=False)
    assert r.returncode != 0 and "in use" in r.stderr
    cocker("container", "rm", "-f", a, b)
    assert set(net.get_network(env.store, name)["endpoints"]) == set()
    cocker("network", "rm", name)
    assert created["bridge"] not in links()


def test_published_ports_from_other_namespaces(netenv, tmp_path):
    """Through the gateway address (the test bridge's own address): another namespace reaches
    a published port, and so does the publishing namespace itself (hairpin)."""
    info = net.create_network(netenv.store, unique("n"))
    a, b = netenv.netns(), netenv.netns()
    ea = netenv.connect(info["name"], "a", a)
    eb = netenv.connect(info["name"], "b", b)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hairpin\n")
    for n in (a, b):
        netenv.spawn(n, "busybox", "httpd", "-f", "-p", "80", "-h", str(www))
    pa, pb = free_port(), free_port()
    net.publish(netenv.store, "a", ea["ip"], [f"{pa}:80"])
    net.publish(netenv.store, "b", eb["ip"], [f"{pb}:80"])
    fetch = ("import sys,time,urllib.request\nfor i in range(30):\n try:\n"
             "  sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=3).read().decode());break\n"
             " except OSError:\n  time.sleep(0.2)\n")
    for port in (pb, pa):
        r = netenv.run_in(a, sys.executable, "-c", fetch, f"http://{info['gateway']}:{port}/index.html")
        assert r.stdout == "hairpin\n", (port, r.stderr)


def test_a_second_store_on_the_same_default_bridge_is_told_how_to_have_its_own(netenv, tmp_path):
    """Two stores (two COCKER_HOMEs) with the same default bridge settings, as two stores on
    cocker0 would be: the second one's error names the settings that give it a bridge of its own."""
    from registry.repo.store import Store
    a, b = netenv.netns(), netenv.netns()
    netenv.connect("bridge", "first", a)
    other = Store(str(tmp_path / "second-store"))
    with pytest.raises(AlreadyExists) as e:
        net.connect(other, "bridge", "second", netenv.path(b))
    msg = str(e.value)
    assert netenv.bridge in msg and "COCKER_BRIDGE=" in msg and "COCKER_BRIDGE_SUBNET=" in msg
    assert netenv.bridge in links()                 # the first store's bridge is untouched
    assert ping(netenv, a, ipaddress.ip_network(netenv.subnet)[1].exploded)


def test_containers_on_a_network_find_each_other_by_name_and_alias(ctr_env, cocker):
    env, run, info = ctr_env
    netname = unique("names")
    net.create_network(env.store, netname)
    try:
        a = run("--net", netname, "nbox:1.0", "sh", "-c",
                "mkdir /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www")
        b = run("--net", netname, "--network-alias", "db", "--network-alias", "cache",
                "nbox:1.0", "sleep", "300")
        r = cocker("container", "exec", b, "wget", "-qO-", f"http://{a}:8080/", check=False)
        assert r.returncode == 0 and r.stdout.strip() == a, r.stderr
        for alias in ("db", "cache", b):
            r = cocker("container", "exec", a, "ping", "-c", "1", "-W", "3", alias, check=False)
            assert r.returncode == 0 and info(b)["ip"] in r.stdout, (alias, r.stdout, r.stderr)
        # kept in step: a container that joins later is found by those already there, and a
        # container that leaves is gone from their /etc/hosts
        c = run("--net", netname, "nbox:1.0", "sleep", "300")
        r = cocker("container", "exec", a, "ping", "-c", "1", "-W", "3", c, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        cocker("container", "rm", "-f", c)
        hosts = cocker("container", "exec", a, "cat", "/etc/hosts").stdout
        assert c not in hosts and b in hosts and "localhost" in hosts
    finally:
        for c in json.loads(cocker("container", "ls", "--all", "--json").stdout):
            if c["net"] == netname:
                cocker("container", "rm", "-f", c["name"], check=False)
        cocker("network", "rm", netname, check=False)
