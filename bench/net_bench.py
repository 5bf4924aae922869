"""Networking of engine against Docker's, in one run: bridge throughput, published
ports and the embedded DNS.

Usage (as root)::

    /work/main/.venv/bin/python bench/net_bench.py [-n 5] [--only engine,docker]
        [--json out.json] [--megabytes 256] [--requests 500]

Each engine gets a daemon of its own under one temporary directory (see
:mod:`bench.targets`), the same busybox image, and a user-defined bridge network
``benchnet`` made through its own CLI, with two containers on it: ``nbsrv`` (a busybox
``nc`` server that discards what it reads, in a loop) and ``nbweb`` (busybox ``httpd``,
published on 127.0.0.1 and on the host's end of a veth pair whose other end is in a
network namespace this benchmark creates). Docker's ``dockerd`` runs here with its
bridge and iptables, on private subnets (``10.213.0.0/24`` for its default bridge).

Per repetition, for each engine in turn:

1. **throughput**: a third container pipes ``dd if=/dev/zero`` into ``nc nbsrv 5001``
   (by name, so DNS is exercised too) and times itself from the start of the pipeline
   to nc's exit, with ``/proc/uptime``;
2. **published port**: the same Python client (``N`` sequential ``GET /`` with a new
   connection each, then the same spread over a few threads) against 127.0.0.1 (the
   userland proxy: engine's asyncio proxy, Docker's docker-proxy) and, from the client
   network namespace, against the host's veth address (the kernel's DNAT);
3. **DNS**: the latency of ``A`` queries for ``nbsrv``, sent from inside ``nbweb``'s
   network namespace (a forked child that ``setns()`` into ``/proc/PID/ns/net``) to
   the resolver in that container's ``/etc/resolv.conf``.

On exit, everything is removed: containers and networks through each CLI, the daemons
by PID (see :meth:`bench.targets.Target.cleanup`), then what dockerd leaves behind (its
bridges, its iptables chains and the rules it added to the built-in chains, the
``FORWARD`` policy it set), and the client namespace and its veth pair. ``iptables-save``
is recorded before and compared after; the difference, if any, is printed. No packet
leaves the machine: all traffic is on loopback, the bridges and the bench's veth pair.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import proc
from bench.stats import markdown_table, median, percentile, ratio
from bench.targets import (
    DOCKER,
    IMAGE,
    REPO,
    BenchError,
    DockerTarget,
    EngineTarget,
    Target,
    dump_json,
    versions,
)

NETWORK = "benchnet"
SERVER = "nbsrv"
WEB = "nbweb"
NC_PORT = 5001
#: Docker's default bridge, and each engine's ``benchnet``: private, unused here, and
#: clear of engine's default bridge (172.30.0.0/16)
DOCKER_BIP = "10.213.0.1/24"
SUBNETS = {"docker": "10.213.1.0/24", "engine": "10.213.2.0/24"}
#: the client namespace's veth pair: the host's end, the namespace's end (a /30)
VETH_HOST_IP = "10.213.9.1"
VETH_NS_IP = "10.213.9.2"
TARGETS = ("engine", "docker")
#: what dockerd may set on the host besides its rules and bridges (compared after)
SYSCTLS = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables")
MB = 1_000_000

# the nc server reads from a FIFO opened read-write, an stdin that never ends: busybox
# nc stops at EOF on either side, so with /dev/null as stdin it would close the
# connection at once. The loop serves one client after another.
SERVER_SCRIPT = ("mkfifo /tmp/hold && exec 3<>/tmp/hold && "
                 f"while :; do nc -l -p {NC_PORT} <&3 >/dev/null; done")
# busybox's date has no sub-second format: /proc/uptime counts in 10 ms steps, so the
# transfer is made large enough (about a second or more) for that not to matter
CLIENT_SCRIPT = ("read t0 _ < /proc/uptime; "
                 "dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc {server} {port}; "
                 "rc=$?; read t1 _ < /proc/uptime; echo \"$t0 $t1 $rc\"")
WEB_SCRIPT = ("mkdir -p /www && echo benchmark > /www/index.html && "
              "exec httpd -f -p 80 -h /www")
HTTP_REQUEST = b"GET /index.html HTTP/1.0\r\nHost: bench\r\n\r\n"
WARMUP_REQUESTS = 5


# ---------------------------------------------------------------- what is measured


@dataclass(frozen=True)
class NetMeasurement:
    """One row of the table. ``unit`` is that of the samples (``s`` for latencies,
    shown in ms). The goal is either a floor on the ratio engine/docker
    (``min_ratio``, for rates: higher is better) or a ceiling on engine's median
    (``max_value``, for latencies). ``paired``: the targets' samples are taken in
    step, one after the other, so the i-th of one pairs with the i-th of the other
    (not so for the DNS queries, a thousand per step)."""

    id: str
    title: str
    unit: Literal["MB/s", "req/s", "s"]
    min_ratio: float | None = None
    max_value: float | None = None
    paired: bool = True

    @property
    def higher_is_better(self) -> bool:
        return self.unit != "s"

    @property
    def goal_text(self) -> str:
        if self.min_ratio is not None:
            return f"≥ {self.min_ratio:g}× docker"
        if self.max_value is not None:
            return f"≤ {format_value(self.max_value, self.unit)}"
        return "-"


MEASUREMENTS: tuple[NetMeasurement, ...] = (
    NetMeasurement("throughput", "bridge throughput, nc to a container by name", "MB/s",
                   min_ratio=0.9),
    NetMeasurement("port_lo_seq", "published 127.0.0.1 port, 1 client", "req/s",
                   min_ratio=1.0),
    NetMeasurement("port_lo_conc", "published 127.0.0.1 port, {workers} clients", "req/s",
                   min_ratio=1.0),
    NetMeasurement("port_dnat_seq", "published port via DNAT from a netns, 1 client",
                   "req/s", min_ratio=1.0),
    NetMeasurement("port_dnat_conc", "published port via DNAT, {workers} clients", "req/s",
                   min_ratio=1.0),
    NetMeasurement("dns", "DNS A query of a container name", "s", max_value=0.001,
                   paired=False),
    NetMeasurement("proxy_cpu", "CPU of the 127.0.0.1 proxy per request", "s"),
)


@dataclass
class Samples:
    """A target's samples for one measurement, or why it has none."""

    values: list[float] = field(default_factory=list)
    missing: str = ""


class NetReport:
    """The samples of a run: ``report.samples[measurement_id][target]``."""

    def __init__(self, measurements: Sequence[NetMeasurement] = MEASUREMENTS,
                 targets: Sequence[str] = TARGETS, workers: int = 4) -> None:
        self.measurements = list(measurements)
        self.targets = list(targets)
        self.workers = workers
        self.samples: dict[str, dict[str, Samples]] = {
            m.id: {t: Samples() for t in self.targets} for m in self.measurements}

    def add(self, measurement_id: str, target: str, *values: float) -> None:
        self.samples[measurement_id][target].values.extend(float(v) for v in values)

    def mark_missing(self, target: str, reason: str,
                     measurement_ids: Sequence[str] | None = None) -> None:
        """Record why ``target`` has no samples; a reason already given is kept."""
        for mid in measurement_ids or [m.id for m in self.measurements]:
            s = self.samples[mid][target]
            if not s.values and not s.missing:
                s.missing = reason

    def title(self, m: NetMeasurement) -> str:
        return m.title.format(workers=self.workers)

    def summary(self, m: NetMeasurement, target: str) -> tuple[float | None, float | None]:
        """Median and the 90 % bound on the bad side: the 90th percentile of a latency,
        the 10th of a rate (nine samples in ten are at least that fast)."""
        values = self.samples[m.id][target].values
        if not values:
            return None, None
        return median(values), percentile(values, 10 if m.higher_is_better else 90)

    def paired_ratio(self, m: NetMeasurement, other: str) -> float | None:
        """The median of the ratios engine/``other`` of samples taken in step: less
        moved by a machine whose load drifts during the run than the ratio of the
        medians. None when the samples do not pair."""
        own = self.samples[m.id][self.targets[0]].values
        theirs = self.samples[m.id][other].values
        if not m.paired or not own or len(own) != len(theirs) or 0 in theirs:
            return None
        return median([a / b for a, b in zip(own, theirs)])

    def goal_met(self, m: NetMeasurement) -> bool | None:
        """Whether engine meets the measurement's goal; None when it cannot be told."""
        first, *others = self.targets
        own = self.summary(m, first)[0]
        if own is None:
            return None
        if m.max_value is not None:
            return own <= m.max_value
        if m.min_ratio is not None and others:
            r = ratio(own, self.summary(m, others[0])[0])
            return None if r is None else r >= m.min_ratio
        return None

    def format_table(self) -> str:
        """The report as a Markdown table in the style of ``bench/run.py``."""
        first, others = self.targets[0], self.targets[1:]
        header = (["measurement", "goal"] + [f"{t} med / p90" for t in self.targets]
                  + [f"{first}/{t}" for t in others]
                  + [f"paired {first}/{t}" for t in others] + ["goal met"])
        rows = []
        for m in self.measurements:
            row = [self.title(m), m.goal_text]
            for t in self.targets:
                med, p90 = self.summary(m, t)
                row.append(f"{format_value(med, m.unit)} / {format_value(p90, m.unit)}"
                           if med is not None else self.samples[m.id][t].missing or "-")
            own = self.summary(m, first)[0]
            row += [format_ratio(ratio(own, self.summary(m, t)[0])) for t in others]
            row += [format_ratio(self.paired_ratio(m, t)) for t in others]
            met = self.goal_met(m)
            row.append("-" if met is None else ("yes" if met else "NO"))
            rows.append(row)
        return (markdown_table(header, rows) + "\n\np90: the 90th percentile of a latency; "
                "for a rate the 10th (nine samples in ten are at least that fast). "
                f"{first}/{others[0] if others else '...'}: the ratio of the medians (the "
                "goal's); paired: the median of the ratios of samples taken in step")

    def to_json(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every sample with its summary, as a JSON-able dict."""
        out: dict[str, Any] = {"meta": meta or {}, "measurements": {}}
        first, *others = self.targets
        for m in self.measurements:
            entry: dict[str, Any] = {"title": self.title(m), "unit": m.unit,
                                     "goal": m.goal_text, "results": {}}
            for t in self.targets:
                med, p90 = self.summary(m, t)
                s = self.samples[m.id][t]
                entry["results"][t] = {"samples": s.values, "median": med, "p90": p90,
                                       "missing": s.missing}
            for t in others:
                entry[f"ratio_{first}_{t}"] = ratio(self.summary(m, first)[0],
                                                    self.summary(m, t)[0])
                entry[f"paired_ratio_{first}_{t}"] = self.paired_ratio(m, t)
            entry["goal_met"] = self.goal_met(m)
            out["measurements"][m.id] = entry
        return out


def format_value(value: float | None, unit: str) -> str:
    """A figure for humans: latencies in ms (µs below 1 ms), rates as they are."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1e3:.3f} ms" if value < 0.001 else f"{value * 1e3:.2f} ms"
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


# ---------------------------------------------------------------- pure helpers


def parse_transfer(output: str, nbytes: int) -> float:
    """MB/s from the client script's last line, ``"T0 T1 RC"`` (``/proc/uptime``
    seconds before and after the transfer, nc's exit status). Raises BenchError when
    nc failed or the line is not there."""
    lines = output.strip().splitlines()
    try:
        t0, t1, rc = lines[-1].split()
        elapsed = float(t1) - float(t0)
    except (IndexError, ValueError):
        raise BenchError(f"unexpected client output: {output.strip()[-200:]!r}") from None
    if rc != "0":
        raise BenchError(f"nc exited with {rc}")
    return nbytes / MB / max(elapsed, 0.01)  # /proc/uptime counts in 10 ms steps


def nameserver(resolv_conf: str) -> str | None:
    """The first ``nameserver`` of a resolv.conf text."""
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            return parts[1]
    return None


def dns_query(name: str, qid: int, qtype: int = 1) -> bytes:
    """A recursive DNS query (RFC 1035) for ``name``, type A by default, class IN."""
    labels = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.strip(".").split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(
        "!HH", qtype, 1)


def dns_answer_ok(reply: bytes, qid: int) -> bool:
    """True when ``reply`` answers query ``qid`` with NOERROR and at least one record."""
    if len(reply) < 12:
        return False
    rid, flags, _qd, ancount = struct.unpack("!HHHH", reply[:8])
    return rid == qid and flags & 0x8000 != 0 and flags & 0xF == 0 and ancount >= 1


def http_ok(response: bytes) -> bool:
    """True for an HTTP/1.x 200 response."""
    return response.startswith(b"HTTP/1.") and response[9:12] == b"200"


def docker_rules(save: str, markers: Sequence[str]) -> tuple[list[list[str]], list[str]]:
    """What to delete from one table's ``iptables-save`` text to undo dockerd: the
    rules of built-in chains that mention one of ``markers`` (its chains, bridges and
    subnets), as argument lists for ``iptables -D``, and the chains named ``DOCKER*``
    to flush and delete."""
    rules: list[list[str]] = []
    chains: list[str] = []
    for line in save.splitlines():
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith("DOCKER"):
                chains.append(name)
        elif line.startswith("-A "):
            args = shlex.split(line)[1:]
            if not args[0].startswith("DOCKER") and any(m in line for m in markers):
                rules.append(args)
    return rules, chains


def forward_policy(filter_save: str) -> str | None:
    """The policy of the filter table's FORWARD chain in ``iptables-save`` text."""
    for line in filter_save.splitlines():
        if line.startswith(":FORWARD "):
            return line.split()[1]
    return None


def rule_lines(save: str) -> list[str]:
    """The chain and rule lines of ``iptables-save`` text (no comments, no counters):
    what is compared before and after a run."""
    out = []
    for line in save.splitlines():
        if line.startswith(":"):
            out.append(" ".join(line.split()[:2]))
        elif line.startswith(("-A ", "*")):
            out.append(line)
    return out


def iptables_difference(before: str, after: str) -> tuple[list[str], list[str]]:
    """Lines of ``after`` that ``before`` lacks, and lines of ``before`` gone in
    ``after`` (see :func:`rule_lines`)."""
    b, a = rule_lines(before), rule_lines(after)
    return [x for x in a if x not in b], [x for x in b if x not in a]


# ---------------------------------------------------------------- clients (in a child)


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(netns: str | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a forked child, in the network namespace at ``netns`` (a
    path such as /proc/PID/ns/net; None: this one), and return its JSON-able result.
    Every client runs this way, so both targets get the same kind of process."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the bench
        code = 0
        try:
            os.close(rfd)
            if netns is not None:
                fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
                os.close(fd)
            data = json.dumps({"result": fn(*args)}).encode()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            data = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
            code = 1
        try:
            with os.fdopen(wfd, "wb") as w:
                w.write(data)
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    os.waitpid(pid, 0)
    try:
        answer = json.loads(data)
    except ValueError:
        raise BenchError(f"client process died: {data[-200:]!r}") from None
    if "error" in answer:
        raise BenchError(answer["error"])
    return answer["result"]


def http_get(addr: tuple[str, int], timeout: float = 5.0) -> None:
    """One ``GET`` on a new connection, read to the end; raises unless it is a 200."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(HTTP_REQUEST)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    if not http_ok(response):
        raise BenchError(f"{addr[0]}:{addr[1]}: {response[:60]!r}")


def request_rate(host: str, port: int, count: int, workers: int) -> float:
    """Requests per second for ``count`` GETs (a new connection each) spread over
    ``workers`` threads, after a few unmeasured ones."""
    addr = (host, port)
    for _ in range(WARMUP_REQUESTS):
        http_get(addr)
    errors: list[BaseException] = []
    share = [count // workers + (i < count % workers) for i in range(workers)]

    def worker(n: int) -> None:
        try:
            for _ in range(n):
                http_get(addr)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in share]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return count / elapsed


def dns_latencies(server: str, name: str, count: int, port: int = 53) -> list[float]:
    """Seconds per ``A`` query for ``name`` to ``server``, one after another, after
    a few unmeasured ones; raises BenchError on a wrong or missing answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((server, port))
        s.settimeout(2.0)
        out = []
        for i in range(count + 20):
            qid = i & 0xFFFF
            query = dns_query(name, qid)
            started = time.perf_counter()
            s.send(query)
            reply = s.recv(512)
            elapsed = time.perf_counter() - started
            if not dns_answer_ok(reply, qid):
                raise BenchError(f"DNS {server}: bad answer for {name}: {reply[:40]!r}")
            if i >= 20:
                out.append(elapsed)
        return out


# ---------------------------------------------------------------- the host's side


def sh(*argv: str, check: bool = True) -> str:
    """Run a host command (ip, iptables); its stdout, or BenchError when it fails."""
    p = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p.stdout


def iptables_save(table: str) -> str:
    return sh("iptables-save", "-t", table)


def links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


class ClientNetns:
    """A network namespace with a veth pair to the host: ``VETH_NS_IP`` inside,
    ``VETH_HOST_IP`` on the host's end, a default route through it. Created and
    deleted by the bench; its name carries a random token."""

    def __init__(self, token: str) -> None:
        self.name = f"nb{token}"
        self.host_if = f"nbh{token}"
        self.path = f"/run/netns/{self.name}"
        self.made_run_netns = not os.path.isdir("/run/netns")
        self.created = False

    def create(self) -> None:
        peer = f"nbc{self.name[2:]}"
        sh("ip", "netns", "add", self.name)
        self.created = True
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", self.name)
        sh("ip", "addr", "add", f"{VETH_HOST_IP}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        ns = ["ip", "-n", self.name]
        sh(*ns, "addr", "add", f"{VETH_NS_IP}/30", "dev", peer)
        sh(*ns, "link", "set", peer, "up")
        sh(*ns, "link", "set", "lo", "up")
        sh(*ns, "route", "add", "default", "via", VETH_HOST_IP)

    def delete(self) -> None:
        if self.host_if in links():
            sh("ip", "link", "del", self.host_if, check=False)
        if self.created:
            sh("ip", "netns", "del", self.name, check=False)
        if self.made_run_netns:
            try:
                os.rmdir("/run/netns")
            except OSError:
                pass


@dataclass
class HostState:
    """What the run may change on the host, recorded before it starts."""

    iptables: dict[str, str]
    links: set[str]
    sysctls: dict[str, str]
    netns: set[str]

    @classmethod
    def capture(cls) -> HostState:
        sysctls = {}
        for name in SYSCTLS:
            try:
                sysctls[name] = Path("/proc/sys", name.replace(".", "/")).read_text().strip()
            except OSError:
                sysctls[name] = "(absent)"
        try:
            netns = set(os.listdir("/run/netns"))
        except OSError:
            netns = set()
        return cls({t: iptables_save(t) for t in ("filter", "nat")}, links(), sysctls, netns)

    def differences(self) -> list[str]:
        """What differs now from the recorded state, one line each."""
        now = HostState.capture()
        out = []
        for table in ("filter", "nat"):
            added, removed = iptables_difference(self.iptables[table], now.iptables[table])
            out += [f"iptables -t {table}: added   {x}" for x in added]
            out += [f"iptables -t {table}: removed {x}" for x in removed]
        out += [f"link added: {x}" for x in sorted(now.links - self.links)]
        out += [f"link gone: {x}" for x in sorted(self.links - now.links)]
        out += [f"network namespace added: {x}" for x in sorted(now.netns - self.netns)]
        out += [f"{name}: {value} -> {now.sysctls[name]}"
                for name, value in self.sysctls.items() if now.sysctls[name] != value]
        return out


# ---------------------------------------------------------------- the targets


class NetDockerTarget(DockerTarget):
    """Docker with its networking: a default bridge on ``DOCKER_BIP``, iptables rules,
    and the userland proxy (docker-proxy) for published ports."""

    def network_args(self) -> list[str]:
        return [f"--bip={DOCKER_BIP}", "--iptables=true", "--ip6tables=false",
                "--ip-masq=true", "--ip-forward=true", "--userland-proxy=true",
                f"--default-address-pool=base={DOCKER_BIP.rsplit('.', 1)[0]}.0/16,size=24"]


@dataclass
class Setup:
    """One target's containers and ports once it is set up."""

    target: Target
    lo_port: int
    dnat_port: int
    bridge: str = ""
    web_pid: int = 0
    resolver: str = ""
    proxy_pid: int = 0


def inspect(target: Target, kind: str, name: str) -> dict[str, Any]:
    out = target.own(kind, "inspect", name, timeout=60)
    return json.loads(out)[0]


def wait_http(addr: tuple[str, int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            http_get(addr, timeout=2)
            return
        except (OSError, BenchError):
            if time.monotonic() > deadline:
                raise BenchError(f"nothing answers on {addr[0]}:{addr[1]}") from None
            time.sleep(0.1)


def set_up(target: Target, tar: Path) -> Setup:
    """Start the daemon, import the image, create ``benchnet`` and its two containers."""
    target.start_daemon()
    target.import_image(tar)
    target.own("network", "create", "--driver", "bridge", "--subnet", SUBNETS[target.name],
               NETWORK, timeout=60)
    net = inspect(target, "network", NETWORK)
    setup = Setup(target, proc.free_port(), proc.free_port(VETH_HOST_IP))
    setup.bridge = (net.get("Options") or {}).get("com.docker.network.bridge.name") or (
        "br-" + net["Id"][:12])
    target.own("run", "-d", "--name", SERVER, "--network", NETWORK, IMAGE, "sh", "-c",
               SERVER_SCRIPT, timeout=60)
    target.own("run", "-d", "--name", WEB, "--network", NETWORK,
               "-p", f"127.0.0.1:{setup.lo_port}:80", "-p", f"{VETH_HOST_IP}:{setup.dnat_port}:80",
               IMAGE, "sh", "-c", WEB_SCRIPT, timeout=60)
    setup.web_pid = int(inspect(target, "container", WEB)["State"]["Pid"])
    resolv = Path(f"/proc/{setup.web_pid}/root/etc/resolv.conf").read_text()
    setup.resolver = nameserver(resolv) or ""
    if not setup.resolver:
        raise BenchError(f"{target.name}: no nameserver in {WEB}'s resolv.conf")
    wait_http(("127.0.0.1", setup.lo_port))
    setup.proxy_pid = proxy_pid(setup)
    return setup


def transfer(setup: Setup, blocks: int, attempts: int = 20) -> float:
    """One client container sending ``blocks`` × 64 KiB to the server; MB/s. A refused
    connection (the server's nc between two clients) is retried."""
    script = CLIENT_SCRIPT.format(blocks=blocks, server=SERVER, port=NC_PORT)
    for attempt in range(attempts):
        out = setup.target.own("run", "--rm", "--network", NETWORK, IMAGE, "sh", "-c", script,
                               timeout=300).decode()
        try:
            return parse_transfer(out, blocks * 65536)
        except BenchError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


Step = Callable[[Setup], dict[str, list[float]]]


def steps(args: argparse.Namespace, client_netns: str) -> list[Step]:
    """The measurements, each a function of a set-up target giving its samples by
    measurement id."""
    blocks = args.megabytes * MB // 65536

    def rate(mid: str, host: str, netns: str | None, workers: int) -> Step:
        def step(s: Setup) -> dict[str, list[float]]:
            port = s.dnat_port if netns else s.lo_port
            cpu = proc.cpu_seconds(s.proxy_pid) if s.proxy_pid and not netns else None
            out = {mid: [in_netns(netns, request_rate, host, port, args.requests, workers)]}
            if cpu is not None:
                after = proc.cpu_seconds(s.proxy_pid)
                if after is not None:  # the warm-up requests count too
                    out["proxy_cpu"] = [(after - cpu) / (args.requests + WARMUP_REQUESTS)]
            return out
        return step

    return [
        lambda s: {"throughput": [transfer(s, blocks)]},
        rate("port_lo_seq", "127.0.0.1", None, 1),
        rate("port_lo_conc", "127.0.0.1", None, args.workers),
        rate("port_dnat_seq", VETH_HOST_IP, client_netns, 1),
        rate("port_dnat_conc", VETH_HOST_IP, client_netns, args.workers),
        lambda s: {"dns": in_netns(f"/proc/{s.web_pid}/ns/net", dns_latencies, s.resolver,
                                   SERVER, args.queries)},
    ]


def measure_round(setups: Sequence[Setup], report: NetReport, args: argparse.Namespace,
                  client_netns: str, loads: list[float]) -> None:
    """One repetition: each measurement on each target in turn, so that a change in
    the machine's load falls on both alike (the caller alternates the order)."""
    for step in steps(args, client_netns):
        for setup in setups:
            loads.append(proc.load_average())
            try:
                for mid, values in step(setup).items():
                    report.add(mid, setup.target.name, *values)
            except (BenchError, OSError) as e:
                proc.log(f"{setup.target.name}: a measurement failed: {e}")


def proxy_pid(setup: Setup) -> int:
    """The process of the userland proxy that serves ``setup.lo_port``: engined
    itself; for Docker, the docker-proxy child of dockerd for that port (0: none)."""
    target = setup.target
    if target.daemon is None:
        return 0
    if target.name == "engine":
        return target.daemon.pid
    for pid in proc.children_of(target.daemon.pid):
        argv = proc.cmdline(pid)
        if argv[:1] and argv[0].endswith("docker-proxy") and str(setup.lo_port) in argv:
            return pid
    return 0


# ---------------------------------------------------------------- clean-up


def remove_docker_leftovers(state: HostState, bridges: Sequence[str]) -> None:
    """Undo what a stopped dockerd leaves: the rules it added to the built-in chains,
    its DOCKER* chains, the FORWARD policy it set, its bridges."""
    subnets = [DOCKER_BIP.rsplit(".", 1)[0] + ".0/24", SUBNETS["docker"]]
    markers = ["DOCKER", "docker0", *bridges, *subnets]
    for table in ("filter", "nat"):
        rules, chains = docker_rules(iptables_save(table), markers)
        for rule in rules:
            sh("iptables", "-w", "-t", table, "-D", *rule, check=False)
        for chain in chains:
            sh("iptables", "-w", "-t", table, "-F", chain, check=False)
        for chain in chains:
            sh("iptables", "-w", "-t", table, "-X", chain, check=False)
    policy = forward_policy(state.iptables["filter"])
    if policy:
        sh("iptables", "-w", "-P", "FORWARD", policy, check=False)
    for link in ("docker0", *bridges):
        if link in links() and link not in state.links:
            sh("ip", "link", "del", link, check=False)


def tear_down(setups: dict[str, Setup], targets: list[Target], state: HostState,
              client: ClientNetns, host_files: list[Path]) -> None:
    """Remove everything the run made; one failure does not stop the rest."""
    docker_bridges = [s.bridge for s in setups.values() if s.target.name == "docker"]
    for target in targets:
        proxies = []
        if target.name == "docker" and target.daemon is not None:
            proxies = [p for p in proc.children_of(target.daemon.pid)
                       if proc.cmdline(p)[:1] and proc.cmdline(p)[0].endswith("docker-proxy")]
        try:
            if target.daemon is not None and target.daemon.poll() is None:
                target.remove_all_containers()
                target.own("network", "rm", NETWORK, timeout=60)
        except (BenchError, OSError):
            pass
        try:
            target.cleanup()
        except Exception as e:  # noqa: BLE001 - clean up the others regardless
            proc.log(f"{target.name}: cleanup failed: {e}")
        proc.kill_pids(p for p in proxies if proc.alive(p))
    if any(t.name == "docker" for t in targets):
        remove_docker_leftovers(state, docker_bridges)
    client.delete()
    for path in host_files:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/net_bench.py",
                                description="Compare engine's networking with Docker's.")
    p.add_argument("-n", "--repeat", type=int, default=5, help="repetitions (default 5)")
    p.add_argument("--only", default=",".join(TARGETS),
                   help="comma-separated targets to measure (default: engine,docker)")
    p.add_argument("--json", type=Path, help="write every sample to this JSON file")
    p.add_argument("--megabytes", type=int, default=256,
                   help="MB sent per throughput sample (default 256)")
    p.add_argument("--requests", type=int, default=500,
                   help="HTTP requests per rate sample (default 500)")
    p.add_argument("--workers", type=int, default=4,
                   help="client threads of the concurrent variant (default 4)")
    p.add_argument("--queries", type=int, default=1000,
                   help="DNS queries per repetition (default 1000)")
    p.add_argument("--venv-bin", type=Path, default=REPO / ".venv" / "bin",
                   help="where engined and engine are installed")
    p.add_argument("--pool", type=Path, nargs="+", metavar="JSON",
                   help="measure nothing: print the table of the samples of these JSON "
                        "files (from --json) taken together")
    args = p.parse_args(argv)
    for opt in ("repeat", "megabytes", "requests", "workers", "queries"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt} must be at least 1")
    unknown = set(filter(None, args.only.split(","))) - set(TARGETS)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    return args


def pooled_report(runs: Sequence[dict[str, Any]]) -> NetReport:
    """One report of the samples of several runs' JSON (see :meth:`NetReport.to_json`),
    in run order, so that samples taken in step stay paired."""
    workers = {run.get("meta", {}).get("workers", 4) for run in runs}
    report = NetReport(workers=workers.pop() if len(workers) == 1 else 0)
    for run in runs:
        for mid, entry in run["measurements"].items():
            if mid not in report.samples:
                continue
            for target, res in entry["results"].items():
                if target in report.targets:
                    report.add(mid, target, *res["samples"])
                    if res.get("missing"):
                        report.mark_missing(target, res["missing"], [mid])
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pool:
        runs = [json.loads(path.read_text()) for path in args.pool]
        print(pooled_report(runs).format_table())
        loads = [x for run in runs for x in run.get("meta", {}).get("load_average_1min", [])]
        if loads:
            print(f"\n1-minute load average while measuring: {min(loads):.1f} to "
                  f"{max(loads):.1f}")
        return 0
    if os.geteuid() != 0:
        print("bench/net_bench.py needs root (daemons, namespaces, iptables)", file=sys.stderr)
        return 2
    if DOCKER is None:
        print("the docker CLI is needed (Docker's client)", file=sys.stderr)
        return 2
    from bench.run import busybox_tar  # the image builder run.py uses

    report = NetReport(workers=args.workers)
    host_files = [p for p in (Path("/etc/docker/key.json"),) if not p.exists()]
    old_handlers = proc.interrupt_on_signals()
    base = Path(tempfile.mkdtemp(prefix="netbench", dir="/tmp"))
    state = HostState.capture()
    client = ClientNetns(os.urandom(3).hex())
    targets: list[Target] = []
    setups: dict[str, Setup] = {}
    loads: list[float] = []
    interrupted = False
    leftovers: list[str] = []
    started: dict[str, Any] = {}
    try:
        chosen = [t for t in args.only.split(",") if t]
        for name in TARGETS:
            if name not in chosen:
                report.mark_missing(name, "not selected")
                continue
            target = (EngineTarget(base, args.venv_bin) if name == "engine"
                      else NetDockerTarget(base))
            reason = target.missing()
            if reason:
                print(f"{name}: {reason}")
                report.mark_missing(name, reason)
            else:
                targets.append(target)
        started = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                   "versions": versions()}
        client.create()
        tar = busybox_tar(base / "busybox.tar")
        for target in targets:
            proc.log(f"{target.name}: starting, importing, creating {NETWORK}")
            try:
                setups[target.name] = set_up(target, tar)
            except (BenchError, OSError) as e:
                proc.log(f"{target.name}: setup failed: {e}")
                report.mark_missing(target.name, "setup failed")
        ready = list(setups.values())
        for rep in range(args.repeat):
            proc.log(f"repetition {rep + 1}/{args.repeat} (load {proc.load_average():.1f})")
            measure_round(ready if rep % 2 == 0 else ready[::-1], report, args, client.path,
                          loads)
    except KeyboardInterrupt:
        interrupted = True
        proc.log("interrupted: cleaning up")
    finally:
        proc.ignore_signals()
        tear_down(setups, targets, state, client, host_files)
        proc.unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)
        leftovers = state.differences()
        proc.restore_signals(old_handlers)

    print(f"\n{report.format_table()}\n")
    if loads:
        print(f"1-minute load average while measuring: {min(loads):.1f} to {max(loads):.1f} "
              f"on {os.cpu_count()} CPUs\n")
    print("host state after the run: " + (
        "as before (iptables, links, namespaces, sysctls)" if not leftovers else
        "differs (other engines' tests on this host may have made these changes):"))
    for line in leftovers:
        print(f"  {line}")
    if args.json:
        meta = {"command": " ".join(sys.argv), "repeat": args.repeat,
                "megabytes": args.megabytes, "requests": args.requests,
                "workers": args.workers, "queries": args.queries, **started,
                "interrupted": interrupted, "load_average_1min": loads,
                "host_differences": leftovers}
        dump_json(args.json, report.to_json(meta))
        print(f"samples written to {args.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
