"""``engine plugin`` against a fake daemon: install (privileges, prompt, terminal or
not, aliases), upgrade, create, push, ls with errors."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from cli_fakedaemon import Reply, error, invoke, start_daemon, stop_daemon

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PRIVS = [{"Name": "network", "Description": "", "Value": ["host"]},
         {"Name": "capabilities", "Description": "", "Value": ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]}]


@pytest.fixture
def daemon():
    d = start_daemon()
    yield d
    stop_daemon(d)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def invoke_tty(d, *argv: str, answer: str):
    from engine.sdk.cli import Cli, main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), cli=Cli(host=d.host, out=out, err=err, stdin=Terminal(answer)))
    return code, out.getvalue(), err.getvalue()


def pull_reply(*names: str) -> Reply:
    return Reply(200, (b'{"status":"Installing"}\n',
                       json.dumps({"aux": {"Plugins": list(names)}}).encode() + b"\n"))


def test_install_asks_on_a_terminal_and_sends_the_grant(daemon, tmp_path):
    wheel = tmp_path / "p-1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    daemon.route("GET", "/plugins/privileges", Reply(200, PRIVS))
    daemon.route("POST", "/plugins/pull", pull_reply("dummy"))
    daemon.route("POST", "/plugins/dummy/enable", Reply(200))
    code, out, _ = invoke_tty(daemon, "plugin", "install", str(wheel), answer="y\n")
    assert code == 0
    assert out.splitlines() == [
        f'Plugin "{wheel}" is requesting the following privileges:',
        " - network: [host]",
        " - capabilities: [CAP_NET_ADMIN CAP_SYS_ADMIN]",
        "Do you grant the above permissions? [y/N] Installing",
        "Installed plugin dummy"]
    pull = daemon.one("POST", "/plugins/pull")
    assert pull.q("remote") == str(wheel) and pull.q("name") is None
    assert pull.json() == PRIVS
    assert daemon.find("POST", "/plugins/dummy/enable")


def test_install_refused_at_the_prompt_installs_nothing(daemon):
    daemon.route("GET", "/plugins/privileges", Reply(200, PRIVS))
    code, out, err = invoke_tty(daemon, "plugin", "install", "/x.whl", answer="n\n")
    assert code == 1 and "cancelled" in err
    assert not daemon.find("POST", "/plugins/pull")


def test_install_without_a_terminal_needs_grant_all(daemon, tmp_path, monkeypatch):
    daemon.route("GET", "/plugins/privileges", Reply(200, PRIVS))
    daemon.route("POST", "/plugins/pull", pull_reply("ram"))
    daemon.route("POST", "/plugins/ram/enable", Reply(200))
    refused = invoke(daemon, "plugin", "install", "/x.whl")
    assert refused.code == 1 and "--grant-all-permissions" in refused.err
    assert not daemon.find("POST", "/plugins/pull")
    # a relative directory travels as an absolute path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "memfs").mkdir()
    done = invoke(daemon, "plugin", "install", "--grant-all-permissions", "--alias", "ram",
                  "--disable", "memfs")
    assert done.code == 0 and done.out.endswith("Installed plugin ram\n")
    pull = daemon.one("POST", "/plugins/pull")
    assert (pull.q("remote"), pull.q("name")) == (str(tmp_path / "memfs"), "ram")
    assert not daemon.find("POST", "/plugins/ram/enable")


def test_install_reports_the_daemons_refusal(daemon):
    daemon.route("GET", "/plugins/privileges", Reply(200, []))
    daemon.route("POST", "/plugins/pull", error(409, "plugin memfs already exists"))
    result = invoke(daemon, "plugin", "install", "/x.whl")
    assert result.code != 0 and "already exists" in result.err


def test_upgrade_defaults_to_the_plugins_own_reference(daemon):
    daemon.route("GET", "/plugins/memfs/json", Reply(200, {"Name": "memfs",
                                                           "PluginReference": "/src/memfs"}))
    daemon.route("GET", "/plugins/privileges", Reply(200, []))
    daemon.route("POST", "/plugins/memfs/upgrade", Reply(200, (b'{"status":"Upgraded"}\n',)))
    result = invoke(daemon, "plugin", "upgrade", "memfs")
    assert result.code == 0, result
    assert daemon.one("POST", "/plugins/memfs/upgrade").q("remote") == "/src/memfs"
    assert result.out.splitlines()[-1] == "Upgraded plugin memfs to /src/memfs"


def test_create_sends_the_directory_as_a_tar(daemon):
    daemon.route("POST", "/plugins/create", Reply(204))
    result = invoke(daemon, "plugin", "create", "counter", str(EXAMPLES / "log-counter"))
    assert result.code == 0 and result.out == "counter\n"
    req = daemon.one("POST", "/plugins/create")
    assert req.q("name") == "counter"
    with tarfile.open(fileobj=io.BytesIO(req.body)) as tf:
        names = tf.getnames()
    assert "pyproject.toml" in names and "engine_log_counter/engine-plugin.json" in names
    assert not any("__pycache__" in n for n in names)


def test_create_validates_the_directory_before_sending(daemon, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    result = invoke(daemon, "plugin", "create", "x", str(tmp_path))
    assert result.code == 1 and "engine.plugins" in result.err
    assert not daemon.find("POST", "/plugins/create")


def test_push_shows_the_daemons_answer(daemon):
    daemon.route("POST", "/plugins/memfs/push", error(501, "pushing plugins is not supported yet"))
    result = invoke(daemon, "plugin", "push", "memfs")
    assert result.code != 0 and "not supported yet" in result.err


def test_ls_shows_why_a_plugin_is_not_running(daemon):
    daemon.route("GET", "/plugins", Reply(200, [
        {"Id": "broken", "Name": "broken", "Enabled": False, "Error": "ImportError: no x",
         "Config": {"Description": "A plugin"}},
        {"Id": "memfs", "Name": "memfs", "Enabled": True, "Error": "",
         "Config": {"Description": "Volumes kept in memory"}}]))
    lines = invoke(daemon, "plugin", "ls").out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "DESCRIPTION", "ENABLED"]
    assert "error: ImportError: no x" in lines[1] and lines[1].rstrip().endswith("false")
    assert "Volumes kept in memory" in lines[2] and lines[2].rstrip().endswith("true")


def test_create_with_only_a_directory_builds_the_wheel_locally(daemon, tmp_path, monkeypatch):
    import engine.sdk.packaging as packaging

    built = []

    def fake_build(directory, out):
        built.append((str(directory), str(out)))
        return Path(out) / "engine_log_counter-1.0.0-py3-none-any.whl"
    monkeypatch.setattr(packaging, "build_wheel", fake_build)
    result = invoke(daemon, "plugin", "create", "-o", str(tmp_path), str(EXAMPLES / "log-counter"))
    assert result.code == 0, result
    assert result.out == f"{tmp_path}/engine_log_counter-1.0.0-py3-none-any.whl\n"
    assert built == [(str(EXAMPLES / "log-counter"), str(tmp_path))]
    assert not daemon.find("POST", "/plugins/create")
