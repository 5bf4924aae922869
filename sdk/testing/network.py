"""The network driver suite: what every :class:`~engine.sdk.drivers.NetworkDriver` does.

Subclass :class:`NetworkDriverSuite` and provide a ``driver`` fixture (a new, unstarted
instance). The suite never touches the host's network: sandboxes it hands the driver
have no namespace (``netns_path=None``) or one that does not exist any more, so a
driver that plumbs interfaces should be configured (through its context options)
to skip that part here; integration tests cover it.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ..drivers import EndpointInfo, NetworkDriver, NetworkSpec, Sandbox
from . import drive


class NetworkDriverSuite:
    """Shared tests for network drivers."""

    #: options of the networks the suite creates
    network_options: ClassVar[dict[str, str]] = {}
    #: IPAM configuration of those networks (Docker's shape)
    ipam: ClassVar[dict[str, Any]] = {"Driver": "default",
                                      "Config": [{"Subnet": "10.231.0.0/24"}]}
    #: ``join`` gives each endpoint an IPv4 address of its own within the subnet
    assigns_addresses: ClassVar[bool] = False

    def network(self, suffix: str = "1") -> NetworkSpec:
        return NetworkSpec(id=f"net{suffix}" + "0" * 58, name=f"suite-net-{suffix}",
                           options=dict(self.network_options), ipam=dict(self.ipam))

    def sandbox(self, driver: NetworkDriver, container: str, scratch: Path) -> Sandbox:
        """A sandbox for ``container``: no namespace for drivers that share the host's,
        else a path where a namespace was (it is already gone)."""
        netns = None if not driver.needs_netns else str(scratch / f"netns-{container}")
        return Sandbox(container_id=container, netns_path=netns, hostname=container[:12])

    # ------------------------------------------------------------ tests

    def test_driver_declares_itself(self, driver: NetworkDriver) -> None:
        assert isinstance(driver, NetworkDriver)
        assert driver.name and isinstance(driver.name, str)
        assert isinstance(driver.needs_netns, bool)
        assert driver.scope in ("local", "global", "swarm")

    def test_network_create_and_delete(self, driver: NetworkDriver) -> None:
        async def body(d: NetworkDriver) -> None:
            net = self.network()
            await d.create_network(net)
            await d.delete_network(net)
            await d.create_network(net)  # the same id again after a delete
            await d.delete_network(net)
        drive(driver, body)

    def test_join_and_leave(self, driver: NetworkDriver, tmp_path: Path) -> None:
        async def body(d: NetworkDriver) -> None:
            net = self.network()
            await d.create_network(net)
            sb = self.sandbox(d, "c1" * 32, tmp_path)
            info = await d.join(net, "ep1" + "0" * 61, sb, {})
            assert isinstance(info, EndpointInfo)
            if self.assigns_addresses:
                assert info.ip_address and 0 < info.ip_prefix_len <= 32
                subnet = ipaddress.ip_network(self.ipam["Config"][0]["Subnet"])
                assert ipaddress.ip_address(info.ip_address) in subnet
            await d.leave(net, "ep1" + "0" * 61, sb)
            await d.delete_network(net)
        drive(driver, body)

    def test_leave_is_idempotent(self, driver: NetworkDriver, tmp_path: Path) -> None:
        """``leave`` succeeds when the namespace is gone and when called twice."""
        async def body(d: NetworkDriver) -> None:
            net = self.network()
            await d.create_network(net)
            sb = self.sandbox(d, "c2" * 32, tmp_path)
            await d.join(net, "ep2" + "0" * 61, sb, {})
            await d.leave(net, "ep2" + "0" * 61, sb)
            await d.leave(net, "ep2" + "0" * 61, sb)
            await d.delete_network(net)
        drive(driver, body)

    def test_endpoints_get_distinct_addresses(self, driver: NetworkDriver,
                                              tmp_path: Path) -> None:
        if not self.assigns_addresses:
            pytest.skip("the driver assigns no addresses")

        async def body(d: NetworkDriver) -> None:
            net = self.network()
            await d.create_network(net)
            seen = []
            for i in range(3):
                sb = self.sandbox(d, f"c{i}" * 32, tmp_path)
                info = await d.join(net, f"ep{i}".ljust(64, "0"), sb, {})
                seen.append(info.ip_address)
            assert len(set(seen)) == 3
            gateway = info.gateway
            assert not gateway or gateway not in seen
            # a freed address may be handed out again; the others stay taken
            await d.leave(net, "ep0".ljust(64, "0"), self.sandbox(d, "c0" * 32, tmp_path))
            sb = self.sandbox(d, "c9" * 32, tmp_path)
            again = await d.join(net, "ep9".ljust(64, "0"), sb, {})
            assert again.ip_address not in seen[1:]
            for i in (1, 2, 9):
                await d.leave(net, f"ep{i}".ljust(64, "0"),
                              self.sandbox(d, f"c{i}" * 32, tmp_path))
            await d.delete_network(net)
        drive(driver, body)
