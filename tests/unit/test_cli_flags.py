"""The pflag-style parser and the value parsers behind ``run``/``create`` flags."""
from __future__ import annotations

import pytest
from engine.sdk.cli.flags import BOOL, INT, LIST, STR, Flag, HelpRequested, Spec, UsageError, parse
from engine.sdk.cli.opts import (
    parse_bytes,
    parse_cpus,
    parse_duration,
    parse_expose,
    parse_mount,
    parse_publish,
    parse_restart,
    parse_ulimit,
    parse_volume,
)

SPEC = Spec("demo", "demo [OPTIONS] ARG...", "A demo command", [
    Flag("-d, --detach", BOOL),
    Flag("-i, --interactive", BOOL),
    Flag("-t, --tty", BOOL),
    Flag("-e, --env", LIST),
    Flag("-n, --count", INT),
    Flag("--name", STR),
    Flag("--sig-proxy", BOOL, default=True),
], min_args=1)


def test_bools_shorthands_and_values():
    opts, args = parse(SPEC, ["-dit", "-eA=1", "-e", "B=2", "--env=C=3", "-n5", "--name=x",
                              "--sig-proxy=false", "arg"])
    assert (opts.detach, opts.interactive, opts.tty) == (True, True, True)
    assert opts.env == ["A=1", "B=2", "C=3"]
    assert opts.count == 5 and opts.name == "x" and opts.sig_proxy is False
    assert args == ["arg"]
    assert opts.given("name") and opts.given("env")


def test_defaults_and_changed():
    opts, _ = parse(SPEC, ["x"])
    assert (opts.detach, opts.env, opts.count, opts.name, opts.sig_proxy) == \
        (False, [], 0, None, True)
    assert opts.changed == set()


def test_interspersed_and_double_dash():
    opts, args = parse(SPEC, ["a", "-d", "b", "--", "-n", "3"])
    assert opts.detach and args == ["a", "b", "-n", "3"]
    strict = Spec("run", "run", "", SPEC.flags, interspersed=False)
    opts, args = parse(strict, ["-d", "img", "-n", "3"])
    assert opts.detach and opts.count == 0 and args == ["img", "-n", "3"]
    _, args = parse(SPEC, ["-"])
    assert args == ["-"]


@pytest.mark.parametrize("argv, message", [
    (["--nope", "x"], "unknown flag: --nope"),
    (["-z", "x"], "unknown shorthand flag: 'z' in -z"),
    (["-dz", "x"], "unknown shorthand flag: 'z' in -dz"),
    (["--name"], "flag needs an argument: --name"),
    (["-n"], "flag needs an argument: 'n' in -n"),
    (["-n", "many", "x"], 'invalid argument "many" for "-n, --count" flag'),
    (["--detach=maybe", "x"], 'invalid argument "maybe" for "-d, --detach" flag'),
    ([], '"demo" requires at least 1 argument.'),
])
def test_errors(argv, message):
    with pytest.raises(UsageError) as exc:
        parse(SPEC, argv)
    assert message in str(exc.value)


def test_help():
    with pytest.raises(HelpRequested):
        parse(SPEC, ["--help"])
    text = SPEC.help_text()
    assert "Usage:  engine demo [OPTIONS] ARG..." in text
    assert "-e, --env list" in text and "--sig-proxy" in text and "(default true)" in text


@pytest.mark.parametrize("text, value", [
    ("64m", 64 << 20), ("1g", 1 << 30), ("1.5g", int(1.5 * (1 << 30))), ("100", 100),
    ("10kb", 10 << 10), ("1KiB", 1 << 10), ("2M", 2 << 20), ("512b", 512),
])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "m", "12x", "1.2.3q", "-5"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_cpus_and_durations():
    assert parse_cpus("1.5") == 1_500_000_000 and parse_cpus("0.01") == 10_000_000
    with pytest.raises(ValueError):
        parse_cpus("-1")
    assert parse_duration("1m30s") == 90 * 10**9
    assert parse_duration("100ms") == 10**8 and parse_duration("2h") == 7200 * 10**9
    with pytest.raises(ValueError):
        parse_duration("5 parsecs")


@pytest.mark.parametrize("spec, rows", [
    ("80", [("80/tcp", "", "")]),
    ("8080:80", [("80/tcp", "", "8080")]),
    ("127.0.0.1::53/udp", [("53/udp", "127.0.0.1", "")]),
    ("127.0.0.1:8080:80", [("80/tcp", "127.0.0.1", "8080")]),
    ("[::1]:8080:80", [("80/tcp", "::1", "8080")]),
    ("8000-8001:80-81", [("80/tcp", "", "8000"), ("81/tcp", "", "8001")]),
    ("8000-8010:80", [("80/tcp", "", "8000-8010")]),
    ("3000-3001", [("3000/tcp", "", ""), ("3001/tcp", "", "")]),
])
def test_parse_publish(spec, rows):
    assert parse_publish(spec) == rows


@pytest.mark.parametrize("spec", ["1:2:3:4", "8000-8002:80-81", "80/icmp", "abc", "70000",
                                  "127.0.0.1:80:"])
def test_parse_publish_rejects(spec):
    with pytest.raises(ValueError):
        parse_publish(spec)


def test_expose_restart_ulimit():
    assert parse_expose("9000-9001/udp") == ["9000/udp", "9001/udp"]
    assert parse_restart("on-failure:5") == {"Name": "on-failure", "MaximumRetryCount": 5}
    assert parse_restart("unless-stopped") == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    for bad in ("sometimes", "always:3"):
        with pytest.raises(ValueError):
            parse_restart(bad)
    assert parse_ulimit("nofile=1024:2048") == {"Name": "nofile", "Soft": 1024, "Hard": 2048}
    assert parse_ulimit("nproc=64") == {"Name": "nproc", "Soft": 64, "Hard": 64}
    for bad in ("nofile", "nofile=2048:1024", "nofile=a"):
        with pytest.raises(ValueError):
            parse_ulimit(bad)


def test_parse_volume(tmp_path, monkeypatch):
    assert parse_volume("/data") == (None, "/data")
    assert parse_volume("/h:/c:ro") == ("/h:/c:ro", "")
    assert parse_volume("name:/c") == ("name:/c", "")
    monkeypatch.chdir(tmp_path)
    assert parse_volume("./sub:/c") == (f"{tmp_path}/sub:/c", "")
    for bad in ("rel", "/h:rel", ":/c", "a:b:c:d"):
        with pytest.raises(ValueError):
            parse_volume(bad)


def test_parse_mount():
    assert parse_mount("type=bind,source=/a,target=/b,readonly=false,bind-propagation=rshared") \
        == {"Type": "bind", "Source": "/a", "Target": "/b", "ReadOnly": False,
            "BindOptions": {"Propagation": "rshared"}}
    assert parse_mount("dst=/v,volume-driver=local,volume-label=a=b") == {
        "Type": "volume", "Target": "/v",
        "VolumeOptions": {"DriverConfig": {"Name": "local"}, "Labels": {"a": "b"}}}
    assert parse_mount("type=tmpfs,dst=/t,tmpfs-mode=1770") == {
        "Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"Mode": 0o1770}}
    for bad in ("type=bind,dst=/b", "src=/a", "type=tmpfs,dst=/t,volume-nocopy",
                "dst=/x,colour=red"):
        with pytest.raises(ValueError):
            parse_mount(bad)
