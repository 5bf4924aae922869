"""The README's promise, with the real docker CLI: run a container and get its output."""
import pytest

pytestmark = [pytest.mark.root, pytest.mark.clients]


def test_run_rm_echo(docker):
    p = docker("run", "--rm", "busybox", "echo", "hello")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"hello\n"
    assert docker("ps", "-aq").stdout == b""


def test_exit_code_and_streams(docker):
    p = docker("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert p.returncode == 3
    assert p.stdout == b"out\n"
    assert p.stderr == b"err\n"


def test_missing_command_is_127(docker):
    p = docker("run", "--rm", "busybox", "no-such-command")
    assert p.returncode == 127
    assert b"executable file not found" in p.stderr
    assert docker("ps", "-aq").stdout == b""
