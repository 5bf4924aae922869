"""dummy passes the engine's network driver suite; with root, it plumbs a namespace."""
from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from engine.sdk.drivers import DriverContext, NetworkSpec, Sandbox
from engine.sdk.testing.network import NetworkDriverSuite
from engine_net_dummy import DummyNetworkDriver


class TestDummy(NetworkDriverSuite):
    assigns_addresses = True

    @pytest.fixture
    def driver(self, tmp_path):
        return DummyNetworkDriver(DriverContext(name="dummy", state_dir=str(tmp_path),
                                                options={"create-interface": "false"}))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a network namespace")
def test_the_endpoint_has_a_dummy_interface_with_its_address(tmp_path):
    """A real namespace (held by a sleeping process of our own), a real interface."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        netns = f"/proc/{holder.pid}/ns/net"
        for _ in range(100):  # unshare has switched namespaces once the link differs
            if os.readlink(netns) != os.readlink("/proc/self/ns/net"):
                break
            asyncio.run(asyncio.sleep(0.01))
        d = DummyNetworkDriver(DriverContext(name="dummy", state_dir=str(tmp_path)))
        net = NetworkSpec(id="n" * 64, name="n", ipam={"Config": [{"Subnet": "10.9.0.0/24"}]})
        sb = Sandbox(container_id="c" * 64, netns_path=netns)

        async def body():
            await d.create_network(net)
            info = await d.join(net, "e" * 64, sb, {})
            out = subprocess.run(["nsenter", f"--net={netns}", "ip", "-o", "addr"],
                                 capture_output=True, text=True, check=True).stdout
            assert f"{info.ip_address}/24" in out and info.ip_address == "10.9.0.2"
            await d.leave(net, "e" * 64, sb)
            out = subprocess.run(["nsenter", f"--net={netns}", "ip", "-o", "link"],
                                 capture_output=True, text=True, check=True).stdout
            assert "dmeeee" not in out
        asyncio.run(body())
    finally:
        holder.kill()
        holder.wait()
