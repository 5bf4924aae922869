"""counter passes the engine's log driver suite, and counts."""
from __future__ import annotations

import json

import pytest

from engine.sdk.drivers import DriverContext
from engine.sdk.testing.log import T0, LogDriverSuite
from engine_log_counter import CounterLogDriver
from engine_log_counter.writer import CounterWriter, count_path


class TestCounter(LogDriverSuite):
    @pytest.fixture
    def driver(self, tmp_path):
        return CounterLogDriver(DriverContext(name="counter", state_dir=str(tmp_path)))


def test_lines_are_counted_per_stream(tmp_path):
    w = CounterWriter({"log_dir": str(tmp_path), "container_id": "c1"})
    w.write("stdout", b"a\nb\n", T0)
    w.write("stderr", b"oops\n", T0 + 1)
    w.write("stdout", b"no newline", T0 + 2)
    w.close()
    assert json.loads(open(count_path(str(tmp_path), "c1")).read()) == {"stdout": 3, "stderr": 1}
