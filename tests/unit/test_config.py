"""Daemon configuration: dockerd's flags and daemon.json keys."""
from __future__ import annotations

import json

import pytest

from engine.core.api.system import registry_config
from engine.core.config import Config, parse_args


def test_defaults_and_flags(tmp_path):
    cfg = parse_args(["--data-root", str(tmp_path / "d"), "--log-opt", "max-size=1m",
                      "--insecure-registry", "reg.example:5000",
                      "--insecure-registry", "10.20.0.0/16"])
    assert cfg.data_root == str(tmp_path / "d")
    assert cfg.log_opts == {"max-size": "1m"}
    assert cfg.insecure_registries == ["reg.example:5000", "10.20.0.0/16"]


def test_config_file_keys_then_flags_on_top(tmp_path):
    f = tmp_path / "daemon.json"
    f.write_text(json.dumps({"insecure-registries": ["http://a.example:5000"],
                             "log-driver": "local", "plugin-registry": "127.0.0.1:5000/p"}))
    cfg = parse_args(["--config-file", str(f), "--insecure-registry", "b.example"])
    assert cfg.insecure_registries == ["http://a.example:5000", "b.example"]
    assert cfg.log_driver == "local" and cfg.plugin_registry == "127.0.0.1:5000/p"


@pytest.mark.parametrize("bad", ["", "has space:5000", "10.0.0.0/99", "a/b/c", "host/path",
                                 "ftp://reg.example", "http://"])
def test_a_malformed_insecure_registry_is_refused(bad):
    with pytest.raises(SystemExit, match="invalid insecure registry"):
        parse_args(["--insecure-registry", bad])


def test_info_registry_config_lists_what_is_insecure():
    rc = registry_config(Config(insecure_registries=["reg.example:5000", "10.20.0.0/16",
                                                     "https://c.example"]))
    assert rc["InsecureRegistryCIDRs"] == ["127.0.0.0/8", "10.20.0.0/16"]
    assert rc["IndexConfigs"]["reg.example:5000"]["Secure"] is False
    assert rc["IndexConfigs"]["c.example"]["Secure"] is False
    assert rc["IndexConfigs"]["docker.io"]["Official"] is True
    assert registry_config(Config())["InsecureRegistryCIDRs"] == ["127.0.0.0/8"]


def test_insecure_registries_read_alike_by_config_info_and_client(tmp_path):
    """One reading of an entry for the config check, ``/info`` and the registry client:
    a scheme and a trailing slash are tolerated by all three."""
    from engine.registry.client import RegistryHosts

    entries = ["http://mirror.example/", "10.3.0.0/16/", "reg.example:5000"]
    cfg = parse_args([a for e in entries for a in ("--insecure-registry", e)])
    rc = registry_config(cfg)
    assert sorted(rc["IndexConfigs"]) == ["docker.io", "mirror.example", "reg.example:5000"]
    assert rc["InsecureRegistryCIDRs"] == ["127.0.0.0/8", "10.3.0.0/16"]
    hosts = RegistryHosts(cfg.insecure_registries, tmp_path, loopback_insecure=False)
    assert hosts.is_insecure("mirror.example") and hosts.is_insecure("10.3.0.9:5000")
