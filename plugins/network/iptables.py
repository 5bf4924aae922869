"""The bridge driver's packet-filter rules, through the ``iptables`` binary.

Every rule carries ``-m comment --comment engine`` so that cleanup finds them, and
every change is idempotent: a rule is added only when ``iptables -C`` says it is missing
and deleted only while it is present. Functions here are synchronous (they run the
binary); the driver calls them from an executor.

Chains (all ours, created at driver start):

* filter ``ENGINE-FORWARD``, jumped to first from ``FORWARD``: it starts with a jump to
  ``ENGINE-ISOLATION`` (traffic leaving one of our bridges for another one goes to
  ``ENGINE-ISOLATION2``, which drops it), then per-network accept rules, so that our
  bridges work even where dockerd has set the ``FORWARD`` policy to ``DROP``.
* nat ``ENGINE``, jumped to from ``PREROUTING`` and ``OUTPUT`` for local destinations
  (``OUTPUT`` only for non-loopback ones): one DNAT rule per published port, for
  traffic that reaches one of the host's addresses from outside or from the host.
* nat ``ENGINE-LOCALHOST``, jumped to from ``OUTPUT`` for ``127.0.0.0/8``: one DNAT
  rule per port published on 127.0.0.1 (or 0.0.0.0) of a bridge that routes loopback
  sources (``route_localnet=1``, see :func:`enable_route_localnet`), as Docker does
  with ``--userland-proxy=false``: the host's connections to 127.0.0.1 go to the
  container through the kernel, not through the daemon's proxy.
* nat ``POSTROUTING``: one MASQUERADE rule per non-internal network, and one per
  network for the loopback sources that ``ENGINE-LOCALHOST`` sends to its bridge (a
  container cannot answer 127.0.0.1: it gets the bridge's address instead).
* raw ``PREROUTING``: per network, a DROP of what comes in on the bridge for
  127.0.0.0/8. ``route_localnet`` would otherwise let a container reach the host's
  loopback-only services by routing such packets to its gateway (CVE-2020-8558 in
  kube-proxy). The raw table runs before conntrack undoes the MASQUERADE, so replies
  to the host's own connections, addressed to the bridge, pass.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import socket
import subprocess
from contextlib import contextmanager
from typing import Iterator

from engine.sdk.errors import DriverError

log = logging.getLogger("engine.driver.bridge.iptables")

COMMENT = ["-m", "comment", "--comment", "engine"]

FORWARD_CHAIN = "ENGINE-FORWARD"
ISOLATION1 = "ENGINE-ISOLATION"
ISOLATION2 = "ENGINE-ISOLATION2"
NAT_CHAIN = "ENGINE"
LOCALHOST_CHAIN = "ENGINE-LOCALHOST"
LOOPBACK = "127.0.0.0/8"

Rule = list[str]

# Several daemons (tests, a second engine) may share the host's tables: changes that
# span more than one rule take this lock, so one daemon never removes our chains
# between another's creating them and adding its rules.
LOCK_PATH = "/run/engine-iptables.lock"


@contextmanager
def host_lock() -> Iterator[None]:
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _binary() -> str:
    path = shutil.which("iptables")
    if not path:
        raise DriverError("the bridge driver needs the iptables binary (apt-get install iptables)")
    return path


def run(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``iptables -w ARGS``; raise :class:`DriverError` with its stderr on failure."""
    p = subprocess.run([_binary(), "-w", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise DriverError(f"iptables {' '.join(args)}: {p.stderr.strip() or p.returncode}")
    return p


def exists(table: str, chain: str, rule: Rule) -> bool:
    return run(["-t", table, "-C", chain, *rule, *COMMENT], check=False).returncode == 0


def ensure(table: str, chain: str, rule: Rule, *, insert: bool = False) -> None:
    """Add ``rule`` (appended, or first with ``insert``) unless it is already there."""
    if not exists(table, chain, rule):
        run(["-t", table, "-I" if insert else "-A", chain, *rule, *COMMENT])


def remove(table: str, chain: str, rule: Rule) -> None:
    """Delete every copy of ``rule``; a missing rule or chain is fine."""
    while exists(table, chain, rule):
        run(["-t", table, "-D", chain, *rule, *COMMENT])


def ensure_chain(table: str, chain: str) -> None:
    """Create ``chain`` unless it exists (another daemon may be making it right now)."""
    if run(["-t", table, "-n", "-L", chain], check=False).returncode != 0:
        p = run(["-t", table, "-N", chain], check=False)
        if p.returncode != 0 and "exists" not in p.stderr:
            raise DriverError(f"iptables -t {table} -N {chain}: {p.stderr.strip()}")


def setup_base() -> None:
    """Create our chains and the jumps into them (idempotent)."""
    with host_lock():
        _setup_base()


def _setup_base() -> None:
    for chain in (FORWARD_CHAIN, ISOLATION1, ISOLATION2):
        ensure_chain("filter", chain)
    ensure("filter", FORWARD_CHAIN, ["-j", ISOLATION1], insert=True)
    ensure("filter", "FORWARD", ["-j", FORWARD_CHAIN], insert=True)
    ensure_chain("nat", NAT_CHAIN)
    ensure("nat", "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", NAT_CHAIN])
    ensure("nat", "OUTPUT", ["!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL",
                             "-j", NAT_CHAIN])
    ensure_chain("nat", LOCALHOST_CHAIN)
    ensure("nat", "OUTPUT", ["-d", LOOPBACK, "-j", LOCALHOST_CHAIN])


def teardown_if_unused() -> bool:
    """Remove the jumps and our chains when no network (of any daemon) has rules left;
    True when they were removed."""
    with host_lock():
        if not unused():
            return False
        _teardown_base()
        return True


def _teardown_base() -> None:
    remove("filter", "FORWARD", ["-j", FORWARD_CHAIN])
    remove("nat", "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", NAT_CHAIN])
    remove("nat", "OUTPUT", ["!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL",
                             "-j", NAT_CHAIN])
    remove("nat", "OUTPUT", ["-d", LOOPBACK, "-j", LOCALHOST_CHAIN])
    for table, chain in (("filter", FORWARD_CHAIN), ("filter", ISOLATION1),
                         ("filter", ISOLATION2), ("nat", NAT_CHAIN), ("nat", LOCALHOST_CHAIN)):
        if run(["-t", table, "-n", "-L", chain], check=False).returncode == 0:
            run(["-t", table, "-F", chain], check=False)
            run(["-t", table, "-X", chain], check=False)


def unused() -> bool:
    """True when no network (of any daemon on this host) has rules in our chains."""
    p = run(["-t", "filter", "-S", ISOLATION1], check=False)
    return p.returncode != 0 or not any(line.startswith("-A") for line in p.stdout.splitlines())


def network_rules(bridge: str, subnet: str, internal: bool,
                  masquerade: bool = True) -> list[tuple[str, str, Rule]]:
    """The (table, chain, rule) triples one network needs, in the order they are added:
    isolation from our other bridges, traffic inside the bridge, and unless the network
    is internal, outbound traffic (NATed with ``masquerade``) and its replies; and the
    host's loopback connections to published ports, NATed to the bridge's address."""
    rules: list[tuple[str, str, Rule]] = [
        ("filter", ISOLATION1, ["-i", bridge, "!", "-o", bridge, "-j", ISOLATION2]),
        ("filter", ISOLATION2, ["-o", bridge, "-j", "DROP"]),
        ("filter", FORWARD_CHAIN, ["-i", bridge, "-o", bridge, "-j", "ACCEPT"]),
    ]
    if internal:
        rules += [
            ("filter", FORWARD_CHAIN, ["-i", bridge, "-j", "DROP"]),
            ("filter", FORWARD_CHAIN, ["-o", bridge, "-j", "DROP"]),
        ]
    else:
        rules += [
            ("filter", FORWARD_CHAIN, ["-i", bridge, "-j", "ACCEPT"]),
            ("filter", FORWARD_CHAIN, ["-o", bridge, "-m", "conntrack", "--ctstate",
                                       "RELATED,ESTABLISHED,DNAT", "-j", "ACCEPT"]),
        ]
        if masquerade:
            rules.append(("nat", "POSTROUTING",
                          ["-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE"]))
    rules.append(("nat", "POSTROUTING", loopback_masquerade(bridge)))
    rules.append(("raw", "PREROUTING", loopback_guard(bridge)))
    return rules


def add_network(bridge: str, subnet: str, internal: bool, masquerade: bool = True) -> None:
    """Install one network's rules (and our chains if another daemon removed them); on
    failure, remove what was added and re-raise."""
    with host_lock():
        _setup_base()
        _add_network(bridge, subnet, internal, masquerade)


def _add_network(bridge: str, subnet: str, internal: bool, masquerade: bool) -> None:
    done: list[tuple[str, str, Rule]] = []
    try:
        for table, chain, rule in network_rules(bridge, subnet, internal, masquerade):
            ensure(table, chain, rule)
            done.append((table, chain, rule))
    except BaseException:
        for table, chain, rule in reversed(done):
            remove(table, chain, rule)
        raise


def remove_network(bridge: str, subnet: str, internal: bool, masquerade: bool = True) -> None:
    with host_lock():
        for table, chain, rule in reversed(network_rules(bridge, subnet, internal, masquerade)):
            remove(table, chain, rule)


def dnat_rule(bridge: str, proto: str, host_ip: str, host_port: int, ip: str,
              port: int) -> Rule | None:
    """The ``ENGINE`` rule of a port published on ``host_ip``; None for an IPv6 address
    other than ``::`` (these are IPv4 tables: the proxy alone serves such a port)."""
    if ":" in host_ip and host_ip != "::":
        return None
    rule = ["!", "-i", bridge, "-p", proto]
    if host_ip and host_ip not in ("0.0.0.0", "::"):
        rule += ["-d", host_ip]
    return rule + ["--dport", str(host_port), "-j", "DNAT", "--to-destination", f"{ip}:{port}"]


def loopback_masquerade(bridge: str) -> Rule:
    """The POSTROUTING rule that gives loopback-sourced packets DNATed to ``bridge`` the
    bridge's address as their source (in ``network_rules``; ensured again with every
    loopback rule, for a network whose rules predate it)."""
    return ["-s", LOOPBACK, "-o", bridge, "-j", "MASQUERADE"]


def loopback_guard(bridge: str) -> Rule:
    """The raw PREROUTING rule that drops packets for 127.0.0.0/8 coming in on
    ``bridge`` (in ``network_rules``; ensured again with every loopback rule)."""
    return ["-i", bridge, "-d", LOOPBACK, "-j", "DROP"]


def loopback_rule(proto: str, host_ip: str, host_port: int, ip: str, port: int) -> Rule | None:
    """The ``ENGINE-LOCALHOST`` rule of a port published on ``host_ip``: for 127.0.0.1
    (any 127.x address) that address, for every address (``""``, ``0.0.0.0``, ``::``) all of
    127.0.0.0/8; None for any other address (the ``ENGINE`` rule serves those) and for
    IPv6 (no ``route_localnet`` there: the proxy serves ``::1``)."""
    if host_ip in ("", "0.0.0.0", "::"):  # a socket on :: takes IPv4 as well
        dst = LOOPBACK
    elif host_ip.startswith("127."):
        dst = f"{host_ip}/32"
    else:
        return None
    return ["-d", dst, "-p", proto, "--dport", str(host_port),
            "-j", "DNAT", "--to-destination", f"{ip}:{port}"]


def add_dnat(bridge: str, proto: str, host_ip: str, host_port: int, ip: str, port: int,
             *, loopback: bool = False) -> None:
    """Add a published port's DNAT rule, and with ``loopback`` (the bridge routes
    loopback sources) its :func:`loopback_rule`; on failure, remove what was added."""
    with host_lock():
        _setup_base()
        rule = dnat_rule(bridge, proto, host_ip, host_port, ip, port)
        if rule is None:
            return
        ensure("nat", NAT_CHAIN, rule)
        lo = loopback_rule(proto, host_ip, host_port, ip, port) if loopback else None
        if lo is not None:
            try:
                ensure("raw", "PREROUTING", loopback_guard(bridge))
                ensure("nat", "POSTROUTING", loopback_masquerade(bridge))
                ensure("nat", LOCALHOST_CHAIN, lo)
            except BaseException:
                remove("nat", NAT_CHAIN, rule)
                raise
    if proto == "udp":  # flows made before the rule (through the proxy) would bypass it
        forget_udp_flows(host_ip, host_port)


def remove_dnat(bridge: str, proto: str, host_ip: str, host_port: int, ip: str, port: int) -> None:
    """Remove a published port's rules (both, whichever exist), and for UDP the flows
    the kernel keeps translating to the container (see :func:`forget_udp_flows`)."""
    lo = loopback_rule(proto, host_ip, host_port, ip, port)
    if lo is not None:
        remove("nat", LOCALHOST_CHAIN, lo)
    rule = dnat_rule(bridge, proto, host_ip, host_port, ip, port)
    if rule is not None:
        remove("nat", NAT_CHAIN, rule)
    if proto == "udp":
        forget_udp_flows(host_ip, host_port)


def forget_udp_flows(host_ip: str, host_port: int) -> int:
    """Delete the conntrack entries of UDP flows to ``host_ip:host_port`` (every address
    for ``""``/``0.0.0.0``); return how many. A UDP "connection" has no end: without
    this, a client that keeps sending (a DNS or metrics client) stays translated to a
    removed container's address until the entry times out, even after another
    container publishes the port, or to the proxy after a rule is added. Best effort:
    a failure is only logged, the entries then time out as they would."""
    async def clear() -> int:
        from pyroute2.conntrack import AsyncConntrack, NFCTAttrTuple

        ct = AsyncConntrack()
        try:
            want = NFCTAttrTuple(proto=socket.IPPROTO_UDP, dport=host_port)
            found = [e async for e in await ct.dump_entries(tuple_orig=want)]
            if host_ip not in ("", "0.0.0.0", "::"):
                found = [e for e in found if e.tuple_orig.daddr == host_ip]
            for entry in found:
                await ct.delete(entry)
            return len(found)
        finally:
            ct.close()

    # pyroute2 drives its socket from an event loop: a plain one of our own (the
    # daemon's uvloop cannot), in the calling worker thread
    loop = asyncio.SelectorEventLoop()
    try:
        return loop.run_until_complete(clear())
    except Exception as e:  # noqa: BLE001 - conntrack support missing, an entry gone
        log.warning("UDP flows to %s:%d not forgotten: %s", host_ip or "*", host_port, e)
        return 0
    finally:
        loop.close()


def enable_route_localnet(bridge: str) -> bool:
    """Let ``bridge`` route packets with a loopback source (``route_localnet=1``), which
    the ``ENGINE-LOCALHOST`` rules need; False where it cannot be set (a read-only
    ``/proc/sys``, the bridge gone): the userland proxy then serves 127.0.0.1."""
    path = f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"
    try:
        with open(path, "r+") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1")
    except OSError:
        return False
    return True


def enable_forwarding() -> None:
    """Routing between our bridges and the host's interfaces needs ip_forward=1."""
    try:
        with open("/proc/sys/net/ipv4/ip_forward", "r+") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1")
    except OSError as e:
        raise DriverError(f"cannot enable IPv4 forwarding: {e}") from None
