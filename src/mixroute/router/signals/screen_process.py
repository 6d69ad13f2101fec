"""The screening signals (PII detection, the jailbreak sentence scan) in a child process,
beside the embedding signals of the router process.

Both halves are mostly Python holding the GIL (regexes, the name lists and spaCy; the
tokeniser, n-gram look-ups and heads): on two threads of one process they take turns. In
a child process the screening half has a core of its own, so a request's signals take
about the longer of the two halves instead of their sum (bench/results/router.md,
`mixroute router --screen-process`).

The child is a fresh interpreter (`python -c ... serve_fd(N)`: nothing of the router's
threads or sockets, and unlike multiprocessing's `spawn` it does not run the parent's
main script again). It talks over a socket pair, builds its models
with `factory` ("module:function", returning an object with the methods of
`ScreenSignals`) and answers one job at a time, in order. A job it has not begun can be
taken back (`withdraw`): the router's worker does so with the sentence scan when it has
finished its own share first, rather than wait for the child's turn. The router process keeps its
own models too: while the child is not up (still loading, or died) a request is screened
there, so a crash of the child loses no request, and a new child is started in the
background. A child that answers nothing for STALL_S while jobs wait is killed and
handled the same way, so a stuck child holds no request for ever.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from mixroute.errors import ConfigError
from mixroute.logs import kv

log = logging.getLogger("mixroute.router")

START_TIMEOUT_S = 180.0
# A child that died is replaced at most this often (a child that cannot start, or dies on
# every job, would otherwise be respawned in a loop while the router screens in-process).
RESPAWN_INTERVAL_S = 10.0
# A child with jobs waiting that answers nothing for this long is stuck (a job costs well
# under a second: a PII job reads at most 8,000 characters, a scan at most 8,000 per
# message) and is killed; its jobs are then done in the router process, as when it dies.
# Checked this often.
STALL_S = 30.0
STALL_CHECK_S = 1.0

DEFAULT_FACTORY = "mixroute.router.signals.screen_process:default_screen_signals"
_CHILD = "import sys; from mixroute.router.signals.screen_process import serve_fd; serve_fd(int(sys.argv[1]))"
METHODS = ("pii", "scan")


class ScreenSignals:
    """What the child runs: PII detection and the jailbreak sentence scan, as the router's
    own `PiiDetector` and `JailbreakClassifier` would."""

    def __init__(self, pii: Any, jailbreak: Any = None) -> None:
        self.detector = pii
        self.jailbreak = jailbreak

    def pii(self, texts: list[str], types: Collection[str] | None) -> list[list[Any]]:
        return detect_texts(self.detector, texts, types)

    def scan(self, texts: list[str]) -> list[float]:
        if self.jailbreak is None:
            raise RuntimeError("this child has no jailbreak classifier")
        return [float(s) for s in self.jailbreak.sentence_scores(texts)]


def detect_texts(detector: Any, texts: list[str], types: Collection[str] | None) -> list[list[Any]]:
    """The entities of each text: with a budget shared by the batch where the detector has
    `detect_many` (`PiiDetector`; test fakes have `detect` only)."""
    many = getattr(detector, "detect_many", None)
    if many is not None:
        return [list(found) for found in (many(texts) if types is None else many(texts, types))]
    return [list(detector.detect(text) if types is None else detector.detect(text, types)) for text in texts]


def default_screen_signals() -> ScreenSignals:
    """The packaged PII detector and jailbreak classifier, loaded and warmed (the child's
    default factory)."""
    from mixroute.router.classifiers.embedder import Embedder
    from mixroute.router.classifiers.featurizer import Featurizer
    from mixroute.router.classifiers.jailbreak import JailbreakClassifier
    from mixroute.router.classifiers.pii import PiiDetector

    detector = PiiDetector()
    detector.load()
    featurizer = Featurizer()
    jailbreak = JailbreakClassifier(featurizer=featurizer, embedder=Embedder(featurizer=featurizer))
    signals = ScreenSignals(detector, jailbreak)
    signals.pii(["warm up: John Smith, 123-45-6789, Paris"], None)
    signals.scan(["Warm up. Two sentences."])
    return signals


def child_environment() -> dict[str, str]:
    """The router's environment, with the HF tokenizer's thread pool off: each process
    should keep to its own core (a pool per process only makes the two compete; scratch
    timing at 500 tokens: p50 3-18% lower in four alternating pairs of runs)."""
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


class ScreenProcessDown(RuntimeError):
    """The child died (or was closed) before answering: screen in-process instead."""


class ScreenJobWithdrawn(RuntimeError):
    """The parent took the job back before the child began it (`ScreenProcess.withdraw`)."""


WITHDRAWN = "withdrawn"


class _Inbox:
    """The child's queue of jobs: a reader thread fills it from the socket, so a withdrawal
    is seen (and answered) while the job before it still runs."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.jobs: deque[tuple[int, str, tuple[Any, ...]]] = deque()
        self.ended = False
        self.changed = threading.Condition()
        self.send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self.send_lock:
            self.conn.send(message)

    def read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                message = None  # the parent is gone
            with self.changed:
                if message is None:  # or the parent's close()
                    self.ended = True
                    self.changed.notify()
                    return
                if message[0] == WITHDRAWN:
                    self._withdraw(message[1])
                else:
                    self.jobs.append(message)
                    self.changed.notify()

    def _withdraw(self, job: int) -> None:
        for queued in self.jobs:
            if queued[0] == job:
                self.jobs.remove(queued)
                with contextlib.suppress(OSError):
                    self.send((job, None, WITHDRAWN, 0.0))
                return
        # Begun or done already: its answer comes as usual.

    def next(self) -> tuple[int, str, tuple[Any, ...]] | None:
        with self.changed:
            while not self.jobs and not self.ended:
                self.changed.wait()
            return None if self.ended else self.jobs.popleft()


def _serve(conn: Connection) -> None:
    """The child's loop: (factory, sys.path) first, then (job, method, args) in and (job,
    result, error, seconds) out, until the parent sends None or is gone; (WITHDRAWN, job)
    takes a job back that has not begun."""
    # The parent stops the child (`close`, or its end of the socket closing when it dies).
    # A Ctrl-C, or `mixroute up` stopping the router's process group, must not end it first:
    # the router is still draining, and its requests in progress are screened here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    factory, path = conn.recv()
    sys.path[:0] = [p for p in path if p not in sys.path]
    try:
        module, _, name = factory.partition(":")
        signals = getattr(importlib.import_module(module), name)()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    inbox = _Inbox(conn)
    threading.Thread(target=inbox.read, name="screen-inbox", daemon=True).start()
    while (message := inbox.next()) is not None:
        job, method, args = message
        start = time.perf_counter()
        result: Any = None
        error: str | None = None
        try:
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}")
            result = getattr(signals, method)(*args)
        except Exception as exc:  # noqa: BLE001 - one bad job must not end the child
            error = f"{type(exc).__name__}: {exc}"
        try:
            inbox.send((job, result, error, time.perf_counter() - start))
        except OSError:
            return  # the parent is gone


class ScreenProcess:
    """`submit(method, *args)` -> a Future of (result, seconds the child took), or None
    while no child is up. Thread-safe."""

    def __init__(self, factory: str = DEFAULT_FACTORY, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self._factory = factory
        self._start_timeout_s = start_timeout_s
        self._lock = threading.Lock()  # the state below
        self._send_lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pending: dict[int, Future[tuple[Any, float]]] = {}
        self._jobs = itertools.count()
        self._closed = False
        self._starting = False
        self._last_start = 0.0
        self._progress = 0.0
        """When the child last answered, or was handed a job while it had none waiting."""

    @property
    def up(self) -> bool:
        return self._conn is not None

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    def start(self) -> None:
        """Start the child and wait until its models are loaded; ConfigError if it cannot."""
        with self._lock:
            if self._closed or self._conn is not None or self._starting:
                return
            self._starting = True
        try:
            self._spawn()
        finally:
            with self._lock:
                self._starting = False

    def start_soon(self) -> None:
        """Start the child in the background if it was never started: a router whose config
        needed no screening at start (PII and the sentence scan off) starts it when a
        reload turns one on. After that, a child that dies is replaced (`_read`)."""
        with self._lock:
            if self._closed or self._starting or self._last_start:
                return
            self._last_start = time.monotonic()  # one start only, however many requests ask
        threading.Thread(target=self._start_logged, name="router-screen-start", daemon=True).start()

    def _start_logged(self) -> None:
        try:
            self.start()
        except ConfigError as exc:
            log.error("%s; screening stays in the router process", exc)

    def _spawn(self) -> None:
        self._last_start = time.monotonic()
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=child_environment(),
            )
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        conn.send((self._factory, list(sys.path)))
        if not conn.poll(self._start_timeout_s):
            process.kill()
            process.wait()
            conn.close()
            raise ConfigError(f"the screening child process did not start within {self._start_timeout_s:.0f} s")
        try:
            status, detail = conn.recv()
        except (EOFError, OSError):
            status, detail = "failed", f"it exited with code {process.wait(5)}"
        if status != "ready":
            conn.close()
            process.wait(5)
            raise ConfigError(f"the screening child process could not start: {detail}")
        with self._lock:
            if self._closed:
                conn.send(None)
                conn.close()
                return
            self._conn, self._process = conn, process
        threading.Thread(target=self._read, args=(conn, process), name="router-screen-reader", daemon=True).start()
        log.info("PII detection and the sentence scan run in a child process %s", kv(pid=process.pid))

    def submit(self, method: str, *args: Any) -> Future[tuple[Any, float]] | None:
        with self._lock:
            conn = self._conn
            if conn is None:
                return None
            job = next(self._jobs)
            future: Future[tuple[Any, float]] = Future()
            if not self._pending:
                self._progress = time.monotonic()
            self._pending[job] = future
        try:
            with self._send_lock:
                conn.send((job, method, args))
        except (OSError, ValueError):
            with self._lock:
                self._pending.pop(job, None)
            return None  # the reader sees the pipe close and replaces the child
        return future

    def withdraw(self, future: Future[tuple[Any, float]]) -> None:
        """Take a job back if the child has not begun it: its future then fails with
        `ScreenJobWithdrawn` (do the work here instead); otherwise it resolves as usual."""
        with self._lock:
            conn = self._conn
            job = next((j for j, f in self._pending.items() if f is future), None)
        if conn is None or job is None:
            return
        with contextlib.suppress(OSError, ValueError), self._send_lock:
            conn.send((WITHDRAWN, job))

    def _read(self, conn: Connection, process: subprocess.Popen[bytes]) -> None:
        """Resolves the futures from the child's replies; when the child is gone, fails the
        ones still waiting (their requests are screened in-process) and starts another."""
        while True:
            try:
                if not conn.poll(STALL_CHECK_S):
                    self._kill_if_stuck(process)
                    continue
                job, result, error, seconds = conn.recv()
            except (EOFError, OSError, ValueError):
                break
            with self._lock:
                self._progress = time.monotonic()
                future = self._pending.pop(job, None)
            if future is None:
                continue
            if error is None:
                future.set_result((result, seconds))
            elif error == WITHDRAWN:
                future.set_exception(ScreenJobWithdrawn("withdrawn before the child began it"))
            else:
                future.set_exception(RuntimeError(f"screening child process: {error}"))
        with self._lock:
            if self._conn is conn:
                self._conn = None
            if self._process is process:
                self._process = None
            waiting, self._pending = self._pending, {}
            closed = self._closed
        for future in waiting.values():
            future.set_exception(ScreenProcessDown("the screening child process is gone"))
        conn.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if closed:
            return
        log.error("the screening child process died; screening in the router process until another is up %s",
                  kv(exitcode=process.returncode))
        threading.Thread(target=self._respawn, name="router-screen-respawn", daemon=True).start()

    def _kill_if_stuck(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            waiting = len(self._pending)
            silent = time.monotonic() - self._progress
        if waiting and silent > STALL_S:
            log.error("the screening child process answered nothing for %.0f s with jobs waiting; "
                      "killing it %s", silent, kv(pid=process.pid, jobs=waiting))
            process.kill()  # the reader then sees the socket close, as when it dies

    def _respawn(self) -> None:
        time.sleep(max(0.0, self._last_start + RESPAWN_INTERVAL_S - time.monotonic()))
        self._start_logged()

    def close(self) -> None:
        """Stop the child (it ends after the job in hand); the reader thread then fails
        whatever is still waiting and closes the pipe."""
        with self._lock:
            self._closed = True
            conn, process = self._conn, self._process
            self._conn = None
        if conn is not None:
            try:
                with self._send_lock:
                    conn.send(None)
            except (OSError, ValueError):
                pass
        if process is not None:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve_fd(fd: int) -> None:
    """The child's entry: serve on the socket inherited as file descriptor `fd`."""
    _serve(Connection(fd))
