"""Prefetching: a data source runs on a background thread, filling a bounded queue."""
from __future__ import annotations

import queue
import threading


class DataSourceError(RuntimeError):
    """A data source failed on the prefetch thread; raised in the main thread."""


class Prefetcher:
    """Runs ``source.next_batch()`` on a thread, ``depth`` batches ahead."""

    def __init__(self, source, depth=4, name="data"):
        self.source, self.name = source, name
        self._queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"symnet-prefetch {name}",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                item = ("ok", self.source.next_batch())
            except BaseException as e:      # handed to the main thread, not lost
                item = ("error", e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[0] == "error":
                return

    def get(self):
        while True:
            try:
                kind, value = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise DataSourceError(f"data layer {self.name}: the prefetch thread "
                                          "stopped") from None
        if kind == "error":
            raise DataSourceError(f"data layer {self.name}: {value}") from value
        return value

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def alive(self):
        return self._thread.is_alive()
