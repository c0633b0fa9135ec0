"""The processes that parse phone numbers for large imports: one worker per core, forked from a
forkserver that preloaded only `whatsched.phones` (no pandas, no app state), created on first need,
kept warm between imports and shut down after a quiet spell. Workers end by themselves when the
API process is gone, however it ended.

This module imports nothing heavy: the workers import it to find `parse_chunk`.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import psutil

from whatsched.phones import normalize

PhoneResult = tuple[str | None, str | None]  # (e164, reason)
T = TypeVar("T")
IDLE_SHUTDOWN_S = 300.0
WORKER_NICENESS = 5


def parse_chunk(values: list[str], default_country: str | None) -> tuple[list[PhoneResult], float]:
    """In a worker (or a thread): `normalize` each value; also the CPU seconds it took."""
    started = time.thread_time()
    out: list[PhoneResult] = []
    for value in values:
        parsed = normalize(value, default_country)
        out.append((parsed.e164, parsed.reason))
    return out, time.thread_time() - started


def _ready() -> int:
    return os.getpid()


def _start_worker(pid: int, started: float) -> None:
    """In each worker: yield the CPU to Postgres and the API (the writes, not the parsing, decide
    how long an import takes), and exit when the API process is gone, however it ended (SIGKILL
    included; a dead process its parent has not reaped yet counts as gone). A worker would
    otherwise wait forever on its task queue, and keep the forkserver alive with it."""
    os.nice(WORKER_NICENESS)

    def parent_alive() -> bool:
        try:
            parent = psutil.Process(pid)
            return bool(parent.create_time() == started and parent.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True

    def watch() -> None:
        while parent_alive():
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="whatsched-parent-watch", daemon=True).start()


def workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class PhonePool:
    def __init__(self) -> None:
        self.executor: ProcessPoolExecutor | None = None
        self.last_used = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._exit_hook = False

    def get(self) -> ProcessPoolExecutor:
        if self.executor is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["whatsched.phones", "whatsched.imports.phone_pool"])
            self.executor = ProcessPoolExecutor(
                max_workers=workers(),
                mp_context=context,
                initializer=_start_worker,
                initargs=(os.getpid(), psutil.Process().create_time()),
            )
            if not self._exit_hook:
                atexit.register(self.shutdown, True)  # joins the workers before the interpreter goes
                self._exit_hook = True
        self.last_used = time.monotonic()
        return self.executor

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """`fn(*args)` in a worker. A pool that broke while idle (a worker killed, out of memory)
        is replaced by a fresh one rather than failing the import that finds it."""
        try:
            return self.get().submit(fn, *args)
        except BrokenProcessPool:
            self.shutdown()
            return self.get().submit(fn, *args)

    def warm(self) -> list[Future[int]]:
        """Start the workers now, so their start-up overlaps reading the file."""
        executor = self.get()
        return [executor.submit(_ready) for _ in range(workers())]

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        self.last_used = time.monotonic()
        if self._timer is None:
            self._timer = loop.call_later(IDLE_SHUTDOWN_S, self._maybe_shutdown, loop)

    def _maybe_shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        idle = time.monotonic() - self.last_used
        if idle < IDLE_SHUTDOWN_S:
            self._timer = loop.call_later(IDLE_SHUTDOWN_S - idle, self._maybe_shutdown, loop)
        else:
            self.shutdown()

    def shutdown(self, wait: bool = False) -> None:
        executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)


POOL = PhonePool()


def warm() -> None:
    """Start the workers in a thread: the forkserver loads phonenumbers before it forks them
    (~0.1-0.2 s) and the event loop should not wait for that; it overlaps reading the file."""
    if workers() > 1:
        POOL.get()  # the executor is made here, on the caller's thread, so there is only ever one
        threading.Thread(target=_warm_quietly, name="whatsched-phone-pool-warm", daemon=True).start()


def _warm_quietly() -> None:
    try:
        POOL.warm()
    except RuntimeError:  # shut down or broken meanwhile: the import starts or parses it itself
        pass
