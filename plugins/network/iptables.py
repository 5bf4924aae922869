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
  (``OUTPUT`` only for non-loopback ones: the userland proxy serves 127.0.0.1): one
  DNAT rule per published port.
* nat ``POSTROUTING``: one MASQUERADE rule per non-internal network.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from contextlib import contextmanager
from typing import Iterator

from engine.sdk.errors import DriverError

COMMENT = ["-m", "comment", "--comment", "engine"]

FORWARD_CHAIN = "ENGINE-FORWARD"
ISOLATION1 = "ENGINE-ISOLATION"
ISOLATION2 = "ENGINE-ISOLATION2"
NAT_CHAIN = "ENGINE"

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
    for table, chain in (("filter", FORWARD_CHAIN), ("filter", ISOLATION1),
                         ("filter", ISOLATION2), ("nat", NAT_CHAIN)):
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
    is internal, outbound traffic (NATed with ``masquerade``) and its replies."""
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


def dnat_rule(bridge: str, proto: str, host_ip: str, host_port: int, ip: str, port: int) -> Rule:
    rule = ["!", "-i", bridge, "-p", proto]
    if host_ip and host_ip not in ("0.0.0.0", "::"):
        rule += ["-d", host_ip]
    return rule + ["--dport", str(host_port), "-j", "DNAT", "--to-destination", f"{ip}:{port}"]


def add_dnat(bridge: str, proto: str, host_ip: str, host_port: int, ip: str, port: int) -> None:
    with host_lock():
        _setup_base()
        ensure("nat", NAT_CHAIN, dnat_rule(bridge, proto, host_ip, host_port, ip, port))


def remove_dnat(bridge: str, proto: str, host_ip: str, host_port: int, ip: str, port: int) -> None:
    remove("nat", NAT_CHAIN, dnat_rule(bridge, proto, host_ip, host_port, ip, port))


def enable_forwarding() -> None:
    """Routing between our bridges and the host's interfaces needs ip_forward=1."""
    try:
        with open("/proc/sys/net/ipv4/ip_forward", "r+") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1")
    except OSError as e:
        raise DriverError(f"cannot enable IPv4 forwarding: {e}") from None
