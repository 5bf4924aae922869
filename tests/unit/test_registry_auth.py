"""Registry credentials, challenges, platform selection and insecure-host rules."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest
from engine.registry import auth
from engine.registry.client import RegistryHosts, parse_platform, registry_host, select_platform
from engine.sdk.errors import InvalidArgument, NotFound


def test_x_registry_auth_round_trip_and_unpadded_base64url():
    creds = auth.Credentials(username="me", password="p+/w?", server="127.0.0.1:5000")
    assert auth.decode_header(auth.encode_header(creds)) == creds
    raw = json.dumps({"username": "u", "password": "~~~>>>", "serveraddress": "h"}).encode()
    header = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert auth.decode_header(header) == auth.Credentials("u", "~~~>>>", server="h")
    assert auth.decode_header("") is None
    assert auth.decode_header(base64.b64encode(b"{}").decode()) is None
    with pytest.raises(InvalidArgument):
        auth.decode_header(base64.b64encode(b"not json").decode())


def test_identity_token_in_header():
    header = base64.urlsafe_b64encode(json.dumps({"IdentityToken": "tok"}).encode()).decode()
    assert auth.decode_header(header) == auth.Credentials(identity_token="tok")


def test_credentials_from_docker_config(tmp_path):
    pair = base64.b64encode(b"alice:s3:cret").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        "127.0.0.1:5000": {"auth": pair},
        "http://reg.example:8443/v2/": {"username": "bob", "password": "pw2"},
    }}))
    assert auth.from_config("127.0.0.1:5000", tmp_path) == auth.Credentials(
        "alice", "s3:cret", server="127.0.0.1:5000")
    assert auth.from_config("docker.io", tmp_path).username == "hub"
    assert auth.from_config("reg.example:8443", tmp_path).username == "bob"
    assert auth.from_config("elsewhere:1", tmp_path) is None
    assert auth.from_config("docker.io", tmp_path / "missing") is None


def test_config_dir_follows_docker_config(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert auth.config_dir() == tmp_path
    monkeypatch.delenv("DOCKER_CONFIG")
    assert auth.config_dir().name == ".docker"


def test_parse_bearer_and_basic_challenges():
    c = auth.parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                             'scope="repository:a/b:pull,push"')
    assert c == auth.Challenge("bearer", {"realm": "https://auth.example/token",
                                          "service": "reg", "scope": "repository:a/b:pull,push"})
    assert auth.parse_challenge('Basic realm="x"') == auth.Challenge("basic", {"realm": "x"})
    assert auth.parse_challenge("") is None


@pytest.mark.parametrize("server,host", [
    ("https://index.docker.io/v1/", "docker.io"), ("", "docker.io"),
    ("registry-1.docker.io", "docker.io"), ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
    ("localhost:5000", "localhost:5000")])
def test_server_host(server, host):
    assert auth.server_host(server) == host


def test_docker_hub_is_served_from_registry_1():
    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("127.0.0.1:5000") == "127.0.0.1:5000"


def test_loopback_and_localhost_are_insecure_by_default(tmp_path):
    hosts = RegistryHosts(certs_dir=tmp_path)
    for host in ("127.0.0.1:5000", "127.1.2.3", "localhost:80", "[::1]:5000", "localhost"):
        assert hosts.is_insecure(host), host
    for host in ("registry-1.docker.io", "10.0.0.1:5000", "localhost.example.com"):
        assert not hosts.is_insecure(host), host
    assert RegistryHosts(["10.0.0.1:5000"], tmp_path).is_insecure("10.0.0.1:5000")
    strict = RegistryHosts(certs_dir=tmp_path, loopback_insecure=False)
    assert not strict.is_insecure("127.0.0.1:5000")


def test_insecure_registries_by_name_and_by_network(tmp_path):
    """dockerd's ``insecure-registries`` entries: ``host:port`` names (an URL scheme is
    tolerated) and CIDR networks matching registries given by address."""
    hosts = RegistryHosts(["reg.example:5000", "http://mirror.example/", "10.1.0.0/16",
                           "fd00::/8"], tmp_path, loopback_insecure=False)
    for host in ("reg.example:5000", "mirror.example", "10.1.2.3:5000", "10.1.255.1",
                 "[fd00::5]:5000"):
        assert hosts.is_insecure(host), host
    for host in ("reg.example", "reg.example:443", "10.2.0.1:5000", "[fe80::1]:5000",
                 "127.0.0.1:5000", "mirror.example:5000"):
        assert not hosts.is_insecure(host), host
    with pytest.raises(InvalidArgument, match="CIDR"):
        RegistryHosts(["10.0.0.0/33"], tmp_path)


def test_daemon_registry_client_reads_insecure_registries_from_the_config(tmp_path):
    """``core/api/distribution.py`` builds the daemon's client from
    ``config.insecure_registries`` (the daemon.json key ``insecure-registries``)."""
    from engine.core.api.distribution import registry_client
    from engine.core.store.content import ContentStore
    from engine.core.store.images import ImageStore
    from engine.core.store.layers import LayerStore

    content = ContentStore(tmp_path / "content")
    services = SimpleNamespace(
        config=SimpleNamespace(data_root=str(tmp_path), insecure_registries=["reg.lan:5000"]),
        content=content,
        images=ImageStore(tmp_path / "images", content, LayerStore(tmp_path / "layers", "vfs")))
    client = registry_client(services)
    assert client is registry_client(services)
    assert client.hosts.is_insecure("reg.lan:5000")
    assert not client.hosts.is_insecure("reg.lan:5001")


INDEX = [
    {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:" + "2" * 64,
     "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
    {"digest": "sha256:" + "3" * 64,
     "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
    {"digest": "sha256:" + "4" * 64, "platform": {"os": "windows", "architecture": "amd64"}},
]


def test_platform_selection():
    assert select_platform(INDEX, ("linux", "amd64", ""))["digest"][7] == "1"
    assert select_platform(INDEX, parse_platform("linux/arm/v7"))["digest"][7] == "3"
    assert select_platform(INDEX, parse_platform("windows/amd64"))["digest"][7] == "4"
    with pytest.raises(NotFound, match="no matching manifest for linux/s390x"):
        select_platform(INDEX, parse_platform("linux/s390x"))
    with pytest.raises(InvalidArgument):
        parse_platform("linux/arm/v7/extra")
    assert parse_platform("")[0] == "linux"
