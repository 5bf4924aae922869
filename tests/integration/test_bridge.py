"""The bridge driver on the real kernel: bridges, veth pairs in namespaces, iptables,
published ports, embedded DNS, isolation, rollback and cleanup.

The driver is driven directly (no daemon), with namespaces made by ``core/netns.py``
and networks on 10.213.x.0/24 subnets the tests pick themselves. Traffic goes only to
loopback and to addresses of those networks.
"""
from __future__ import annotations

import asyncio
import random
import secrets
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import needs_root
from engine.core import netns
from engine.core.networks import _overlap, host_routes
from engine.plugins.network import iptables
from engine.plugins.network.bridge import BridgeNetworkDriver, bridge_name, veth_name
from engine.sdk.drivers import DriverContext, NetworkSpec, Sandbox
from engine.sdk.errors import Conflict

pytestmark = [pytest.mark.root, needs_root]

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def free_subnet() -> str:
    used = [cidr for _, cidr in host_routes()]
    for _ in range(100):
        cand = f"10.213.{random.randint(0, 255)}.0/24"
        if not _overlap(cand, used):
            return cand
    pytest.skip("no free 10.213.x.0/24 subnet")


def in_ns(path: str, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={path}", *cmd], capture_output=True, text=True,
                          timeout=timeout)


def iptables_lines(needle: str) -> list[str]:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if needle in ln]


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


class Env:
    """A driver instance, an event loop, and everything the test made, for cleanup."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.tmp = tmp
        ctx = DriverContext(name="bridge", state_dir=str(tmp / "state"),
                            options={"lease_dir": str(tmp / "leases")})
        Path(ctx.state_dir).mkdir(parents=True)
        self.drv = BridgeNetworkDriver(ctx)
        self.specs: list[NetworkSpec] = []
        self.sandboxes: list[str] = []

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def in_ns(self, path: str, *cmd: str) -> tuple[int, str]:
        """Like :func:`in_ns`, with the driver's loop running meanwhile (DNS, proxies)."""
        async def go() -> tuple[int, str]:
            p = await asyncio.create_subprocess_exec(
                "nsenter", f"--net={path}", *cmd, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(p.communicate(), 20)
            return p.returncode, out.decode()
        return self.run(go())

    def network(self, *, internal: bool = False, name: str = "") -> NetworkSpec:
        nid = secrets.token_hex(32)
        subnet = free_subnet()
        spec = NetworkSpec(id=nid, name=name or f"t{nid[:6]}", internal=internal,
                           ipam={"Config": [{"Subnet": subnet}]})
        self.specs.append(spec)
        self.run(self.drv.create_network(spec))
        return spec

    def sandbox(self) -> Sandbox:
        path = str(self.tmp / f"ns-{len(self.sandboxes)}")
        netns.create(path)
        self.sandboxes.append(path)
        return Sandbox(container_id=secrets.token_hex(32), netns_path=path)

    def close(self) -> None:
        for f in Path(self.drv.ctx.state_dir, "endpoints").glob("*.json"):
            try:
                self.run(self.drv.leave(NetworkSpec(id="", name=""), f.stem, Sandbox(
                    container_id="", netns_path=None)))
            except Exception:
                pass
        for spec in self.specs:
            try:
                self.run(self.drv.delete_network(spec))
            except Exception:
                pass
        self.run(self.drv.stop())
        for path in self.sandboxes:
            netns.delete(path)
        self.loop.close()


def read_published(env: Env, port: int) -> bytes:
    """What a client on 127.0.0.1:``port`` reads (up to 100 bytes), trying for 5 s. The
    connection is made in the env's loop: the driver's proxy runs there too."""
    async def fetch() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        out = await asyncio.wait_for(r.read(100), 3)
        w.close()
        return out

    data = b""
    deadline = time.monotonic() + 5
    while not data and time.monotonic() < deadline:
        data = env.run(fetch())
    return data


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    bridges = [bridge_name(s) for s in e.specs]
    e.close()
    for br in bridges:  # nothing of ours may be left
        assert not link_exists(br), br
        assert iptables_lines(br) == [], br


def test_join_plumbs_eth0_and_endpoints_talk(env):
    spec = env.network()
    a, b = env.sandbox(), env.sandbox()
    ea = secrets.token_hex(32)
    ia = env.run(env.drv.join(spec, ea, a, {"names": ["alpha"]}))
    ib = env.run(env.drv.join(spec, secrets.token_hex(32), b, {}))
    net = spec.ipam["Config"][0]["Subnet"].rsplit(".", 1)[0]
    assert (ia.ip_address, ib.ip_address, ia.gateway) == (f"{net}.2", f"{net}.3", f"{net}.1")
    assert ia.mac_address == "02:42:" + ":".join(f"{int(x):02x}" for x in ia.ip_address.split("."))
    assert ia.interface == "eth0" and ia.dns == [ia.gateway]
    addr = in_ns(a.netns_path, "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert f"{ia.ip_address}/24" in addr
    link = in_ns(a.netns_path, "ip", "-o", "link", "show", "eth0").stdout
    assert ia.mac_address in link
    route = in_ns(a.netns_path, "ip", "route").stdout
    assert f"default via {ia.gateway}" in route
    p = in_ns(a.netns_path, BUSYBOX, "ping", "-c1", "-W2", ib.ip_address)
    assert p.returncode == 0, p.stdout + p.stderr
    # rules of this network exist while it does
    assert iptables_lines(bridge_name(spec))
    master = subprocess.run(["ip", "-o", "link", "show", veth_name(ea)], capture_output=True,
                            text=True).stdout
    assert f"master {bridge_name(spec)}" in master


def test_second_network_is_eth1_and_leave_releases(env):
    s1, s2 = env.network(), env.network()
    sb = env.sandbox()
    e1, e2 = secrets.token_hex(32), secrets.token_hex(32)
    env.run(env.drv.join(s1, e1, sb, {}))
    i2 = env.run(env.drv.join(s2, e2, sb, {"gateway": False}))
    assert i2.interface == "eth1"
    assert link_exists(veth_name(e2))
    env.run(env.drv.leave(s2, e2, sb))
    assert not link_exists(veth_name(e2))
    assert "eth1" not in in_ns(sb.netns_path, "ip", "-o", "link").stdout
    # the address is free again (after the allocator wraps; ask for it explicitly)
    again = env.run(env.drv.join(s2, secrets.token_hex(32), env.sandbox(),
                                 {"ipv4_address": i2.ip_address}))
    assert again.ip_address == i2.ip_address
    env.run(env.drv.leave(s2, e2, sb))   # leaving twice is fine


def test_networks_are_isolated(env):
    s1, s2 = env.network(), env.network()
    a, b = env.sandbox(), env.sandbox()
    env.run(env.drv.join(s1, secrets.token_hex(32), a, {}))
    ib = env.run(env.drv.join(s2, secrets.token_hex(32), b, {}))
    p = in_ns(a.netns_path, BUSYBOX, "ping", "-c1", "-W1", ib.ip_address)
    assert p.returncode != 0, "a container reached another network"
    # but the host reaches both gateways' subnets
    p = subprocess.run([BUSYBOX, "ping", "-c1", "-W2", ib.ip_address], capture_output=True)
    assert p.returncode == 0


def test_published_port_over_loopback_and_rollback(env):
    spec = env.network()
    sb = env.sandbox()
    server = subprocess.Popen(["nsenter", f"--net={sb.netns_path}", BUSYBOX, "nc", "-ll", "-p",
                               "8080", "-e", "echo", "hi"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        eid = secrets.token_hex(32)
        info = env.run(env.drv.join(spec, eid, sb, {"port_bindings": {
            "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}}))
        host_port = int(info.ports["8080/tcp"][0]["HostPort"])
        assert info.ports == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(host_port)}]}
        assert iptables_lines(f"--dport {host_port}")
        assert read_published(env, host_port) == b"hi\n"
        # a taken port fails cleanly: no veth, no rule, no address kept
        other = env.sandbox()
        eid2 = secrets.token_hex(32)
        before = dict(env.drv.networks[spec.id].pool.allocated)
        with pytest.raises(Conflict, match="port is already allocated"):
            env.run(env.drv.join(spec, eid2, other, {"port_bindings": {
                "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(host_port)}]}}))
        assert not link_exists(veth_name(eid2))
        assert env.drv.networks[spec.id].pool.allocated == before
        assert "eth0" not in in_ns(other.netns_path, "ip", "-o", "link").stdout
        env.run(env.drv.leave(spec, eid, sb))
        assert iptables_lines(f"--dport {host_port}") == []
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", host_port), timeout=2).close()
    finally:
        server.kill()
        server.wait()


def dns_query(name: str, qid: int) -> bytes:
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0\0\1\0\1"


def test_embedded_dns_answers_names_fast(env):
    spec = env.network()
    sb = env.sandbox()
    info = env.run(env.drv.join(spec, secrets.token_hex(32), sb, {"names": ["web", "www"]}))
    rc, out = env.in_ns(sb.netns_path, BUSYBOX, "nslookup", "www", info.gateway)
    assert info.ip_address in out, out

    async def bench(n: int = 200) -> list[float]:
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((info.gateway, 53))
        times = []
        try:
            for i in range(n):
                t0 = time.perf_counter()
                await loop.sock_sendall(s, dns_query("web", i))
                reply = await asyncio.wait_for(loop.sock_recv(s, 512), 2)
                times.append(time.perf_counter() - t0)
                assert reply[:2] == struct.pack("!H", i) and reply[-4:] == socket.inet_aton(
                    info.ip_address)
        finally:
            s.close()
        return sorted(times)

    times = env.run(bench())
    median = times[len(times) // 2] * 1000
    print(f"\nembedded DNS: median {median:.3f} ms, p90 {times[int(len(times) * .9)] * 1000:.3f}"
          f" ms over {len(times)} A queries")
    assert len(times) == 200


def test_internal_network_has_no_nat_and_no_forwarding(env):
    spec = env.network(internal=True)
    sb = env.sandbox()
    info = env.run(env.drv.join(spec, secrets.token_hex(32), sb, {"names": ["db"]}))
    subnet = spec.ipam["Config"][0]["Subnet"]
    assert not [ln for ln in iptables_lines(subnet) if "MASQUERADE" in ln]
    assert "default" not in in_ns(sb.netns_path, "ip", "route").stdout
    rc, out = env.in_ns(sb.netns_path, BUSYBOX, "nslookup", "example.com", info.gateway)
    assert rc != 0 and "REFUSED" in out.upper(), out
    rc, out = env.in_ns(sb.netns_path, BUSYBOX, "nslookup", "db", info.gateway)
    assert info.ip_address in out, out


def test_restart_restores_proxies_and_releases_dead_endpoints(env):
    spec = env.network()
    live, dead = env.sandbox(), env.sandbox()
    e_live, e_dead = secrets.token_hex(32), secrets.token_hex(32)
    info = env.run(env.drv.join(spec, e_live, live, {"port_bindings": {
        "80/tcp": [{"HostIp": "127.0.0.1"}]}}))
    dead_info = env.run(env.drv.join(spec, e_dead, dead, {"port_bindings": {
        "81/udp": [{"HostIp": "127.0.0.1"}]}}))
    dead_port = int(dead_info.ports["81/udp"][0]["HostPort"])
    assert any("ENGINE-LOCALHOST" in r for r in iptables_lines(f"--dport {dead_port} "))
    env.run(env.drv.stop())                      # the daemon stops; containers keep running
    netns.delete(dead.netns_path)                # one container dies meanwhile
    drv2 = BridgeNetworkDriver(env.drv.ctx)
    env.drv = drv2
    env.run(drv2.start())
    pool = drv2.networks[spec.id].pool
    assert info.ip_address in pool.allocated and dead_info.ip_address not in pool.allocated
    assert not link_exists(veth_name(e_dead))
    port = int(info.ports["80/tcp"][0]["HostPort"])
    assert [p.host_port for p in drv2.proxies[e_live]] == [port]
    # the dead endpoint's rules went with it; the live one keeps its loopback DNAT
    assert iptables_lines(f"--dport {dead_port} ") == []
    assert any("ENGINE-LOCALHOST" in r for r in iptables_lines(f"--dport {port} "))


def test_without_route_localnet_the_proxy_serves_loopback(env, monkeypatch):
    """Where the bridge cannot route loopback sources, 127.0.0.1 gets no kernel rule and
    the daemon's proxy carries the connection."""
    monkeypatch.setattr(iptables, "enable_route_localnet", lambda bridge: False)
    spec = env.network()
    assert env.drv.networks[spec.id].localnet is False
    sb = env.sandbox()
    server = subprocess.Popen(["nsenter", f"--net={sb.netns_path}", BUSYBOX, "nc", "-ll", "-p",
                               "8080", "-e", "echo", "proxied"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        eid = secrets.token_hex(32)
        info = env.run(env.drv.join(spec, eid, sb, {"port_bindings": {
            "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}}))
        port = int(info.ports["8080/tcp"][0]["HostPort"])
        rules = iptables_lines(f"--dport {port} ")
        assert rules and not any("ENGINE-LOCALHOST" in r for r in rules), rules
        assert len(env.drv.proxies[eid]) == 1
        assert read_published(env, port) == b"proxied\n"
        env.run(env.drv.leave(spec, eid, sb))
        assert iptables_lines(f"--dport {port} ") == []
    finally:
        server.kill()
        server.wait()


def test_a_named_bridge_that_exists_is_not_taken_over(env):
    spec = NetworkSpec(id=secrets.token_hex(32), name="taken",
                       options={"com.docker.network.bridge.name": "lo"},
                       ipam={"Config": [{"Subnet": free_subnet()}]})
    with pytest.raises(Conflict):
        env.run(env.drv.create_network(spec))
    assert link_exists("lo") and spec.id not in env.drv.networks
    assert iptables_lines(" -i lo ") == []


# Runs inside a network namespace of its own (``unshare --net``): there the test may set
# the FORWARD policy to DROP, as dockerd does, without touching the host.
_ISOLATED = r'''
import asyncio, os, secrets, subprocess, sys, time
from engine.core import netns
from engine.plugins.network.bridge import BridgeNetworkDriver
from engine.sdk.drivers import DriverContext, NetworkSpec, Sandbox

tmp = sys.argv[1]
busybox = sys.argv[2]
sh = lambda *a: subprocess.run(a, check=True, capture_output=True)
sh("ip", "link", "set", "lo", "up")
sh("iptables", "-w", "-P", "FORWARD", "DROP")
# an "outside" namespace behind a veth: it has no route back to the containers' subnet,
# so only masqueraded traffic gets answers
outside = netns.create(os.path.join(tmp, "outside"))
sh("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
sh("ip", "link", "set", "up1", "netns", outside)
sh("ip", "addr", "add", "198.18.0.1/24", "dev", "up0")
sh("ip", "link", "set", "up0", "up")
sh("nsenter", "--net=" + outside, "ip", "addr", "add", "198.18.0.2/24", "dev", "up1")
sh("nsenter", "--net=" + outside, "ip", "link", "set", "up1", "up")
server = subprocess.Popen(["nsenter", "--net=" + outside, busybox, "nc", "-ll", "-p", "9000",
                           "-e", "echo", "outside"])
ctx = DriverContext(name="bridge", state_dir=os.path.join(tmp, "state"),
                    options={"lease_dir": os.path.join(tmp, "leases")})
os.makedirs(ctx.state_dir)
drv = BridgeNetworkDriver(ctx)
spec = NetworkSpec(id=secrets.token_hex(32), name="iso",
                   ipam={"Config": [{"Subnet": "10.213.0.0/24"}]})
sandboxes = [netns.create(os.path.join(tmp, f"c{i}")) for i in range(2)]

async def main():
    await drv.create_network(spec)
    infos = [await drv.join(spec, secrets.token_hex(32), Sandbox(container_id="c", netns_path=p),
                            {}) for p in sandboxes]
    loop = asyncio.get_running_loop()
    def run(*a):
        return subprocess.run(["nsenter", "--net=" + sandboxes[0], busybox, *a],
                              capture_output=True, text=True, timeout=20)
    time.sleep(0.2)
    ping = await loop.run_in_executor(None, run, "ping", "-c1", "-W2", infos[1].ip_address)
    out = await loop.run_in_executor(None, run, "nc", "-w", "3", "198.18.0.2", "9000")
    print("PING", ping.returncode, "OUT", out.stdout.strip(), flush=True)
    await drv.delete_network(spec)
    await drv.stop()

try:
    asyncio.run(main())
finally:
    server.kill()
    for p in sandboxes + [outside]:
        netns.delete(p)
'''


def test_forward_policy_drop_and_outbound_nat(tmp_path):
    """Where dockerd set FORWARD to DROP, our rules still let containers talk to each
    other and out (masqueraded)."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    import sys

    p = subprocess.run(["unshare", "--net", sys.executable, "-c", _ISOLATED, str(tmp_path),
                        BUSYBOX], capture_output=True, text=True, timeout=60)
    assert "PING 0 OUT outside" in p.stdout, p.stdout + p.stderr


def test_containers_cannot_reach_the_hosts_loopback_services(env):
    """route_localnet on the bridge would let a container that routes 127.0.0.0/8 to
    its gateway reach what the host serves on loopback only; the raw-table guard drops
    it (and without the guard the same container does get through)."""
    spec = env.network()
    sb = env.sandbox()
    info = env.run(env.drv.join(spec, secrets.token_hex(32), sb, {}))
    assert env.drv.networks[spec.id].localnet
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.1.2.3", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    # the "container" steers 127.1.2.3 to its gateway (root in its namespace can)
    for cmd in (["sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet"],
                ["ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local"],
                ["ip", "route", "add", "127.1.2.3/32", "via", info.gateway, "dev", "eth0"]):
        p = in_ns(sb.netns_path, *cmd)
        assert p.returncode == 0, p.stderr

    def reached() -> bool:
        p = subprocess.Popen(["nsenter", f"--net={sb.netns_path}", BUSYBOX, "nc", "-w", "2",
                              "127.1.2.3", str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        got = False
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not got:
            try:
                conn, _ = listener.accept()
                conn.close()
                got = True
            except OSError:
                pass
        p.kill()
        p.wait()
        return got

    guard = iptables.loopback_guard(bridge_name(spec))
    try:
        assert iptables.exists("raw", "PREROUTING", guard)
        assert not reached()
        iptables.remove("raw", "PREROUTING", guard)   # the control: the hole it closes
        assert reached()
    finally:
        iptables.ensure("raw", "PREROUTING", guard)
        listener.close()
