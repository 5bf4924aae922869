"""``mode=non-blocking``: a bounded buffer drained by a thread; drops instead of stalls."""
from __future__ import annotations

import threading
import time

import pytest

from engine.plugins.log._base import LineBuffer, NonBlockingWriter, buffer_options, with_mode
from engine.sdk.logwriter import LogWriter


class Recorder(LogWriter):
    """An inner writer that can be made to block until released."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.closed = False
        self.aborted = False

    def write(self, stream: str, data: bytes, time_ns: int) -> None:
        if not self.gate.wait(10):
            raise TimeoutError("never released")
        if self.aborted:
            raise OSError("aborted")
        self.lines.append((stream, data))

    def abort(self) -> None:
        self.aborted = True
        self.gate.set()

    def close(self) -> None:
        self.closed = True


def test_line_buffer_splits_and_flushes():
    lb = LineBuffer(limit=4)
    assert lb.feed("stdout", b"ab\ncdefgh") == [(b"ab\n", True), (b"cdef", False)]
    assert lb.feed("stderr", b"x") == []
    assert lb.feed("stdout", b"\n") == [(b"gh\n", True)]
    assert lb.flush() == [("stderr", b"x")]
    assert lb.flush() == []


def test_everything_arrives_in_order_when_the_destination_keeps_up():
    inner = Recorder()
    w = NonBlockingWriter(inner, 1 << 20)
    for i in range(1000):
        w.write("stdout", f"{i}\n".encode(), i)
    w.write("stderr", b"tail without newline", 0)
    w.close()
    assert inner.closed
    assert [d for _, d in inner.lines[:1000]] == [f"{i}\n".encode() for i in range(1000)]
    assert inner.lines[-1] == ("stderr", b"tail without newline")
    assert w.dropped == 0


def test_a_blocked_destination_drops_lines_instead_of_stalling():
    inner = Recorder()
    inner.gate.clear()  # the destination stops reading
    reports: list[str] = []
    w = NonBlockingWriter(inner, 1000, grace=0.2, report=reports.append)
    t0 = time.monotonic()
    for i in range(10_000):
        w.write("stdout", b"%05d........\n" % i, i)  # 14 bytes a line
    assert time.monotonic() - t0 < 2  # never waited on the destination
    assert w.queued <= 1000
    assert w.dropped >= 10_000 - 1000 // 14 - 1
    w.close()  # gives up after the grace period and aborts the stuck write
    assert inner.aborted
    assert not w.thread.is_alive()
    assert any("dropped" in r for r in reports)


def test_released_destination_receives_what_fitted_in_order():
    inner = Recorder()
    inner.gate.clear()
    w = NonBlockingWriter(inner, 140)
    for i in range(100):
        w.write("stdout", b"%05d........\n" % i, i)
    inner.gate.set()
    w.close()
    got = [int(d[:5]) for _, d in inner.lines]
    assert got == sorted(got) and got[0] == 0
    assert len(got) + w.dropped == 100
    assert 9 <= len(got) <= 11


def test_errors_in_the_destination_do_not_stop_the_drain():
    class Flaky(Recorder):
        def write(self, stream, data, time_ns):
            if data.startswith(b"bad"):
                raise OSError("boom")
            super().write(stream, data, time_ns)

    inner = Flaky()
    reports: list[str] = []
    w = NonBlockingWriter(inner, 1 << 16, report=reports.append)
    w.write("stdout", b"ok1\nbad\nok2\n", 0)
    w.close()
    assert [d for _, d in inner.lines] == [b"ok1\n", b"ok2\n"]
    assert w.errors == 1 and "boom" in reports[0]


def test_mode_options():
    assert buffer_options({}) == ("blocking", 1 << 20)
    opts = {"mode": "non-blocking", "max-buffer-size": "4k"}
    assert buffer_options(opts) == ("non-blocking", 4096)
    with pytest.raises(ValueError):
        buffer_options({"mode": "fast"})
    inner = Recorder()
    assert with_mode(inner, {"options": {}}) is inner
    wrapped = with_mode(inner, {"options": {"mode": "non-blocking"}})
    assert isinstance(wrapped, NonBlockingWriter)
    wrapped.close()


@pytest.mark.parametrize("module", ["jsonfile_writer", "local_writer"])
def test_file_writers_honour_the_mode(tmp_path, module):
    import importlib

    create = importlib.import_module(f"engine.plugins.log.{module}").create
    ctx = {"container_id": "c" * 64, "log_dir": str(tmp_path),
           "options": {"mode": "non-blocking", "max-buffer-size": "1m"}}
    w = create(ctx)
    assert isinstance(w, NonBlockingWriter)
    for i in range(500):
        w.write("stdout", f"{i}\n".encode(), i)
    w.close()
    assert w.dropped == 0
    blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert blob.count(b"499\\n" if module == "jsonfile_writer" else b"499\n") == 1


def test_a_log_driver_needs_read_or_read_batches_and_gets_the_other():
    import asyncio

    from engine.sdk.drivers import DriverContext, LogContext, LogDriver, LogEntry

    ctx = DriverContext(name="x", state_dir="/nonexistent", options={})
    log = LogContext(container_id="c", container_name="/c", image="i", log_dir="/nonexistent")

    class ByEntry(LogDriver):
        name = "by-entry"

        async def read(self, log, **kw):
            for i in range(3):
                yield LogEntry("stdout", b"%d\n" % i, i)

    class ByBatch(LogDriver):
        name = "by-batch"

        async def read_batches(self, log, **kw):
            yield [LogEntry("stdout", b"0\n", 0), LogEntry("stderr", b"1\n", 1)]
            yield [LogEntry("stdout", b"2\n", 2)]

    class Neither(LogDriver):
        name = "neither"

    async def main():
        a = [b async for b in ByEntry(ctx).read_batches(log)]
        b = [e async for e in ByBatch(ctx).read(log)]
        assert [len(x) for x in a] == [1, 1, 1]
        assert [e.data for e in b] == [b"0\n", b"1\n", b"2\n"]
        for call in (Neither(ctx).read, Neither(ctx).read_batches):
            with pytest.raises(NotImplementedError):
                await call(log).__anext__()

    asyncio.run(main())
