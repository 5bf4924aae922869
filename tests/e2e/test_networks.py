"""Networks end to end, with the real docker CLI and docker-py against our daemon:
user-defined networks with name resolution, isolation, published ports, --network
none, connect/disconnect, and the /networks API's answers.

Traffic goes only to loopback and to addresses of networks the tests create.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.clients]


def uid(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, p.stderr.decode() + p.stdout.decode()
    return p.stdout.decode()


@pytest.fixture
def made(docker):
    """Names of containers and networks the test makes; removed afterwards."""
    things: dict[str, list[str]] = {"containers": [], "networks": []}
    yield things
    if things["containers"]:
        docker("rm", "-f", *things["containers"])
    for n in things["networks"]:
        docker("network", "rm", n)
    left = ok(docker("network", "ls", "-q", "--filter", "type=custom")).split()
    names = [json.loads(ok(docker("network", "inspect", n)))[0]["Name"] for n in left]
    assert not set(names) & set(things["networks"])


def connect_read(port: int, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                data = s.recv(100)
            if data:
                return data
        except OSError:
            pass
        if time.monotonic() > deadline:
            return b""
        time.sleep(0.1)


def test_network_create_ls_inspect_rm_prune(docker, made):
    n = uid("net")
    made["networks"].append(n)
    nid = ok(docker("network", "create", "--label", "team=a", n)).strip()
    assert len(nid) == 64
    ls = ok(docker("network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"))
    assert f"{n} bridge local" in ls
    for builtin in ("bridge bridge local", "host host local", "none null local"):
        assert builtin in ls
    info = json.loads(ok(docker("network", "inspect", n)))[0]
    assert info["Id"] == nid and info["Labels"] == {"team": "a"}
    subnet = info["IPAM"]["Config"][0]["Subnet"]
    assert info["IPAM"]["Config"][0]["Gateway"].endswith(".1")
    p = docker("network", "create", n)
    assert p.returncode != 0 and b"already exists" in p.stderr
    p = docker("network", "create", "--subnet", subnet, uid("dup"))
    assert p.returncode != 0 and b"Pool overlaps with other one on this address space" in p.stderr
    p = docker("network", "rm", "bridge")
    assert p.returncode != 0
    assert b"bridge is a pre-defined network and cannot be removed" in p.stderr
    p = docker("network", "create", "-d", "no-such-driver", uid("x"))
    assert p.returncode != 0
    assert ok(docker("network", "ls", "-q", "--filter", f"name={n}")).strip() == nid[:12]
    assert ok(docker("network", "ls", "-q", "--filter", "label=team=a")).strip() == nid[:12]
    ok(docker("network", "rm", n))
    p = docker("network", "inspect", n)
    assert p.returncode != 0 and b"not found" in p.stderr
    # prune removes unused custom networks only
    m = uid("prune")
    made["networks"].append(m)
    ok(docker("network", "create", m))
    assert m in ok(docker("network", "prune", "-f"))
    assert "bridge" in ok(docker("network", "ls"))


def test_containers_resolve_each_other_and_other_networks_are_isolated(docker, made):
    n1, n2, a1 = uid("n1"), uid("n2"), uid("a1")
    made["networks"] += [n1, n2]
    ok(docker("network", "create", n1))
    ok(docker("network", "create", "--subnet", "10.214.7.0/24", n2))
    made["containers"].append(a1)
    ok(docker("run", "-d", "--name", a1, "--network", n1, "--network-alias", "db",
              "busybox", "sleep", "60"))
    ip = json.loads(ok(docker("inspect", a1)))[0]["NetworkSettings"]["Networks"][n1]["IPAddress"]
    assert ip
    out = ok(docker("run", "--rm", "--network", n1, "busybox", "sh", "-c",
                    f"ping -c1 -W2 {a1} && ping -c1 -W2 db && nslookup {a1}"))
    assert f"Name:\t{a1}" in out and ip in out
    resolv = ok(docker("run", "--rm", "--network", n1, "busybox", "cat", "/etc/resolv.conf"))
    gateway = json.loads(ok(docker("network", "inspect", n1)))[0]["IPAM"]["Config"][0]["Gateway"]
    assert f"nameserver {gateway}" in resolv
    # another network: no route to a1 (dropped between bridges), and no name for it
    p = docker("run", "--rm", "--network", n2, "busybox", "ping", "-c1", "-W1", ip)
    assert p.returncode != 0
    p = docker("run", "--rm", "--network", n2, "busybox", "nslookup", a1)
    assert p.returncode != 0
    # the network shows its container; removing it is refused while it runs
    info = json.loads(ok(docker("network", "inspect", n1)))[0]
    (entry,) = info["Containers"].values()
    assert entry["Name"] == a1 and entry["IPv4Address"].startswith(ip + "/")
    p = docker("network", "rm", n1)
    assert p.returncode != 0 and b"has active endpoints" in p.stderr


def test_published_port_answers_on_loopback(docker, made):
    port = free_port()
    web, second = uid("web"), uid("web2")
    made["containers"] += [web, second]
    ok(docker("run", "-d", "--name", web, "-p", f"127.0.0.1:{port}:8080", "busybox",
              "nc", "-ll", "-p", "8080", "-e", "echo", "hi"))
    assert connect_read(port) == b"hi\n"
    assert ok(docker("port", web)).strip() == f"8080/tcp -> 127.0.0.1:{port}"
    ps = ok(docker("ps", "--filter", f"name={web}", "--format", "{{.Ports}}"))
    assert ps.strip() == f"127.0.0.1:{port}->8080/tcp"
    ports = json.loads(ok(docker("inspect", web)))[0]["NetworkSettings"]["Ports"]
    assert ports == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    # the same host port again: a clear error, and the second container is not left running
    p = docker("run", "-d", "--name", second, "-p", f"127.0.0.1:{port}:80", "busybox",
               "sleep", "60")
    assert p.returncode != 0 and b"port is already allocated" in p.stderr
    state = json.loads(ok(docker("inspect", second)))[0]["State"]
    assert not state["Running"]
    assert connect_read(port) == b"hi\n"
    ok(docker("rm", "-f", web))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_publish_all_uses_ephemeral_ports(docker, made):
    c = uid("pa")
    made["containers"].append(c)
    ok(docker("run", "-d", "--name", c, "-P", "--expose", "7000", "busybox", "nc", "-ll",
              "-p", "7000", "-e", "echo", "eph"))
    out = ok(docker("port", c, "7000/tcp")).strip().splitlines()[0]
    host_port = int(out.rsplit(":", 1)[1])
    assert host_port > 0
    assert connect_read(host_port) == b"eph\n"


def test_network_none_has_only_loopback(docker):
    out = ok(docker("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link"))
    names = [line.split(":")[1].strip() for line in out.splitlines()]
    assert names == ["lo"]


def test_default_bridge_gets_eth0_and_an_address(docker):
    out = ok(docker("run", "--rm", "busybox", "ip", "-o", "-4", "addr", "show", "eth0"))
    assert "inet " in out
    bridge = json.loads(ok(docker("network", "inspect", "bridge")))[0]
    subnet = bridge["IPAM"]["Config"][0]["Subnet"]
    assert bridge["Options"]["com.docker.network.bridge.name"] == "engine0"
    assert out.split("inet ")[1].split(".")[:2] == subnet.split(".")[:2]


def test_connect_and_disconnect_a_running_container(docker, made):
    n, c = uid("cn"), uid("cc")
    made["networks"].append(n)
    made["containers"].append(c)
    ok(docker("network", "create", n))
    ok(docker("run", "-d", "--name", c, "busybox", "sleep", "60"))
    ok(docker("network", "connect", "--alias", "extra", n, c))
    links = ok(docker("exec", c, "ip", "-o", "link"))
    assert "eth1" in links
    nets = json.loads(ok(docker("inspect", c)))[0]["NetworkSettings"]["Networks"]
    assert set(nets) == {"bridge", n} and "extra" in nets[n]["Aliases"]
    p = docker("network", "connect", n, c)
    assert p.returncode != 0
    ok(docker("network", "disconnect", n, c))
    assert "eth1" not in ok(docker("exec", c, "ip", "-o", "link"))
    ok(docker("network", "rm", n))
    made["networks"].remove(n)


def test_static_address_and_internal_network(docker, made):
    n, c = uid("in"), uid("ic")
    made["networks"].append(n)
    made["containers"].append(c)
    ok(docker("network", "create", "--internal", "--subnet", "10.214.9.0/24", n))
    ok(docker("run", "-d", "--name", c, "--network", n, "--ip", "10.214.9.77", "busybox",
              "sleep", "60"))
    ep = json.loads(ok(docker("inspect", c)))[0]["NetworkSettings"]["Networks"][n]
    assert ep["IPAddress"] == "10.214.9.77" and ep["MacAddress"] == "02:42:0a:d6:09:4d"
    assert "default" not in ok(docker("exec", c, "ip", "route"))
    assert json.loads(ok(docker("network", "inspect", n)))[0]["Internal"] is True


def test_docker_py_networks(engine_daemon):
    docker_mod = pytest.importorskip("docker")
    client = docker_mod.DockerClient(base_url=engine_daemon.host, version="1.41", timeout=60)
    name = uid("py")
    net = client.networks.create(name, driver="bridge", labels={"via": "py"})
    c = None
    try:
        assert client.networks.get(name).id == net.id
        assert name in [n.name for n in client.networks.list(names=[name])]
        c = client.containers.run("busybox", ["sleep", "60"], detach=True, network=name,
                                  name=uid("pyc"))
        net.reload()
        assert c.id in net.attrs["Containers"]
        pinger = client.containers.run("busybox", ["ping", "-c1", "-W2", c.name], network=name,
                                       detach=True)
        try:
            assert pinger.wait(timeout=30)["StatusCode"] == 0
            assert b"1 packets received" in pinger.logs()
        finally:
            pinger.remove(force=True)
        net.disconnect(c, force=True)
        c.reload()
        assert name not in c.attrs["NetworkSettings"]["Networks"]
    finally:
        if c is not None:
            c.remove(force=True)
        net.remove()
        client.close()
    assert name not in [n.name for n in client.networks.list()]


def test_host_network_shares_the_host_interfaces(docker):
    route = subprocess.run(["ip", "route", "show", "default"], capture_output=True,
                           text=True).stdout.split()
    if "dev" not in route:
        pytest.skip("the host has no default route")
    dev = route[route.index("dev") + 1]
    with open(f"/sys/class/net/{dev}/address") as f:
        mac = f.read().strip()
    out = ok(docker("run", "--rm", "--network", "host", "busybox", "ip", "-o", "link"))
    assert f"{dev}:" in out and mac in out


def test_daemon_restart_keeps_ports_names_and_addresses(fresh_daemon):
    """Containers outlive the daemon: the next one serves their ports and names again,
    and hands out no address twice."""
    import os

    env = fresh_daemon.env

    def dk(*args: str) -> str:
        return ok(subprocess.run(["docker", *args], capture_output=True, env=env, timeout=60))

    n, web, port = uid("rn"), uid("rw"), free_port()
    dk("network", "create", n)
    dk("run", "-d", "--name", web, "--network", n, "-p", f"127.0.0.1:{port}:8080", "busybox",
       "nc", "-ll", "-p", "8080", "-e", "echo", "again")
    ip = json.loads(dk("inspect", web))[0]["NetworkSettings"]["Networks"][n]["IPAddress"]
    assert connect_read(port) == b"again\n"
    fresh_daemon.stop()
    fresh_daemon.start()
    assert connect_read(port) == b"again\n"
    out = dk("run", "--rm", "--network", n, "busybox", "sh", "-c",
             f"nslookup {web}; ip -o -4 addr show eth0")
    assert f"Address: {ip}" in out
    assert f"inet {ip}/" not in out          # the newcomer got another address
    dk("rm", "-f", web)
    dk("network", "rm", n)
    assert os.path.exists(fresh_daemon.sock)


def test_network_events_on_start_and_stop(docker, made):
    n, c = uid("ev"), uid("evc")
    made["networks"].append(n)
    made["containers"].append(c)
    since = str(int(time.time()) - 1)
    nid = ok(docker("network", "create", n)).strip()
    ok(docker("run", "--name", c, "--network", n, "busybox", "true"))
    out = ok(docker("events", "--since", since, "--until", str(int(time.time()) + 1),
                    "--filter", "type=network", "--format", "{{.Action}} {{.Actor.ID}}"))
    assert [ln for ln in out.splitlines() if ln.endswith(nid)] == [
        f"create {nid}", f"connect {nid}", f"disconnect {nid}"]


def test_failed_start_leaves_no_endpoint_or_port(docker, made, engine_daemon):
    n, port = uid("fs"), free_port()
    made["networks"].append(n)
    ok(docker("network", "create", n))
    p = docker("run", "--rm", "--network", n, "-p", f"127.0.0.1:{port}:80", "busybox",
               "no-such-command")
    assert p.returncode == 127
    assert json.loads(ok(docker("network", "inspect", n)))[0]["Containers"] == {}
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    from pathlib import Path

    endpoints = Path(engine_daemon.data_root, "drivers", "network", "bridge", "endpoints")
    mine = [f for f in endpoints.glob("*.json") if json.loads(f.read_text())["ports"]
            and json.loads(f.read_text())["ports"][0]["host_port"] == port]
    assert mine == []
    ok(docker("network", "rm", n))
    made["networks"].remove(n)


# ---------------------------------------------------------------- 127.0.0.1 through the kernel


def nat_rules(port: int) -> list[str]:
    """The nat table's rules (``iptables -t nat -S``) that mention host port ``port``."""
    out = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True,
                         text=True, check=True).stdout
    return [ln for ln in out.splitlines() if f"--dport {port} " in ln]


def loopback_hits(port: int) -> int:
    """Packets that the ENGINE-LOCALHOST DNAT rule of ``port`` has sent to a container."""
    out = subprocess.run(["iptables", "-w", "-t", "nat", "-L", "ENGINE-LOCALHOST", "-n", "-v",
                          "-x"], capture_output=True, text=True, check=True).stdout
    return sum(int(ln.split()[0]) for ln in out.splitlines() if f"dpt:{port} " in ln + " ")


def http_get(host: str, port: int, timeout: float = 10.0) -> bytes:
    """The body of ``GET /`` (a new connection per try, until one answers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=3) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            if data:
                return data.partition(b"\r\n\r\n")[2]
        except OSError:
            pass
        if time.monotonic() > deadline:
            return b""
        time.sleep(0.1)


HTTPD = ["sh", "-c", "echo hello-$0 > /tmp/index.html; exec httpd -f -p 80 -h /tmp"]


def test_loopback_port_goes_through_kernel_dnat_and_rules_follow_the_container(docker, made):
    port = free_port()
    web, second = uid("kweb"), uid("kweb2")
    made["containers"] += [web, second]
    ok(docker("run", "-d", "--name", web, "-p", f"127.0.0.1:{port}:80", "busybox", *HTTPD, web))
    ip = json.loads(ok(docker("inspect", web)))[0]["NetworkSettings"]["IPAddress"]
    rules = nat_rules(port)
    assert any("-A ENGINE-LOCALHOST -d 127.0.0.1/32 -p tcp" in r
               and f"--to-destination {ip}:80" in r for r in rules), rules
    before = loopback_hits(port)
    assert http_get("127.0.0.1", port) == f"hello-{web}\n".encode()
    curl = shutil.which("curl")
    if curl:
        p = subprocess.run([curl, "-sS", "-m", "10", f"http://127.0.0.1:{port}/"],
                           capture_output=True, timeout=20)
        assert p.stdout == f"hello-{web}\n".encode(), p.stderr
    # the kernel carried it, not the daemon's proxy
    assert loopback_hits(port) > before
    # the port is held: a second container asking for it fails at once, clearly
    t0 = time.monotonic()
    p = docker("run", "-d", "--name", second, "-p", f"127.0.0.1:{port}:80", "busybox", *HTTPD,
               second)
    assert p.returncode != 0 and b"port is already allocated" in p.stderr, p.stderr
    assert time.monotonic() - t0 < 10
    assert not json.loads(ok(docker("inspect", second)))[0]["State"]["Running"]
    assert len(nat_rules(port)) == len(rules)       # nothing of the second one
    assert http_get("127.0.0.1", port) == f"hello-{web}\n".encode()
    ok(docker("rm", "-f", web))
    assert nat_rules(port) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_random_loopback_port_and_every_address_port(docker, made):
    web = uid("rweb")
    made["containers"].append(web)
    any_port = free_port()
    ok(docker("run", "-d", "--name", web, "-p", "127.0.0.1::80", "-p", f"{any_port}:80",
              "busybox", *HTTPD, web))
    out = ok(docker("port", web, "80/tcp")).split()
    lo = next(int(x.rsplit(":", 1)[1]) for x in out if x.startswith("127.0.0.1:"))
    assert lo > 0 and lo != any_port
    for port in (lo, any_port):
        before = loopback_hits(port)
        assert http_get("127.0.0.1", port) == f"hello-{web}\n".encode()
        assert loopback_hits(port) > before
    # a 0.0.0.0 port takes all of 127.0.0.0/8, like a socket bound there
    assert any("-d 127.0.0.0/8" in r for r in nat_rules(any_port))
    assert http_get("127.0.0.2", any_port) == f"hello-{web}\n".encode()
    ok(docker("rm", "-f", web))
    assert nat_rules(lo) == [] and nat_rules(any_port) == []


UDP_PONG = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(100)
    s.sendto(sys.argv[1].encode() + b":" + data, peer)
"""


def test_udp_loopback_port_and_its_flows_follow_the_container(docker, made):
    """busybox has no UDP server: a Python one runs in the container's network
    namespace (entered from the host), behind the container's published UDP port. A
    client that keeps its socket reaches the next container on that port at once (the
    first container's tracked flow went with it)."""
    import sys

    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.connect(("127.0.0.1", port))
        for name in (uid("udp"), uid("udp2")):
            made["containers"].append(name)
            ok(docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5353/udp",
                      "busybox", "sleep", "300"))
            assert any("-p udp" in r and "ENGINE-LOCALHOST" in r for r in nat_rules(port))
            pid = json.loads(ok(docker("inspect", name)))[0]["State"]["Pid"]
            server = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable,
                                       "-c", UDP_PONG, name], stdout=subprocess.PIPE)
            try:
                assert server.stdout.readline().strip() == b"ready"
                before = loopback_hits(port)
                client.send(b"ping")
                assert client.recv(100) == f"{name}:ping".encode()
                assert loopback_hits(port) > before
            finally:
                server.kill()
                server.wait()
            ok(docker("rm", "-f", name))
            assert nat_rules(port) == []


def test_hairpin_through_the_host_address(docker, made):
    """A container reaches a published port (its own, a neighbour's) through the
    bridge's address of the host: the DNAT rules skip the bridge, the proxy serves it."""
    n, port = uid("hp"), free_port()
    web, client = uid("hweb"), uid("hcli")
    made["networks"].append(n)
    made["containers"] += [web, client]
    ok(docker("network", "create", n))
    ok(docker("run", "-d", "--name", web, "--network", n, "-p", f"{port}:80", "busybox",
              *HTTPD, web))
    gw = json.loads(ok(docker("network", "inspect", n)))[0]["IPAM"]["Config"][0]["Gateway"]
    assert http_get("127.0.0.1", port) == f"hello-{web}\n".encode()
    fetch = (f"for i in $(seq 50); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {gw} {port} "
             "| tail -n1 | grep . && exit 0; sleep 0.2; done; exit 1")
    p = docker("run", "--name", client, "--network", n, "busybox", "sh", "-c", fetch)
    assert ok(p).strip() == f"hello-{web}", p.stderr
    p = docker("exec", web, "sh", "-c", fetch)
    assert ok(p).strip() == f"hello-{web}"


PLUGIN_SERVER = str(__import__("pathlib").Path(__file__).parents[1] / "integration"
                    / "plugin_server.py")


def test_remote_network_join_failure_fails_fast_and_leaves_nothing(tmp_path, monkeypatch,
                                                                   request):
    """A plugin whose Join answers a gateway outside the network's subnet: the kernel
    refuses the default route, and ``docker run`` fails at once with the driver's
    typed error instead of hanging, leaving no interface of the plugin behind."""
    import sys

    from conftest import DOCKER
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    root = tmp_path / "plugroot"
    root.mkdir()
    proc = subprocess.Popen([sys.executable, PLUGIN_SERVER, str(plugins / "gwplug.sock"),
                             str(root), "--network"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        monkeypatch.setenv("ENGINE_PLUGIN_PATH", str(plugins))
        daemon = request.getfixturevalue("fresh_daemon")

        def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
            return subprocess.run([DOCKER, *args], capture_output=True, text=True,
                                  env=daemon.env, timeout=timeout)

        # the test plugin's Join always answers gateway 10.231.0.1
        r = run("network", "create", "-d", "gwplug", "--subnet", "10.241.0.0/24", "gwnet")
        assert r.returncode == 0, r.stderr
        before = set(os.listdir("/sys/class/net"))
        t0 = time.monotonic()
        r = run("run", "--rm", "--network", "gwnet", "busybox", "true", timeout=30)
        took = time.monotonic() - t0
        assert r.returncode != 0
        assert took < 5, f"the failed start took {took:.1f} s"
        assert "gateway 10.231.0.1" in r.stderr and "unreachable" in r.stderr, r.stderr
        assert not set(os.listdir("/sys/class/net")) - before  # the plugin's pair is gone
        netns_dir = os.path.join(daemon.exec_root, "netns")
        assert not os.path.isdir(netns_dir) or os.listdir(netns_dir) == []
        with open("/proc/mounts") as f:
            assert netns_dir not in f.read()
        assert run("ps", "-aq").stdout.split() == []
        assert run("network", "rm", "gwnet").returncode == 0
    finally:
        proc.kill()
        proc.wait()
