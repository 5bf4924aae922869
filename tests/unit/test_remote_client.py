"""Docker's plugin protocol client: discovery, HTTP framing, timeouts, error kinds."""
from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from engine.plugins.volume import remote as vol_remote
from engine.sdk.drivers import DriverContext
from engine.sdk.errors import Conflict, NotFound
from engine.sdk.remote import (
    CONTENT_TYPE,
    PluginCallError,
    PluginClient,
    PluginSpec,
    PluginUnavailable,
    discover,
    search_path,
)


def test_search_path(monkeypatch):
    monkeypatch.delenv("ENGINE_PLUGIN_PATH", raising=False)
    assert search_path() == ["/run/docker/plugins", "/etc/docker/plugins",
                             "/usr/lib/docker/plugins"]
    monkeypatch.setenv("ENGINE_PLUGIN_PATH", "/a:/b")
    assert search_path() == ["/a", "/b"]
    assert search_path("/c") == ["/c"]


def test_discovery_of_sockets_spec_and_json_files(tmp_path):
    run, etc = tmp_path / "run", tmp_path / "etc"
    run.mkdir(), etc.mkdir()
    (run / "alpha.sock").touch()
    (run / "beta").mkdir()
    (run / "beta" / "beta.sock").touch()
    (etc / "gamma.spec").write_text("tcp://127.0.0.1:9999\n")
    (etc / "delta.json").write_text(json.dumps({"Name": "delta", "Addr": "unix:///x.sock"}))
    (etc / "alpha.spec").write_text("tcp://127.0.0.1:1\n")      # shadowed by run/alpha.sock
    (etc / "broken.spec").write_text("ftp://nope\n")
    (etc / "empty.json").write_text("{not json")
    (etc / "notes.txt").write_text("ignored")
    found = discover([str(run), str(etc), str(tmp_path / "missing")])
    assert sorted(found) == ["alpha", "beta", "delta", "gamma"]
    assert found["alpha"].address == f"unix://{run}/alpha.sock"
    assert found["beta"].address == f"unix://{run}/beta/beta.sock"
    assert found["gamma"].address == "tcp://127.0.0.1:9999"
    assert found["delta"].address == "unix:///x.sock"


class FakePlugin:
    """An asyncio HTTP server on a unix socket with scripted answers per method."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.answers: dict[str, object] = {"Plugin.Activate": {"Implements": ["VolumeDriver"]}}
        self.calls: list[tuple[str, dict, dict]] = []
        self.chunked = False
        self.hang = False
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> "FakePlugin":
        self.server = await asyncio.start_unix_server(self._handle, self.path)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        method = lines[0].split()[1].lstrip("/")
        headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
        body = json.loads(await reader.readexactly(int(headers["content-length"])))
        self.calls.append((method, body, headers))
        if self.hang:
            await asyncio.sleep(30)
        answer = self.answers.get(method, {"Err": f"unknown method {method}"})
        status = 200
        if isinstance(answer, tuple):
            status, answer = answer
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        if self.chunked:
            writer.write(f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            for i in range(0, len(data), 5):
                part = data[i:i + 5]
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                         + data)
        await writer.drain()
        writer.close()


def client_for(tmp_path, **kw) -> tuple[FakePlugin, PluginClient]:
    path = str(tmp_path / "p.sock")
    spec = PluginSpec(name="fake", address=f"unix://{path}")
    return FakePlugin(path), PluginClient(spec, role="volume", **kw)


@pytest.mark.parametrize("chunked", [False, True])
def test_activate_once_then_call(tmp_path, chunked):
    fake, client = client_for(tmp_path)
    fake.chunked = chunked
    fake.answers["VolumeDriver.Path"] = {"Mountpoint": "/m", "Err": ""}

    async def go():
        async with fake:
            a = await client.call("VolumeDriver.Path", {"Name": "v"})
            b = await client.call("VolumeDriver.Path", {"Name": "w"})
            return a, b

    a, b = asyncio.run(go())
    assert a == b == {"Mountpoint": "/m", "Err": ""}
    assert [m for m, _, _ in fake.calls] == ["Plugin.Activate", "VolumeDriver.Path",
                                             "VolumeDriver.Path"]
    assert fake.calls[1][1] == {"Name": "v"}
    assert fake.calls[1][2]["content-type"] == CONTENT_TYPE


def test_error_kinds(tmp_path):
    fake, client = client_for(tmp_path)
    fake.answers.update({
        "VolumeDriver.Get": {"Err": "no such volume: v"},
        "VolumeDriver.Create": {"Err": "disk full"},
        "VolumeDriver.List": (500, b"internal mess"),
        "VolumeDriver.Path": b"<html>",
    })

    async def go():
        async with fake:
            out = []
            for method in ("VolumeDriver.Get", "VolumeDriver.Create", "VolumeDriver.List",
                           "VolumeDriver.Path", "NetworkDriver.Join"):
                try:
                    await client.call(method, {})
                except Exception as e:
                    out.append((type(e), str(e)))
            return out

    errs = asyncio.run(go())
    assert errs[0] == (NotFound, "volume plugin fake: VolumeDriver.Get: no such volume: v")
    assert errs[1] == (PluginCallError, "volume plugin fake: VolumeDriver.Create: disk full")
    assert errs[2][0] is PluginCallError and "invalid JSON answer (HTTP 500)" in errs[2][1]
    assert errs[3][0] is PluginCallError
    assert errs[4][0] is NotFound and "does not implement NetworkDriver" in errs[4][1]


def test_a_hung_plugin_times_out_and_others_go_on(tmp_path):
    fake, client = client_for(tmp_path, timeout=0.3, activate_timeout=0.3)

    async def go():
        async with fake:
            await client.activate()
            fake.hang = True
            t0 = time.monotonic()
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            tick = asyncio.create_task(ticker())
            try:
                await client.call("VolumeDriver.List")
            except PluginUnavailable as e:
                err = e
            tick.cancel()
            elapsed = time.monotonic() - t0
            t1 = time.monotonic()
            with pytest.raises(PluginUnavailable, match="not asked again for 5s"):
                await client.call("VolumeDriver.List")  # held off: fails at once
            assert time.monotonic() - t1 < 0.1
            return err, elapsed, ticks

    err, elapsed, ticks = asyncio.run(go())
    assert str(err) == ("volume plugin fake is not responding: "
                        "VolumeDriver.List timed out after 0.3s")
    assert 0.25 < elapsed < 2
    assert ticks > 10          # the event loop kept running meanwhile
    assert client.implements is None  # will activate again


def test_a_dead_plugin_fails_at_once(tmp_path):
    path = tmp_path / "gone.sock"
    client = PluginClient(PluginSpec("gone", f"unix://{path}"), role="network")
    t0 = time.monotonic()
    with pytest.raises(PluginUnavailable, match="network plugin gone is not responding"):
        asyncio.run(client.call("NetworkDriver.Join", {}))
    assert time.monotonic() - t0 < 1


def test_volume_driver_counts_mounts(tmp_path):
    fake = FakePlugin(str(tmp_path / "v.sock"))
    fake.answers.update({
        "VolumeDriver.Mount": {"Mountpoint": "/srv/v1", "Err": ""},
        "VolumeDriver.Unmount": {"Err": ""},
        "VolumeDriver.Remove": {"Err": ""},
    })
    cls = vol_remote.driver_for(PluginSpec("fake", f"unix://{fake.path}"))
    assert cls.name == "fake"

    async def go():
        async with fake:
            drv = cls(DriverContext(name="fake", state_dir=str(tmp_path / "state")))
            paths = [await drv.mount("v1", "c1"), await drv.mount("v1", "c2"),
                     await drv.mount("v1", "c2")]
            await drv.unmount("v1", "c1")
            with pytest.raises(Conflict, match="in use"):
                await drv.remove("v1")
            # a restarted daemon knows who holds the volume
            again = cls(DriverContext(name="fake", state_dir=str(tmp_path / "state")))
            assert again.mounts == {"v1": ["c2"]}
            await again.unmount("v1", "c2")
            await again.unmount("v1", "c2")  # twice is harmless
            await again.remove("v1")
            return paths

    assert asyncio.run(go()) == ["/srv/v1"] * 3
    methods = [m for m, _, _ in fake.calls]
    assert methods.count("VolumeDriver.Mount") == 1
    assert methods.count("VolumeDriver.Unmount") == 1
    assert methods[-1] == "VolumeDriver.Remove"


def test_volume_driver_refuses_a_relative_mountpoint_and_gives_it_back(tmp_path):
    fake = FakePlugin(str(tmp_path / "v.sock"))
    fake.answers.update({"VolumeDriver.Mount": {"Mountpoint": "rel/path"},
                         "VolumeDriver.Unmount": {}})
    cls = vol_remote.driver_for(PluginSpec("fake", f"unix://{fake.path}"))

    async def go():
        async with fake:
            drv = cls(DriverContext(name="fake", state_dir=str(tmp_path / "s")))
            with pytest.raises(Exception, match="invalid mount point"):
                await drv.mount("v", "c")
            return drv.mounts

    assert asyncio.run(go()) == {}
    assert [m for m, _, _ in fake.calls][-1] == "VolumeDriver.Unmount"


def test_unknown_volume_on_a_dead_plugin_is_not_found(tmp_path):
    cls = vol_remote.driver_for(PluginSpec("dead", f"unix://{tmp_path}/none.sock"))
    drv = cls(DriverContext(name="dead", state_dir=str(tmp_path / "s")))
    with pytest.raises(NotFound):
        asyncio.run(drv.get("someone-elses"))
    assert asyncio.run(drv.list()) == []


def test_registration_names_drivers_after_plugins(tmp_path, monkeypatch):
    from engine.sdk.drivers import Registrar
    from engine.plugins.network import remote as net_remote

    (tmp_path / "myplug.sock").touch()
    (tmp_path / "local.sock").touch()   # cannot shadow the built-in volume driver
    monkeypatch.setenv("ENGINE_PLUGIN_PATH", str(tmp_path))
    reg = Registrar()
    vol_remote.engine_register_drivers(reg)
    net_remote.engine_register_drivers(reg)
    assert sorted(reg.volume) == ["myplug"]
    assert sorted(reg.network) == ["local", "myplug"]
    assert os.path.basename(reg.volume["myplug"].plugin.address) == "myplug.sock"
    vol_cls, net_cls = reg.volume["myplug"], reg.network["myplug"]
    assert issubclass(vol_cls, vol_remote.RemoteVolumeDriver)
    assert issubclass(net_cls, net_remote.RemoteNetworkDriver)
    assert (vol_cls.__name__, net_cls.__name__) == ("RemoteVolume_myplug", "RemoteNetwork_myplug")
    assert vol_cls.__module__ == vol_remote.__name__


def test_shared_registration_helpers(tmp_path):
    from engine.sdk.drivers import Registrar, VolumeDriver
    from engine.sdk.remote import find_remote_driver, plugin_client, register_remote_drivers

    (tmp_path / "a-b.sock").touch()
    (tmp_path / "bind.sock").touch()
    reg = Registrar()
    names = register_remote_drivers(reg, "volume", vol_remote.RemoteVolumeDriver,
                                    reserved={"bind"}, paths=[str(tmp_path)])
    assert names == ["a-b"] and reg.volume["a-b"].__name__ == "RemoteVolume_a_b"
    assert find_remote_driver("bind", vol_remote.RemoteVolumeDriver, reserved={"bind"},
                              paths=[str(tmp_path)]) is None
    assert find_remote_driver("nope", VolumeDriver, paths=[str(tmp_path)]) is None
    client = plugin_client(PluginSpec("p", "unix:///x"), "volume", {"timeout": "2.5"})
    assert client.timeout == 2.5 and client.label == "volume plugin p"
    with pytest.raises(TypeError, match="needs a plugin"):
        vol_remote.RemoteVolumeDriver(DriverContext(name="x", state_dir=str(tmp_path / "s")))


def test_a_plugin_that_appears_later_is_found_by_name(tmp_path, monkeypatch):
    """The ``engine_find_driver`` hook through a real pluggy manager, as the host calls
    it when a driver name is unknown."""
    import pluggy

    from engine.plugins.network import remote as net_remote
    from engine.sdk import hookspecs

    monkeypatch.setenv("ENGINE_PLUGIN_PATH", str(tmp_path))
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(vol_remote, name="vol-remote")
    pm.register(net_remote, name="net-remote")
    pm.check_pending()
    assert pm.hook.engine_find_driver(kind="volume", name="late") is None
    (tmp_path / "late.sock").touch()  # the plugin starts after the daemon
    vol = pm.hook.engine_find_driver(kind="volume", name="late")
    net = pm.hook.engine_find_driver(kind="network", name="late")
    assert issubclass(vol, vol_remote.RemoteVolumeDriver) and vol.name == "late"
    assert issubclass(net, net_remote.RemoteNetworkDriver) and net.name == "late"
    assert pm.hook.engine_find_driver(kind="log", name="late") is None
    (tmp_path / "local.sock").touch()  # never shadows a built-in driver
    assert pm.hook.engine_find_driver(kind="volume", name="local") is None


def test_network_driver_join_leave_and_rollback(tmp_path, monkeypatch):
    from engine.plugins.network import remote as net_remote
    from engine.sdk.drivers import NetworkSpec, Sandbox

    plugged: list[dict] = []
    unplugged: list[dict] = []
    monkeypatch.setattr(net_remote, "plug_interface",
                        lambda **kw: plugged.append(kw) or "eth0")
    monkeypatch.setattr(net_remote, "unplug_interface", lambda **kw: unplugged.append(kw))
    fake = FakePlugin(str(tmp_path / "n.sock"))
    fake.answers.update({
        "Plugin.Activate": {"Implements": ["NetworkDriver"]},
        "NetworkDriver.CreateNetwork": {},
        "NetworkDriver.CreateEndpoint": {"Interface": None},
        "NetworkDriver.Join": {"Err": "no more veths"},
        "NetworkDriver.Leave": {},
        "NetworkDriver.DeleteEndpoint": {},
    })
    cls = net_remote.driver_for(PluginSpec("fake", f"unix://{fake.path}"))
    net = NetworkSpec(id="n1", name="tp", options={"mtu": "1400"},
                      ipam={"Config": [{"Subnet": "10.9.0.0/24", "Gateway": "10.9.0.1"}]})
    box = Sandbox(container_id="c1", netns_path="/run/netns/x")

    async def go():
        async with fake:
            drv = cls(DriverContext(name="fake", state_dir=str(tmp_path / "s")))
            await drv.create_network(net)
            with pytest.raises(Exception, match="no more veths"):
                await drv.join(net, "ep1", box, {})
            fake.answers["NetworkDriver.Join"] = {
                "InterfaceName": {"SrcName": "veth9", "DstPrefix": "eth"},
                "StaticRoutes": [{"Destination": "10.10.0.0/16", "RouteType": 1}]}
            assert drv.pools["n1"]["allocated"] == {}  # the failed join gave its address back
            info = await drv.join(net, "ep2", box, {"gateway": True})
            assert drv.pools["n1"]["allocated"] == {"10.9.0.3": "ep2"}
            await drv.leave(net, "ep2", box)
            assert drv.pools["n1"]["allocated"] == {} and drv.endpoints == {}
            return info

    info = asyncio.run(go())
    # addresses are reused only after the pool wraps around (see ipam.Pool)
    assert (info.ip_address, info.ip_prefix_len, info.gateway) == ("10.9.0.3", 24, "10.9.0.1")
    assert info.mac_address == "02:42:0a:09:00:03"
    calls = [(m, b) for m, b, _ in fake.calls]
    create = dict(calls)["NetworkDriver.CreateNetwork"]
    assert create["IPv4Data"] == [{"AddressSpace": "LocalDefault", "Pool": "10.9.0.0/24",
                                   "Gateway": "10.9.0.1/24", "AuxAddresses": {}}]
    assert create["Options"]["com.docker.network.generic"] == {"mtu": "1400"}
    methods = [m for m, _ in calls]
    assert methods[methods.index("NetworkDriver.Join") + 1] == "NetworkDriver.DeleteEndpoint"
    assert plugged == [{"src_name": "veth9", "netns_path": "/run/netns/x", "dst_prefix": "eth",
                        "address": "10.9.0.3", "prefixlen": 24, "mac": "02:42:0a:09:00:03",
                        "gateway": "10.9.0.1",
                        "routes": [{"Destination": "10.10.0.0/16", "RouteType": 1}]}]
    assert unplugged == [{"ifname": "eth0", "src_name": "veth9", "netns_path": "/run/netns/x"}]
    assert methods[-2:] == ["NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"]


def test_network_without_subnet_uses_the_plugins_ipam(tmp_path, monkeypatch):
    from engine.plugins.network import remote as net_remote
    from engine.sdk.drivers import NetworkSpec, Sandbox

    monkeypatch.setattr(net_remote, "plug_interface", lambda **kw: "eth0")
    monkeypatch.setattr(net_remote, "unplug_interface", lambda **kw: None)
    fake = FakePlugin(str(tmp_path / "n.sock"))
    fake.answers.update({
        "Plugin.Activate": {"Implements": ["NetworkDriver", "IpamDriver"]},
        "IpamDriver.GetDefaultAddressSpaces": {"LocalDefaultAddressSpace": "plugspace",
                                               "GlobalDefaultAddressSpace": "g"},
        "IpamDriver.RequestPool": {"PoolID": "pool-1", "Pool": "10.77.0.0/16", "Data": {}},
        "IpamDriver.RequestAddress": {"Address": "10.77.0.1/16"},
        "IpamDriver.ReleaseAddress": {},
        "IpamDriver.ReleasePool": {},
        "NetworkDriver.CreateNetwork": {},
        "NetworkDriver.DeleteNetwork": {},
        "NetworkDriver.CreateEndpoint": {},
        "NetworkDriver.Join": {"InterfaceName": {"SrcName": "v0", "DstPrefix": "eth"}},
        "NetworkDriver.Leave": {},
        "NetworkDriver.DeleteEndpoint": {},
    })
    cls = net_remote.driver_for(PluginSpec("fake", f"unix://{fake.path}"))
    net = NetworkSpec(id="n2", name="auto")
    box = Sandbox(container_id="c1", netns_path="/run/netns/x")

    async def go():
        async with fake:
            drv = cls(DriverContext(name="fake", state_dir=str(tmp_path / "s")))
            await drv.create_network(net)
            fake.answers["IpamDriver.RequestAddress"] = {"Address": "10.77.0.9/16"}
            info = await drv.join(net, "ep", box, {})
            await drv.leave(net, "ep", box)
            await drv.delete_network(net)
            return info

    info = asyncio.run(go())
    assert (info.ip_address, info.ip_prefix_len, info.gateway) == ("10.77.0.9", 16, "10.77.0.1")
    calls = [(m, b) for m, b, _ in fake.calls]
    create = next(b for m, b in calls if m == "NetworkDriver.CreateNetwork")
    assert create["IPv4Data"] == [{"AddressSpace": "plugspace", "Pool": "10.77.0.0/16",
                                   "Gateway": "10.77.0.1/16", "AuxAddresses": {}}]
    gw_req = next(b for m, b in calls if m == "IpamDriver.RequestAddress")
    assert gw_req["Options"] == {"RequestAddressType": "com.docker.network.gateway"}
    released = [b["Address"] for m, b in calls if m == "IpamDriver.ReleaseAddress"]
    assert released == ["10.77.0.9", "10.77.0.1"]
    assert [m for m, _ in calls][-1] == "IpamDriver.ReleasePool"
