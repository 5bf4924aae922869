"""The event bus behind ``/events``: a bounded history and live subscribers."""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Any


class Events:
    def __init__(self, history: int = 1024) -> None:
        self.history: collections.deque[dict] = collections.deque(maxlen=history)
        self.subscribers: set[asyncio.Queue] = set()

    def emit(self, type_: str, action: str, actor_id: str, attributes: dict[str, Any] | None = None,
             scope: str = "local") -> dict:
        ns = time.time_ns()
        attrs = {k: str(v) for k, v in (attributes or {}).items()}
        ev = {
            "Type": type_, "Action": action,
            "Actor": {"ID": actor_id, "Attributes": attrs},
            "scope": scope, "time": ns // 1_000_000_000, "timeNano": ns,
        }
        if type_ == "container":  # the old fields docker CLI still reads
            ev.update({"status": action, "id": actor_id, "from": attrs.get("image", "")})
        self.history.append(ev)
        for q in list(self.subscribers):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:  # a stuck reader loses events, never blocks us
                pass
        return ev

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=10000)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)
