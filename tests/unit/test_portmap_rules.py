"""Which packet-filter rules a published port and a network get, with ``iptables``
replaced by an in-memory table (no root, no binary), and how netlink refusals become
typed errors."""
from __future__ import annotations

import errno
from contextlib import contextmanager

import pytest

from engine.plugins.network import iptables
from engine.plugins.network.bridge import netlink_step
from engine.sdk.errors import Conflict, DriverError


class FakeTables:
    """Just enough of ``iptables -C/-A/-I/-D/-N/-L`` over a dict of chains."""

    def __init__(self) -> None:
        self.chains: dict[tuple[str, str], list[list[str]]] = {}
        self.fail_on: str = ""   # a word that makes adding a rule that has it fail
        self.forgotten: list[tuple[str, int]] = []   # forget_udp_flows calls

    def run(self, args: list[str], *, check: bool = True):
        args = [a for a in args if a != "-n"]
        table, op, chain, rule = args[1], args[2], args[3], args[4:]
        rules = self.chains.get((table, chain))
        rc, err = 0, ""
        if op == "-N":
            self.chains.setdefault((table, chain), [])
        elif op in ("-L", "-S", "-F", "-X"):
            rc = 0 if rules is not None else 1
            if op == "-X" and rules is not None:
                del self.chains[(table, chain)]
        elif op == "-C":
            rc = 0 if rules is not None and rule in rules else 1
        elif op in ("-A", "-I"):
            if self.fail_on and self.fail_on in rule:
                raise DriverError(f"iptables {' '.join(args)}: refused")
            self.chains.setdefault((table, chain), [])
            self.chains[(table, chain)].insert(0 if op == "-I" else len(rules or []), rule)
        elif op == "-D":
            rules.remove(rule)

        class Result:
            returncode, stderr, stdout = rc, err, ""
        return Result()

    def rules(self, table: str, chain: str) -> list[list[str]]:
        return [r[: -len(iptables.COMMENT)] for r in self.chains.get((table, chain), [])]


@pytest.fixture
def tables(monkeypatch) -> FakeTables:
    fake = FakeTables()
    monkeypatch.setattr(iptables, "run", fake.run)

    @contextmanager
    def no_lock():
        yield

    monkeypatch.setattr(iptables, "host_lock", no_lock)
    fake.forgotten = []
    monkeypatch.setattr(iptables, "forget_udp_flows",
                        lambda host_ip, port: fake.forgotten.append((host_ip, port)))
    return fake


def test_loopback_rule_per_host_address():
    rule = iptables.loopback_rule("tcp", "127.0.0.1", 8080, "10.0.0.2", 80)
    assert rule == ["-d", "127.0.0.1/32", "-p", "tcp", "--dport", "8080", "-j", "DNAT",
                    "--to-destination", "10.0.0.2:80"]
    for every in ("", "0.0.0.0", "::"):
        assert iptables.loopback_rule("udp", every, 53, "10.0.0.2", 53)[:2] == \
            ["-d", "127.0.0.0/8"]
    assert iptables.loopback_rule("tcp", "127.0.0.5", 1, "10.0.0.2", 2)[1] == "127.0.0.5/32"
    # another address has its ENGINE rule only; IPv6 has no route_localnet
    assert iptables.loopback_rule("tcp", "192.0.2.1", 1, "10.0.0.2", 2) is None
    assert iptables.loopback_rule("tcp", "::1", 1, "10.0.0.2", 2) is None


def test_ipv6_addresses_get_no_ipv4_dnat_rule():
    assert iptables.dnat_rule("br0", "tcp", "::1", 1, "10.0.0.2", 2) is None
    assert "-d" not in iptables.dnat_rule("br0", "tcp", "::", 1, "10.0.0.2", 2)
    assert iptables.dnat_rule("br0", "tcp", "192.0.2.1", 1, "10.0.0.2", 2)[:5] == \
        ["!", "-i", "br0", "-p", "tcp"]


def test_every_network_masquerades_loopback_sources_and_guards_its_bridge():
    for internal in (False, True):
        rules = iptables.network_rules("br0", "10.0.0.0/24", internal)
        assert ("nat", "POSTROUTING",
                ["-s", "127.0.0.0/8", "-o", "br0", "-j", "MASQUERADE"]) in rules
        # and nothing for 127.0.0.0/8 comes in on the bridge (route_localnet's hole)
        assert ("raw", "PREROUTING", ["-i", "br0", "-d", "127.0.0.0/8", "-j", "DROP"]) in rules


def test_add_and_remove_dnat_with_and_without_loopback(tables):
    iptables.add_dnat("br0", "tcp", "127.0.0.1", 8080, "10.0.0.2", 80, loopback=True)
    assert tables.rules("nat", "OUTPUT")[-1] == ["-d", "127.0.0.0/8", "-j", "ENGINE-LOCALHOST"]
    assert tables.rules("nat", "ENGINE-LOCALHOST") == [
        iptables.loopback_rule("tcp", "127.0.0.1", 8080, "10.0.0.2", 80)]
    assert tables.rules("nat", "ENGINE") == [
        iptables.dnat_rule("br0", "tcp", "127.0.0.1", 8080, "10.0.0.2", 80)]
    assert iptables.loopback_masquerade("br0") in tables.rules("nat", "POSTROUTING")
    assert iptables.loopback_guard("br0") in tables.rules("raw", "PREROUTING")
    iptables.add_dnat("br0", "tcp", "127.0.0.1", 8080, "10.0.0.2", 80, loopback=True)
    assert len(tables.rules("nat", "ENGINE-LOCALHOST")) == 1   # idempotent
    iptables.remove_dnat("br0", "tcp", "127.0.0.1", 8080, "10.0.0.2", 80)
    assert tables.rules("nat", "ENGINE-LOCALHOST") == [] and tables.rules("nat", "ENGINE") == []

    # a bridge without route_localnet: the ENGINE rule only, the proxy serves 127.0.0.1
    iptables.add_dnat("br0", "udp", "", 53, "10.0.0.2", 53, loopback=False)
    assert tables.rules("nat", "ENGINE-LOCALHOST") == []
    assert len(tables.rules("nat", "ENGINE")) == 1
    iptables.remove_dnat("br0", "udp", "", 53, "10.0.0.2", 53)
    assert tables.rules("nat", "ENGINE") == []
    # UDP flows tracked before the rule and after it are dropped; TCP has none to drop
    assert tables.forgotten == [("", 53), ("", 53)]

    iptables.add_dnat("br0", "tcp", "::1", 8080, "10.0.0.2", 80, loopback=True)
    assert tables.rules("nat", "ENGINE") == [] and tables.rules("nat", "ENGINE-LOCALHOST") == []


def test_a_refused_loopback_rule_takes_the_port_rule_back(tables):
    tables.fail_on = "127.0.0.1/32"
    with pytest.raises(DriverError, match="refused"):
        iptables.add_dnat("br0", "tcp", "127.0.0.1", 8080, "10.0.0.2", 80, loopback=True)
    assert tables.rules("nat", "ENGINE") == []


def test_teardown_removes_the_localhost_chain_and_its_jump(tables):
    iptables.setup_base()
    assert ("nat", "ENGINE-LOCALHOST") in tables.chains
    iptables._teardown_base()
    assert ("nat", "ENGINE-LOCALHOST") not in tables.chains
    assert tables.rules("nat", "OUTPUT") == []


def test_route_localnet_of_a_missing_bridge_is_false():
    assert iptables.enable_route_localnet("nosuchbr0") is False


def test_netlink_refusals_become_typed_errors():
    from pyroute2.netlink.exceptions import NetlinkError

    with pytest.raises(DriverError, match=r"^default route via gateway 10\.9\.9\.1 on eth0: "
                                          r"Network is unreachable$"):
        with netlink_step("default route via gateway 10.9.9.1 on eth0"):
            raise NetlinkError(errno.ENETUNREACH, "Network is unreachable")
    with pytest.raises(Conflict, match="adding address 10.0.0.2/24 to eth0: File exists"):
        with netlink_step("adding address 10.0.0.2/24 to eth0"):
            raise NetlinkError(errno.EEXIST)
    with netlink_step("nothing refused"):
        pass
    with pytest.raises(KeyError):   # other errors pass through untouched
        with netlink_step("a bug"):
            raise KeyError("x")
