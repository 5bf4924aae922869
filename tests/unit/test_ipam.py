"""Networking without root: IPAM pools and leases, the DNS wire format, port bindings
and proxies over loopback, and the network records (subnet planning, predefined
networks, conflicts, filters, endpoint configuration) with fake drivers."""
from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from engine.core.networks import _overlap, clean_endpoint, host_routes, ports_summary, ports_view
from engine.core.models import Container, State
from engine.plugins.network import dns, portmap
from engine.plugins.network.ipam import Leases, Pool, mac_for, parse_subnet
from engine.sdk.errors import Conflict, Forbidden, InvalidArgument

# ---------------------------------------------------------------- pools


def test_pool_gateway_and_sequential_allocation():
    p = Pool("10.5.0.0/24")
    assert p.gateway == "10.5.0.1"
    assert p.prefixlen == 24
    assert [p.allocate(f"e{i}") for i in range(3)] == ["10.5.0.2", "10.5.0.3", "10.5.0.4"]


def test_pool_release_is_reused_only_after_wrapping():
    p = Pool("10.5.0.0/29")   # hosts .1-.6, .1 is the gateway
    ips = [p.allocate(f"e{i}") for i in range(5)]
    assert ips == [f"10.5.0.{i}" for i in range(2, 7)]
    with pytest.raises(Forbidden):
        p.allocate("full")
    p.release("10.5.0.3")
    assert p.allocate("again") == "10.5.0.3"


def test_pool_wanted_address():
    p = Pool("10.5.0.0/24")
    assert p.allocate("a", "10.5.0.50") == "10.5.0.50"
    with pytest.raises(Conflict):
        p.allocate("b", "10.5.0.50")
    with pytest.raises(Conflict):
        p.allocate("b", "10.5.0.1")          # the gateway
    with pytest.raises(InvalidArgument):
        p.allocate("b", "10.6.0.5")          # outside the subnet
    with pytest.raises(InvalidArgument):
        p.allocate("b", "not-an-ip")


def test_pool_round_trips_through_a_dict():
    p = Pool("10.5.0.0/24", "10.5.0.254")
    p.allocate("a")
    q = Pool.from_dict(p.to_dict())
    assert q.gateway == "10.5.0.254"
    assert q.allocated == {"10.5.0.1": "a"}   # the gateway is elsewhere: .1 is free
    assert q.allocate("b") == "10.5.0.2"


def test_pool_rejects_bad_gateway_and_subnets():
    with pytest.raises(InvalidArgument):
        Pool("10.5.0.0/24", "10.6.0.1")
    with pytest.raises(InvalidArgument):
        parse_subnet("10.5.0.7/24")          # host bits set
    with pytest.raises(InvalidArgument):
        parse_subnet("fd00::/64")
    with pytest.raises(InvalidArgument):
        parse_subnet("10.5.0.0/31")


def test_mac_like_docker():
    assert mac_for("172.17.0.2") == "02:42:ac:11:00:02"


def test_overlap():
    assert _overlap("10.0.0.0/16", ["192.168.0.0/24", "10.0.5.0/24"]) == "10.0.5.0/24"
    assert _overlap("10.1.0.0/16", ["10.0.0.0/16"]) == ""


def test_host_routes_parse(tmp_path):
    f = tmp_path / "route"
    f.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n")
    assert host_routes(str(f)) == [("docker0", "172.17.0.0/16")]


def test_leases_are_exclusive_until_their_namespace_is_gone(tmp_path):
    leases = Leases(str(tmp_path / "leases"))
    live = "/proc/self/ns/net"          # exists, but is not a mount point: "gone"
    assert leases.take("br0", "10.0.0.2", "ep1", str(tmp_path / "missing"))
    # the holder's namespace does not exist: stale, so another endpoint takes it over
    assert leases.take("br0", "10.0.0.2", "ep2", live)
    assert leases.take("br0", "10.0.0.2", "ep2", live)   # the holder may ask again
    leases.drop("br0", "10.0.0.2", "ep1")                 # not the holder: no effect
    assert (tmp_path / "leases" / "br0" / "10.0.0.2").exists()
    leases.drop("br0", "10.0.0.2", "ep2")
    assert not (tmp_path / "leases" / "br0" / "10.0.0.2").exists()


def test_live_lease_blocks_others(tmp_path, monkeypatch):
    leases = Leases(str(tmp_path))
    monkeypatch.setattr(Leases, "_alive", staticmethod(lambda owner: True))
    assert leases.take("br0", "10.0.0.2", "ep1", "/x")
    assert not leases.take("br0", "10.0.0.2", "ep2", "/y")


# ---------------------------------------------------------------- DNS wire format


def query(name: str, qtype: int = dns.TYPE_A, qid: int = 0x1234) -> bytes:
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", qtype, dns.CLASS_IN)


def answers(reply: bytes) -> tuple[int, list[str]]:
    """(rcode, A addresses) of a reply whose question is a single name."""
    qid, flags, qd, an = struct.unpack("!HHHH", reply[:8])
    pos = 12
    while reply[pos]:
        pos += reply[pos] + 1
    pos += 5
    out = []
    for _ in range(an):
        ptr, typ, _cls, _ttl, ln = struct.unpack("!HHHIH", reply[pos:pos + 12])
        assert ptr == 0xC00C
        out.append(socket.inet_ntoa(reply[pos + 12:pos + 12 + ln]))
        pos += 12 + ln
    return flags & 0xF, out


def test_parse_query():
    q = dns.parse_query(query("Web.Example"))
    assert (q.id, q.name, q.qtype) == (0x1234, "web.example", dns.TYPE_A)
    for bad in (b"", b"\0" * 11, query("a")[:-2], b"\x12\x34\x81\x00" + b"\0" * 8):
        with pytest.raises(dns.DNSFormatError):
            dns.parse_query(bad)


def test_resolver_answers_local_names_and_refuses_on_internal():
    table = {"web": ["10.0.0.2"], "web.net1": ["10.0.0.2"]}
    r = dns.Resolver(lambda n: table.get(n, []), forward_queries=True)
    assert answers(r.answer_local(query("web"))) == (0, ["10.0.0.2"])
    assert answers(r.answer_local(query("WEB"))) == (0, ["10.0.0.2"])
    assert answers(r.answer_local(query("web", dns.TYPE_AAAA))) == (0, [])
    assert answers(r.answer_local(query("nothere")))[0] == dns.RCODE_NXDOMAIN
    assert r.answer_local(query("example.com")) is None            # to be forwarded
    formerr = r.answer_local(b"\x00\x07junk")
    assert formerr[:2] == b"\x00\x07" and formerr[3] & 0xF == dns.RCODE_FORMERR
    internal = dns.Resolver(lambda n: table.get(n, []), forward_queries=False)
    assert answers(internal.answer_local(query("example.com")))[0] == dns.RCODE_REFUSED
    assert answers(internal.answer_local(query("web"))) == (0, ["10.0.0.2"])


def test_upstream_servers_skip_loopback(tmp_path):
    f = tmp_path / "resolv.conf"
    f.write_text("nameserver 127.0.0.53\nnameserver 10.1.1.1\nsearch x\nnameserver ::1\n"
                 "nameserver bogus\n")
    assert dns.upstream_servers(str(f)) == ["10.1.1.1"]


def test_resolver_forwards_to_upstream_over_loopback():
    """A fake upstream on 127.0.0.1 answers what the resolver does not know."""

    async def main():
        loop = asyncio.get_running_loop()

        class Upstream(asyncio.DatagramProtocol):
            def connection_made(self, t):
                self.t = t

            def datagram_received(self, data, addr):
                q = dns.parse_query(data)
                self.t.sendto(dns.build_response(q, 0, ["192.0.2.99"]), addr)

        up_t, _ = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
        up_port = up_t.get_extra_info("sockname")[1]
        got = loop.create_future()
        asked: list = []

        async def fake_forward(data, servers, timeout=1.0):
            asked.append(servers)
            t, _ = await loop.create_datagram_endpoint(
                lambda: dns._Forward(got), remote_addr=("127.0.0.1", up_port))
            t.sendto(data)
            try:
                return await asyncio.wait_for(got, timeout)
            finally:
                t.close()

        orig = dns.forward
        dns.forward = fake_forward
        try:
            srv = await dns.serve("127.0.0.1", lambda n: [], port=0,
                                  upstreams=lambda client: [f"dns-for-{client}"])
            port = srv.transport.get_extra_info("sockname")[1]
            fut = loop.create_future()
            c_t, _ = await loop.create_datagram_endpoint(
                lambda: dns._Forward(fut), remote_addr=("127.0.0.1", port))
            c_t.sendto(query("example.com"))
            reply = await asyncio.wait_for(fut, 3)
            c_t.close()
            srv.close()
        finally:
            dns.forward = orig
            up_t.close()
        return reply, asked

    reply, asked = asyncio.run(main())
    assert answers(reply) == (0, ["192.0.2.99"])
    assert asked == [["dns-for-127.0.0.1"]]     # the client's own servers (its --dns)


# ---------------------------------------------------------------- ports


def test_parse_bindings():
    bs = portmap.parse_bindings(
        {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}, {"HostPort": ""}],
         "53/udp": None},
        {"80/tcp": {}, "443/tcp": {}}, publish_all=True)
    assert portmap.Binding("tcp", 80, "127.0.0.1", 8080) in bs
    assert portmap.Binding("tcp", 80, "", 0) in bs
    assert portmap.Binding("udp", 53, "", 0) in bs
    assert portmap.Binding("tcp", 443, "", 0) in bs
    assert len(bs) == 4
    with pytest.raises(InvalidArgument):
        portmap.parse_bindings({"80/sctp": [{}]})
    with pytest.raises(InvalidArgument):
        portmap.parse_bindings({"80/tcp": [{"HostPort": "99999"}]})


def test_bind_reports_a_port_in_use():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(Conflict, match="port is already allocated"):
            portmap.bind(portmap.Binding("tcp", 80, "127.0.0.1", port), ("127.0.0.1", 1))
        p = portmap.bind(portmap.Binding("tcp", 80, "127.0.0.1", 0), ("127.0.0.1", 1))
        assert p.host_port not in (0, port)
        p.sock.close()
    finally:
        taken.close()


def test_tcp_and_udp_proxies_relay_over_loopback():
    async def main():
        loop = asyncio.get_running_loop()

        async def echo(r, w):
            w.write(b"tcp:" + await r.read(100))
            await w.drain()
            w.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        tport = server.sockets[0].getsockname()[1]

        class UEcho(asyncio.DatagramProtocol):
            def connection_made(self, t):
                self.t = t

            def datagram_received(self, data, addr):
                self.t.sendto(b"udp:" + data, addr)

        ut, _ = await loop.create_datagram_endpoint(UEcho, local_addr=("127.0.0.1", 0))
        uport = ut.get_extra_info("sockname")[1]
        tp = portmap.bind(portmap.Binding("tcp", tport, "127.0.0.1", 0), ("127.0.0.1", tport))
        up = portmap.bind(portmap.Binding("udp", uport, "127.0.0.1", 0), ("127.0.0.1", uport))
        await tp.serve()
        await up.serve()
        r, w = await asyncio.open_connection("127.0.0.1", tp.host_port)
        w.write(b"hello")
        w.write_eof()
        tcp_reply = await asyncio.wait_for(r.read(100), 3)
        w.close()
        fut = loop.create_future()
        ct, _ = await loop.create_datagram_endpoint(
            lambda: dns._Forward(fut), remote_addr=("127.0.0.1", up.host_port))
        ct.sendto(b"ping")
        udp_reply = await asyncio.wait_for(fut, 3)
        ct.close()
        for p in (tp, up):
            await p.close()
        server.close()
        ut.close()
        return tcp_reply, udp_reply

    assert asyncio.run(main()) == (b"tcp:hello", b"udp:ping")


def test_port_views():
    c = Container(id="c" * 64, name="/x", created="", image="", image_ref="",
                  state=State(status="running"),
                  config={"ExposedPorts": {"80/tcp": {}, "90/udp": {}}},
                  networks={"bridge": {"IPAddress": "172.30.0.2", "_dns": [],
                                       "_ports": {"80/tcp": [{"HostIp": "0.0.0.0",
                                                              "HostPort": "8080"}]}}})
    assert ports_view(c) == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
                             "90/udp": None}
    assert sorted(ports_summary(c), key=lambda p: p["PrivatePort"]) == [
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
        {"PrivatePort": 90, "Type": "udp"}]
    assert clean_endpoint(c.networks["bridge"]) == {"IPAddress": "172.30.0.2"}
    c.state.status = "exited"
    assert ports_view(c) == {}


# ---------------------------------------------------------------- network records


class FakeDriver:
    def __init__(self, name: str, needs_netns: bool = True) -> None:
        self.name, self.needs_netns, self.scope = name, needs_netns, "local"
        self.created: list[str] = []
        self.deleted: list[str] = []

    async def create_network(self, spec) -> None:
        self.created.append(spec.name)

    async def delete_network(self, spec) -> None:
        self.deleted.append(spec.name)


class FakePlugins:
    def __init__(self) -> None:
        self.drivers = {"network": {"bridge": FakeDriver("bridge"),
                                    "host": FakeDriver("host", False),
                                    "null": FakeDriver("null")}}

    def network(self, name: str):
        from engine.sdk.errors import NotFound

        try:
            return self.drivers["network"][name]
        except KeyError:
            raise NotFound(f"network driver {name!r} not found") from None


@pytest.fixture
def service(tmp_path, monkeypatch):
    from engine.core import networks
    from engine.core.events import Events

    monkeypatch.setattr(networks, "host_routes",
                        lambda: [("eth0", "172.17.0.0/16"), ("engine0", "172.30.0.0/16")])
    svc = networks.NetworkService(data_root=str(tmp_path), exec_root=str(tmp_path / "run"),
                                  plugins=FakePlugins(), events=Events())
    asyncio.run(svc.start())
    return svc


def test_predefined_networks_and_default_subnet(service):
    names = {n["Name"]: n for n in service.list()}
    assert set(names) == {"bridge", "host", "none"}
    assert names["bridge"]["IPAM"]["Config"] == [{"Subnet": "172.30.0.0/16",
                                                  "Gateway": "172.30.0.1"}]
    assert names["bridge"]["Options"]["com.docker.network.bridge.name"] == "engine0"
    assert names["none"]["Driver"] == "null"
    with pytest.raises(Forbidden, match="pre-defined"):
        asyncio.run(service.remove("bridge"))


def test_create_picks_a_free_subnet_and_checks_conflicts(service):
    from engine.sdk.errors import NotFound

    r = asyncio.run(service.create({"Name": "n1", "Labels": {"a": "b"}}))
    n1 = service.inspect(r["Id"][:6])
    # 172.17 is a host route: the first free default pool is 172.18
    assert n1["IPAM"]["Config"] == [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]
    with pytest.raises(Conflict, match="already exists"):
        asyncio.run(service.create({"Name": "n1"}))
    with pytest.raises(Forbidden, match="Pool overlaps"):
        asyncio.run(service.create({"Name": "n2",
                                    "IPAM": {"Config": [{"Subnet": "172.18.5.0/24"}]}}))
    with pytest.raises(InvalidArgument, match="it should be"):
        asyncio.run(service.create({"Name": "n2",
                                    "IPAM": {"Config": [{"Subnet": "10.9.0.1/24"}]}}))
    with pytest.raises(NotFound):
        asyncio.run(service.create({"Name": "n2", "Driver": "nope"}))
    with pytest.raises(Forbidden):
        asyncio.run(service.create({"Name": "n2", "Driver": "host"}))
    asyncio.run(service.create({"Name": "n3", "Internal": True,
                                "IPAM": {"Config": [{"Subnet": "10.9.0.0/24",
                                                     "Gateway": "10.9.0.254"}]}}))
    assert [n["Name"] for n in service.list({"label": ["a=b"]})] == ["n1"]
    assert [n["Name"] for n in service.list({"type": ["custom"]})] == ["n1", "n3"]
    assert [n["Name"] for n in service.list({"driver": ["null"]})] == ["none"]
    assert service.inspect("n3")["IPAM"]["Config"][0]["Gateway"] == "10.9.0.254"
    assert sorted(asyncio.run(service.prune())) == ["n1", "n3"]
    assert service.plugins.drivers["network"]["bridge"].deleted == ["n1", "n3"]
    with pytest.raises(NotFound):
        service.get("n1")


def test_records_survive_a_restart(service, tmp_path):
    from engine.core import networks
    from engine.core.events import Events

    nid = asyncio.run(service.create({"Name": "keep"}))["Id"]
    again = networks.NetworkService(data_root=str(tmp_path), exec_root=str(tmp_path / "run"),
                                    plugins=FakePlugins(), events=Events())
    asyncio.run(again.start())
    assert again.get("keep").id == nid
    assert sorted(n["Name"] for n in again.list()) == ["bridge", "host", "keep", "none"]
    # the driver was asked to set every network up again
    assert "keep" in again.plugins.drivers["network"]["bridge"].created


def test_plan_endpoint_config(service):
    asyncio.run(service.create({"Name": "app", "IPAM": {"Config": [{"Subnet": "10.8.0.0/24"}]}}))
    plan = service.plan({"NetworkMode": "app"}, {"EndpointsConfig": {
        "app": {"Aliases": ["db"], "IPAMConfig": {"IPv4Address": "10.8.0.9"}}}})
    ep = plan["app"]
    assert ep["Aliases"] == ["db"] and ep["IPAMConfig"] == {"IPv4Address": "10.8.0.9"}
    assert ep["NetworkID"] == service.get("app").id and ep["IPAddress"] == ""
    assert list(service.plan({}, None)) == ["bridge"]
    empty = service.plan({}, {"EndpointsConfig": {"bridge": {"IPAMConfig": {"IPv4Address": ""}}}})
    assert empty["bridge"]["IPAMConfig"] is None
    with pytest.raises(InvalidArgument):
        service.plan({"NetworkMode": "app"}, {"EndpointsConfig": {
            "app": {"IPAMConfig": {"IPv4Address": "10.9.0.9"}}}})
    with pytest.raises(InvalidArgument):
        service.plan({}, {"EndpointsConfig": {"bridge": {"Aliases": ["x"]}}})
    with pytest.raises(InvalidArgument):
        service.plan({"NetworkMode": "container:abc"}, None)
