"""The log driver suite: what every :class:`~engine.sdk.drivers.LogDriver` does.

Subclass :class:`LogDriverSuite` and provide a ``driver`` fixture (a new, unstarted
instance). The suite plays the monitor's part: it loads the driver's writer from its
``writer`` spec, writes lines through it, and reads them back through the driver —
in order, exactly once, with ``tail``, ``since`` and ``follow``.
"""
from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ..drivers import LogContext, LogDriver, LogEntry
from ..errors import InvalidArgument
from ..logwriter import LogWriter
from . import drive

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND


class LogDriverSuite:
    """Shared tests for log drivers."""

    #: an option the driver must refuse (None: it accepts anything)
    unknown_option: ClassVar[str | None] = "no-such-option"
    #: options every container of the suite uses (must validate)
    log_options: ClassVar[dict[str, str]] = {}

    def context(self, driver: LogDriver, scratch: Path, cid: str = "c" * 64) -> LogContext:
        log_dir = scratch / "logs" / cid
        log_dir.mkdir(parents=True, exist_ok=True)
        return LogContext(container_id=cid, container_name="/suite", image="busybox",
                          log_dir=str(log_dir), options=dict(self.log_options))

    def writer(self, driver: LogDriver, ctx: LogContext) -> LogWriter:
        """The driver's writer, loaded the way the monitor loads it."""
        if not driver.writer:
            pytest.skip("the driver has no writer (output is discarded)")
        module, _, attr = driver.writer.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        return factory({"container_id": ctx.container_id,
                        "container_name": ctx.container_name, "image": ctx.image,
                        "log_dir": ctx.log_dir, "options": dict(ctx.options),
                        "labels": dict(ctx.labels)})

    def readable(self, driver: LogDriver) -> None:
        if not driver.can_read:
            pytest.skip("the driver's logs cannot be read back")

    @staticmethod
    async def collect(d: LogDriver, ctx: LogContext, **kw: Any) -> list[LogEntry]:
        return [e async for e in d.read(ctx, **kw)]

    def write_lines(self, driver: LogDriver, ctx: LogContext,
                    lines: list[tuple[str, bytes, int]]) -> None:
        w = self.writer(driver, ctx)
        for stream, data, ns in lines:
            w.write(stream, data, ns)
        w.close()

    # ------------------------------------------------------------ tests

    def test_driver_declares_itself(self, driver: LogDriver) -> None:
        assert isinstance(driver, LogDriver)
        assert driver.name and isinstance(driver.name, str)
        assert driver.writer == "" or driver.writer.count(":") == 1
        driver.validate_options(dict(self.log_options))

    def test_unknown_option_is_refused(self, driver: LogDriver) -> None:
        if self.unknown_option is None:
            pytest.skip("the driver accepts any option")
        with pytest.raises(InvalidArgument):
            driver.validate_options({self.unknown_option: "1"})

    def test_lines_come_back_in_order_exactly_once(self, driver: LogDriver,
                                                   tmp_path: Path) -> None:
        self.readable(driver)
        ctx = self.context(driver, tmp_path)
        lines = [("stdout" if i % 3 else "stderr", f"line {i}\n".encode(), T0 + i)
                 for i in range(50)]
        self.write_lines(driver, ctx, lines)

        async def body(d: LogDriver) -> None:
            got = await self.collect(d, ctx)
            assert [(e.stream, e.data) for e in got] == [(s, b) for s, b, _ in lines]
            assert [e.time_ns for e in got] == [ns for _, _, ns in lines]
        drive(driver, body)

    def test_batches_hold_the_same_entries_as_read(self, driver: LogDriver,
                                                   tmp_path: Path) -> None:
        """``read_batches`` (what the daemon reads through) and ``read`` agree, with
        and without ``tail``; no batch is empty."""
        self.readable(driver)
        ctx = self.context(driver, tmp_path)
        lines = [("stdout" if i % 4 else "stderr", f"entry {i}\n".encode(), T0 + i)
                 for i in range(200)]
        self.write_lines(driver, ctx, lines)

        async def body(d: LogDriver) -> None:
            for kw in ({}, {"tail": 7}, {"since_ns": T0 + 150}):
                batches = [b async for b in d.read_batches(ctx, **kw)]
                assert all(batches), kw
                flat = [(e.stream, e.data, e.time_ns) for b in batches for e in b]
                assert flat == [(e.stream, e.data, e.time_ns)
                                for e in await self.collect(d, ctx, **kw)], kw
        drive(driver, body)

    def test_chunks_are_split_into_lines(self, driver: LogDriver, tmp_path: Path) -> None:
        """A chunk may hold several lines, or part of one; the last partial line is
        flushed on close, without a newline."""
        self.readable(driver)
        ctx = self.context(driver, tmp_path)
        self.write_lines(driver, ctx, [("stdout", b"one\ntw", T0), ("stdout", b"o\nthr", T0 + 1),
                                       ("stdout", b"ee", T0 + 2)])

        async def body(d: LogDriver) -> None:
            got = [e.data for e in await self.collect(d, ctx)]
            assert got == [b"one\n", b"two\n", b"three"]
        drive(driver, body)

    def test_tail(self, driver: LogDriver, tmp_path: Path) -> None:
        self.readable(driver)
        ctx = self.context(driver, tmp_path)
        self.write_lines(driver, ctx, [("stdout", f"{i}\n".encode(), T0 + i) for i in range(10)])

        async def body(d: LogDriver) -> None:
            assert [e.data for e in await self.collect(d, ctx, tail=3)] == [b"7\n", b"8\n", b"9\n"]
            assert await self.collect(d, ctx, tail=0) == []
            assert len(await self.collect(d, ctx, tail=100)) == 10
        drive(driver, body)

    def test_since_and_until(self, driver: LogDriver, tmp_path: Path) -> None:
        self.readable(driver)
        ctx = self.context(driver, tmp_path)
        self.write_lines(driver, ctx, [("stdout", f"{i}\n".encode(), T0 + i * SECOND)
                                       for i in range(5)])

        async def body(d: LogDriver) -> None:
            since = await self.collect(d, ctx, since_ns=T0 + 3 * SECOND)
            assert [e.data for e in since] == [b"3\n", b"4\n"]
            until = await self.collect(d, ctx, until_ns=T0 + SECOND)
            assert [e.data for e in until] == [b"0\n", b"1\n"]
        drive(driver, body)

    def test_follow_sees_new_lines_and_ends_when_stopped(self, driver: LogDriver,
                                                         tmp_path: Path) -> None:
        self.readable(driver)
        ctx = self.context(driver, tmp_path)
        w = self.writer(driver, ctx)
        w.write("stdout", b"before\n", T0)
        done = False

        async def body(d: LogDriver) -> None:
            nonlocal done
            got: list[bytes] = []

            async def follow() -> None:
                async for e in d.read(ctx, follow=True, stopped=lambda: done):
                    got.append(e.data)
            task = asyncio.create_task(follow())
            for _ in range(200):  # what was there before comes first
                if got:
                    break
                await asyncio.sleep(0.01)
            for i in range(5):
                w.write("stdout", f"live {i}\n".encode(), T0 + 1 + i)
                await asyncio.sleep(0.02)
            w.close()
            done = True
            await asyncio.wait_for(task, 10)
            assert got == [b"before\n"] + [f"live {i}\n".encode() for i in range(5)]
        drive(driver, body)

    def test_remove_forgets_the_log(self, driver: LogDriver, tmp_path: Path) -> None:
        self.readable(driver)
        ctx = self.context(driver, tmp_path)
        self.write_lines(driver, ctx, [("stdout", b"x\n", T0)])

        async def body(d: LogDriver) -> None:
            assert len(await self.collect(d, ctx)) == 1
            await d.remove(ctx)
            assert await self.collect(d, ctx) == []
        drive(driver, body)

    def test_containers_do_not_see_each_others_lines(self, driver: LogDriver,
                                                     tmp_path: Path) -> None:
        self.readable(driver)
        a = self.context(driver, tmp_path, "a" * 64)
        b = self.context(driver, tmp_path, "b" * 64)
        self.write_lines(driver, a, [("stdout", b"for a\n", T0)])
        self.write_lines(driver, b, [("stdout", b"for b\n", T0)])

        async def body(d: LogDriver) -> None:
            assert [e.data for e in await self.collect(d, a)] == [b"for a\n"]
            assert [e.data for e in await self.collect(d, b)] == [b"for b\n"]
        drive(driver, body)
