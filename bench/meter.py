"""Where a run's time goes: wraps named functions in place and adds up their calls and seconds by category.

Only the outermost metered call on a thread counts, so a metadata call that queries the instance is counted once,
as a metadata call. Used by the benches only."""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Meter:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()
        self.events: Counter = Counter()  # Dagster event type -> events stored
        self.by_name: dict[str, Counter] = defaultdict(Counter)  # category -> function name -> seconds
        self._depth = threading.local()
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: object, name: str, category: str) -> None:
        original = getattr(owner, name)
        meter = self

        @functools.wraps(original)
        def metered(*args, **kwargs):
            depth = getattr(meter._depth, "value", 0)
            meter._depth.value = depth + 1
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                meter._depth.value = depth
                if depth == 0:
                    spent = time.perf_counter() - started
                    meter.seconds[category] += spent
                    meter.by_name[category][name] += spent
                    meter.calls[category] += 1

        had_own = name in getattr(owner, "__dict__", {})
        setattr(owner, name, metered)
        self._undo.append(lambda: setattr(owner, name, original) if had_own else delattr(owner, name))

    def count_events(self, storage: object) -> None:
        """Count what the event log storage is asked to store, by event type, and time it as `event storage` (an
        event stored by a batch counts once, not again when the batch stores it)."""
        for name in ("store_event", "store_event_batch"):
            original = getattr(storage, name)

            def counting(events, _original=original, _single=name == "store_event"):
                if getattr(self._depth, "value", 0) <= 1:  # 1: inside our own timing wrapper only
                    for event in [events] if _single else events:
                        kind = event.dagster_event.event_type_value if event.dagster_event else "log message"
                        self.events[kind] += 1
                return _original(events)

            setattr(storage, name, counting)
            self.wrap(storage, name, "event storage")

    @contextmanager
    def installed(self) -> Iterator[Meter]:
        try:
            yield self
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()
