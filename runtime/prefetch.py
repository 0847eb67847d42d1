"""Prefetching: a data source runs on a background thread, filling a bounded queue.

``Prefetcher(source, depth, name)`` calls ``source.next_batch()`` on a daemon thread,
at most ``depth`` batches ahead of the consumer; ``get()`` hands them out in order. The
thread starts at the first ``get()`` (or ``start()``), so what is done to the source
between building a net and its first forward (arrays, seed, a restored position) needs
no restart.

Errors: an exception in the source is re-raised by ``get()`` in the calling thread as
:class:`DataSourceError` naming the layer (the original exception is its ``__cause__``,
with its traceback); it is raised again by every later ``get()`` until the source is
changed through ``paused()``.

Position: when the source has ``state()``, the prefetch thread records the state after
each batch, and ``state()`` here is the position after the last batch *consumed* (not
the ones queued), so a snapshot resumes with the batch that would have come next.
``set_state()`` and ``paused()`` stop the thread, drop the queued batches and rewind the
source to that position before anything else happens to it.

Constant tops: a source may declare tops whose values never change
(``source.constant_tops() -> {index: array}``, Caffe's DummyData constant fillers).
``constant_tops()`` here returns them (for the consumer to write once, when it sets
up), and ``get(skip_constant=True)`` hands out ``None`` in their place, so values the
consumer's user wrote there since are left alone.

``close()`` stops the thread (and closes the source); nothing is left running.
"""
from __future__ import annotations

import contextlib
import copy
import queue
import threading

from .errors import SymnetError

_POLL = 0.05


class DataSourceError(SymnetError, RuntimeError):
    """A data source failed on the prefetch thread; raised in the main thread."""


def _produce(source, out, stop, record_state):
    """The prefetch thread: holds the source, the queue and the stop event, never the
    Prefetcher (so a dropped Prefetcher is collected and its finaliser stops this)."""
    while not stop.is_set():
        try:
            batch = source.next_batch()
            item = (True, batch, source.state() if record_state else None)
        except BaseException as e:     # handed to the consumer, not lost
            item = (False, e, None)
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL)
                break
            except queue.Full:
                continue
        if not item[0]:
            return


class Prefetcher:
    """Runs ``source.next_batch()`` on a thread, ``depth`` batches ahead."""

    def __init__(self, source, depth=4, name="data", start=False, stop_timeout=10.0):
        self.source, self.name = source, name
        self.depth = max(1, int(depth))
        self.stop_timeout = float(stop_timeout)
        self._state_fn = getattr(source, "state", None)
        if not callable(self._state_fn):
            self._state_fn = None
        constant = getattr(source, "constant_tops", None)
        self._constant = dict(constant()) if callable(constant) else {}
        self._thread = self._queue = self._stop = None
        self._error = None
        self._closed = False
        self.consumed = 0                       # batches handed out by get()
        self._consumed_state = self._source_state()
        if start:
            self.start()

    # ------------------------------------------------------------------ thread
    def _source_state(self):
        return self._state_fn() if self._state_fn is not None else None

    def start(self):
        """Start the prefetch thread (``get()`` does it when needed)."""
        if self._closed:
            raise DataSourceError(f"data layer {self.name}: the prefetcher is closed")
        if self._thread is not None:
            return
        # nothing is queued: the source's position is the consumed one (it may have been
        # changed directly, e.g. reseeded, since the last batch)
        self._consumed_state = self._source_state()
        self._queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_produce, args=(self.source, self._queue, self._stop,
                                   self._state_fn is not None),
            name=f"symnet-prefetch {self.name}", daemon=True)
        self._thread.start()

    def _halt(self, timeout):
        """Stop the thread and drop the queue; False if it did not stop in time."""
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        self._stop.set()
        thread.join(timeout)
        self._queue = None
        return not thread.is_alive()

    # ------------------------------------------------------------------ consumer
    def _raise(self, error):
        raise DataSourceError(f"data layer {self.name}: {type(error).__name__}: "
                              f"{error}") from error

    def constant_tops(self):
        """``{top index: array}`` of the source's constant tops (fresh copies): write
        them once; ``get(skip_constant=True)`` leaves them out."""
        return {i: a.copy() for i, a in self._constant.items()}

    def get(self, skip_constant=False):
        """The next batch (a list with one array per top), in the source's order; with
        ``skip_constant``, ``None`` in place of each constant top."""
        batch = self._next()
        if skip_constant and self._constant:
            batch = [None if i in self._constant else a for i, a in enumerate(batch)]
        return batch

    def _next(self):
        if self._error is not None:
            self._raise(self._error)
        self.start()
        q, thread = self._queue, self._thread
        while True:
            try:
                ok, value, st = q.get(timeout=_POLL)
                break
            except queue.Empty:
                if not thread.is_alive() and q.empty():
                    raise DataSourceError(f"data layer {self.name}: the prefetch thread "
                                          "stopped") from None
        if not ok:
            self._error = value
            self._halt(self.stop_timeout)
            self._raise(value)
        self._consumed_state = st
        self.consumed += 1
        return value

    # ------------------------------------------------------------------ position
    def state(self):
        """The source's position after the last batch consumed (None if the source keeps
        no position)."""
        return copy.deepcopy(self._consumed_state)

    @contextlib.contextmanager
    def paused(self):
        """Stop prefetching, drop the queued batches, rewind the source to the position
        after the last consumed batch, and give the source to the block::

            with prefetcher.paused() as source:
                source.set_arrays(data, labels)

        Prefetching resumes at the next ``get()``, from the source's position then.
        (A source without ``state``/``set_state`` loses the batches that were queued.)"""
        if self._closed:
            raise DataSourceError(f"data layer {self.name}: the prefetcher is closed")
        running = self._thread is not None
        if not self._halt(self.stop_timeout):
            raise DataSourceError(f"data layer {self.name}: the source did not return from "
                                  f"next_batch() within {self.stop_timeout} s; cannot pause")
        set_state = getattr(self.source, "set_state", None)
        if running and self._consumed_state is not None and callable(set_state):
            set_state(copy.deepcopy(self._consumed_state))
        self._error = None
        try:
            yield self.source
        finally:
            self._consumed_state = self._source_state()

    def set_state(self, state):
        """Resume the source from ``state`` (from :meth:`state`, e.g. of a snapshot)."""
        if not callable(getattr(self.source, "set_state", None)):
            raise DataSourceError(f"data layer {self.name}: the source cannot restore a "
                                  "position (no set_state)")
        with self.paused() as source:
            source.set_state(copy.deepcopy(state))

    # ------------------------------------------------------------------ shutdown
    def close(self):
        """Stop the thread and close the source. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        stopped = self._halt(self.stop_timeout)
        close = getattr(self.source, "close", None)
        if stopped and callable(close):     # a source still running is not closed under it
            close()

    def __del__(self):
        try:
            if self._stop is not None:
                self._stop.set()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def alive(self):
        return self._thread is not None and self._thread.is_alive()
