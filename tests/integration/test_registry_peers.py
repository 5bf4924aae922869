"""The registry client and server against real peers on loopback.

* Debian's ``docker-registry`` (the reference registry:2): engine's client pushes to and
  pulls from it, plain, with htpasswd auth, and over TLS with a CA made by ``openssl``.
* ``skopeo copy`` into and out of ``engine registry serve``: layers stay byte-identical.

The helpers here (``RegistryProcess``, ``engine_registry``, ``free_port``) are shared with
``test_registry_daemon``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine.registry.auth import Credentials
from engine.registry.client import RegistryClient, RegistryError, RegistryHosts, Unauthorized
from engine.registry.htpasswd import bcrypt_hash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from test_registry_client import add_image, client_for  # noqa: E402

DOCKER_REGISTRY = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")
OPENSSL = shutil.which("openssl")
needs_registry = pytest.mark.skipif(DOCKER_REGISTRY is None,
                                    reason="docker-registry (Debian package) is not installed")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")
pytestmark = [pytest.mark.clients]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"registry exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"registry did not listen on {port}: {log.read_text()[-2000:]}")


class RegistryProcess:
    """A registry server we started; stopped by its pid."""

    def __init__(self, argv: list[str], port: int, base: Path) -> None:
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.log = base / "registry.log"
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        wait_port(port, self.proc, self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def docker_registry(base: Path, *, htpasswd: Path | None = None,
                    tls: tuple[Path, Path] | None = None,
                    client_ca: Path | None = None) -> RegistryProcess:
    """Debian's docker-registry on a free loopback port, storage under ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = ["version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:",
             f"    rootdirectory: {base / 'storage'}", "  delete:", "    enabled: true",
             "http:", f"  addr: 127.0.0.1:{port}", "  secret: not-a-secret"]
    if tls:
        lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
        if client_ca:
            lines += ["    clientcas:", f"      - {client_ca}"]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: test", f"    path: {htpasswd}"]
    config = base / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    return RegistryProcess([DOCKER_REGISTRY or "docker-registry", "serve", str(config)],
                           port, base)


def engine_registry(base: Path, *extra: str) -> RegistryProcess:
    """``python -m engine.registry serve`` on a free loopback port."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return RegistryProcess([sys.executable, "-m", "engine.registry", "serve", "--addr",
                            f"127.0.0.1:{port}", "--root", str(base / "root"), *extra],
                           port, base)


@pytest.fixture
def started() -> Iterator[list[RegistryProcess]]:
    procs: list[RegistryProcess] = []
    yield procs
    for p in procs:
        p.stop()


def registry_blob(storage: Path, digest: str) -> bytes:
    """A blob's bytes in the reference registry's filesystem layout."""
    hex_ = digest.removeprefix("sha256:")
    return (storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data").read_bytes()


def pushed_layers(client: RegistryClient, image: str) -> list[str]:
    """Digests of the compressed blobs the client pushes for an image's layers."""
    return [client._known_blob(layer.digest)[0] for layer in client.images.get(image).layers]


@needs_registry
def test_push_and_pull_with_the_reference_registry(tmp_path, started):
    reg = docker_registry(tmp_path / "reg")
    started.append(reg)
    a, b = client_for(tmp_path / "a"), client_for(tmp_path / "b")
    image_id = add_image(a.images, f"{reg.host}/team/app:v1", sizes=(2000, 300_000))

    async def go() -> None:
        digest = await a.push(f"{reg.host}/team/app:v1")
        for blob in pushed_layers(a, image_id):
            assert registry_blob(tmp_path / "reg" / "storage", blob) == a.content.read(blob)
        img = await b.pull(f"{reg.host}/team/app:v1")
        assert img.id == image_id
        assert img.repo_digests == [f"{reg.host}/team/app@{digest}"]
        for blob in pushed_layers(a, image_id):
            assert b.content.read(blob) == a.content.read(blob)
        # cross-repository mount on the reference registry
        a.images.tag(image_id, f"{reg.host}/other/app:v1")
        statuses: list[str] = []

        async def record(msg: dict) -> None:
            statuses.append(msg.get("status", ""))

        await a.push(f"{reg.host}/other/app:v1", progress=record)
        assert statuses.count("Mounted from team/app") == 2

    asyncio.run(go())


@needs_registry
def test_reference_registry_with_htpasswd(tmp_path, started):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt_hash('secret')}\n")
    reg = docker_registry(tmp_path / "reg", htpasswd=htpasswd)
    started.append(reg)
    a = client_for(tmp_path / "a")
    add_image(a.images, f"{reg.host}/app:v1", sizes=(1000,))

    async def go() -> None:
        with pytest.raises(Unauthorized):
            await a.push(f"{reg.host}/app:v1")
        with pytest.raises(Unauthorized):
            await a.login(reg.host, Credentials("alice", "wrong"))
        assert await a.login(reg.host, Credentials("alice", "secret")) == ""
        await a.push(f"{reg.host}/app:v1", creds=Credentials("alice", "secret"))
        b = client_for(tmp_path / "b")
        with pytest.raises(Unauthorized):
            await b.pull(f"{reg.host}/app:v1")
        img = await b.pull(f"{reg.host}/app:v1", creds=Credentials("alice", "secret"))
        assert img.repo_tags == [f"{reg.host}/app:v1"]

    asyncio.run(go())


EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def make_ca_and_cert(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it; return (ca, cert, key)."""
    d.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run([OPENSSL or "openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", *EC_KEY, "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=engine test CA")
    ssl("req", *EC_KEY, "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    ssl("req", *EC_KEY, "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=engine test client")
    ssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.cert", "-days", "2")
    return d / "ca.crt", d / "server.crt", d / "server.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA with a server certificate for 127.0.0.1 and a client certificate."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    make_ca_and_cert(d)
    return d


@needs_registry
def test_reference_registry_over_tls_with_our_ca(tmp_path, started, pki):
    ca, cert, key = pki / "ca.crt", pki / "server.crt", pki / "server.key"
    reg = docker_registry(tmp_path / "reg", tls=(cert, key))
    started.append(reg)
    certs = tmp_path / "certs.d"
    # loopback is not insecure here: TLS must verify, and nothing falls back to HTTP
    strict = RegistryHosts(certs_dir=certs, loopback_insecure=False)
    a = client_for(tmp_path / "a", hosts=strict)
    add_image(a.images, f"{reg.host}/app:v1", sizes=(1000,))

    async def go() -> None:
        with pytest.raises(RegistryError, match="not trusted|CERTIFICATE_VERIFY_FAILED"):
            await a.push(f"{reg.host}/app:v1")
        (certs / reg.host).mkdir(parents=True)
        shutil.copy(ca, certs / reg.host / "ca.crt")
        fresh = RegistryHosts(certs_dir=certs, loopback_insecure=False)
        a2 = client_for(tmp_path / "a", hosts=fresh)
        digest = await a2.push(f"{reg.host}/app:v1")
        b = client_for(tmp_path / "b", hosts=fresh)
        img = await b.pull(f"{reg.host}/app:v1")
        assert img.repo_digests == [f"{reg.host}/app@{digest}"]

    asyncio.run(go())


@needs_registry
@needs_skopeo
def test_skopeo_copies_into_and_out_of_engine_registry(tmp_path, started):
    ref = docker_registry(tmp_path / "ref")
    started.append(ref)
    ours = engine_registry(tmp_path / "ours")
    started.append(ours)
    a = client_for(tmp_path / "a")
    image_id = add_image(a.images, f"{ref.host}/team/app:v1", sizes=(1000, 200_000))
    asyncio.run(a.push(f"{ref.host}/team/app:v1"))

    def skopeo(*args: str) -> str:
        p = subprocess.run([SKOPEO or "skopeo", "--insecure-policy", *args],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stdout

    # reference registry -> engine registry -> a directory
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{ref.host}/team/app:v1", f"docker://{ours.host}/copied/app:v1")
    out = tmp_path / "out"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ours.host}/copied/app:v1", f"dir:{out}")
    for blob in pushed_layers(a, image_id):
        assert (out / blob.removeprefix("sha256:")).read_bytes() == a.content.read(blob)
    info = json.loads(skopeo("inspect", "--tls-verify=false",
                             f"docker://{ours.host}/copied/app:v1"))
    assert info["Layers"] == pushed_layers(a, image_id)
    tags = json.loads(skopeo("list-tags", "--tls-verify=false",
                             f"docker://{ours.host}/copied/app"))
    assert tags["Tags"] == ["v1"]
    # and engine's client pulls what skopeo put there
    b = client_for(tmp_path / "b")
    img = asyncio.run(b.pull(f"{ours.host}/copied/app:v1"))
    assert img.id == image_id
    # an OCI copy out of the engine registry keeps the layer bytes too
    skopeo("copy", "--src-tls-verify=false", f"docker://{ours.host}/copied/app:v1",
           f"oci:{tmp_path / 'oci'}:v1")
    for blob in pushed_layers(a, image_id):
        hex_ = blob.removeprefix("sha256:")
        data = (tmp_path / "oci" / "blobs" / "sha256" / hex_).read_bytes()
        assert hashlib.sha256(data).hexdigest() == hex_


@needs_skopeo
def test_skopeo_with_htpasswd_on_engine_registry(tmp_path, started):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"bob:{bcrypt_hash('pw')}\n")
    ours = engine_registry(tmp_path, "--htpasswd", str(htpasswd))
    started.append(ours)
    a = client_for(tmp_path / "a")
    add_image(a.images, f"{ours.host}/app:v1", sizes=(1000,))
    asyncio.run(a.push(f"{ours.host}/app:v1", creds=Credentials("bob", "pw")))
    base = [SKOPEO or "skopeo", "--insecure-policy", "inspect", "--tls-verify=false"]
    denied = subprocess.run([*base, f"docker://{ours.host}/app:v1"], capture_output=True,
                            text=True, timeout=60)
    assert denied.returncode != 0
    ok = subprocess.run([*base, "--creds", "bob:pw", f"docker://{ours.host}/app:v1"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["Name"] == f"{ours.host}/app"


@needs_skopeo
def test_token_service_serves_skopeo_and_the_engine_client(tmp_path, started):
    """``engine registry serve --token``: skopeo (containers/image's token flow) and the
    engine's client get bearer tokens from the server's /token with basic credentials,
    push and pull through them, and are refused without credentials."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"bob:{bcrypt_hash('pw')}\n")
    ours = engine_registry(tmp_path / "ours", "--htpasswd", str(htpasswd), "--token")
    started.append(ours)
    creds = Credentials("bob", "pw")
    a = client_for(tmp_path / "a")
    image_id = add_image(a.images, f"{ours.host}/team/app:v1", sizes=(1000, 200_000))
    with pytest.raises(Unauthorized):
        asyncio.run(a.push(f"{ours.host}/team/app:v1"))
    asyncio.run(a.push(f"{ours.host}/team/app:v1", creds=creds))

    def skopeo(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([SKOPEO or "skopeo", "--insecure-policy", *args],
                           capture_output=True, text=True, timeout=120)
        assert (p.returncode == 0) == ok, p.stderr
        return p

    out = tmp_path / "out"
    refused = skopeo("copy", "--src-tls-verify=false", f"docker://{ours.host}/team/app:v1",
                     f"dir:{out}", ok=False)
    assert "unauthorized" in refused.stderr.lower() or "401" in refused.stderr
    skopeo("copy", "--src-tls-verify=false", "--src-creds", "bob:pw",
           f"docker://{ours.host}/team/app:v1", f"dir:{out}")
    for blob in pushed_layers(a, image_id):
        assert (out / blob.removeprefix("sha256:")).read_bytes() == a.content.read(blob)
    # skopeo pushes through the token flow too (another repository: a cross-mount scope)
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "bob:pw", f"dir:{out}",
           f"docker://{ours.host}/copied/app:v2")
    b = client_for(tmp_path / "b")
    img = asyncio.run(b.pull(f"{ours.host}/copied/app:v2", creds=creds))
    assert img.id == image_id
    assert skopeo("inspect", "--tls-verify=false", f"docker://{ours.host}/copied/app:v2",
                  ok=False).returncode != 0


@needs_registry
def test_client_certificate_from_certs_d(tmp_path, started, pki):
    ca, cert, key = pki / "ca.crt", pki / "server.crt", pki / "server.key"
    reg = docker_registry(tmp_path / "reg", tls=(cert, key), client_ca=ca)
    started.append(reg)
    certs = tmp_path / "certs.d"
    (certs / reg.host).mkdir(parents=True)
    shutil.copy(ca, certs / reg.host / "ca.crt")
    a = client_for(tmp_path / "a", hosts=RegistryHosts(certs_dir=certs, loopback_insecure=False))
    add_image(a.images, f"{reg.host}/app:v1", sizes=(1000,))
    with pytest.raises(RegistryError):
        asyncio.run(a.push(f"{reg.host}/app:v1"))  # no client certificate yet
    for name in ("client.cert", "client.key"):
        shutil.copy(pki / name, certs / reg.host / name)
    a = client_for(tmp_path / "a", hosts=RegistryHosts(certs_dir=certs, loopback_insecure=False))
    assert asyncio.run(a.push(f"{reg.host}/app:v1")).startswith("sha256:")


def test_engine_registry_serves_tls(tmp_path, started, pki):
    ca, cert, key = pki / "ca.crt", pki / "server.crt", pki / "server.key"
    ours = engine_registry(tmp_path / "ours", "--tls-cert", str(cert), "--tls-key", str(key))
    started.append(ours)
    certs = tmp_path / "certs.d"
    (certs / ours.host).mkdir(parents=True)
    shutil.copy(ca, certs / ours.host / "ca.crt")
    hosts = RegistryHosts(certs_dir=certs, loopback_insecure=False)
    a, b = client_for(tmp_path / "a", hosts=hosts), client_for(tmp_path / "b", hosts=hosts)
    image_id = add_image(a.images, f"{ours.host}/app:v1", sizes=(1000,))
    asyncio.run(a.push(f"{ours.host}/app:v1"))
    assert asyncio.run(b.pull(f"{ours.host}/app:v1")).id == image_id
