"""The spool: tracking writes kept on local disk until the store has accepted them.

A writer appends each batch of writes here before it sends any of them (the sender syncs the
file to disk before it sends what was appended), sends them in order, and marks each accepted
one delivered; what a store outage, or a killed driver, left
undelivered is sent again by the next writer of the same sweep (`tune --resume`) or by
`python -m pipeline sync`. Sending a write twice is harmless: the writes are idempotent (see
`tracking.trials.TrialWriter`).

Layout: `<spool folder>/<store>/<key>.jsonl`, one file per sweep (`key`: its parent run's id),
under a folder per tracking store (`store_folder`) whose `store` file names the store. A file's
first line is its header (what a writer needs besides the writes); every later line one write,
numbered from 1 (`seq`); `<key>.delivered` holds the number of the last write the store
accepted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.tracking.store import MAX_BACKOFF_S, unreachable

log = logging.getLogger(__name__)

Write = dict[str, Any]  # one write: "op" and its fields, JSON-serializable


def store_name(tracking_uri: str) -> str:
    """The store's URI as said to a person: without a password."""
    parts = urlsplit(tracking_uri)
    if parts.password is None:
        return tracking_uri
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    netloc = f"{user}{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def store_folder(spool_dir: Path, tracking_uri: str) -> Path:
    """Where the spools of the store at `tracking_uri` are kept."""
    return spool_dir / hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]


def spool_file(spool_dir: Path, tracking_uri: str, key: str) -> Path:
    """The spool of sweep `key` (its parent run's id) at the store."""
    return store_folder(spool_dir, tracking_uri) / f"{key}.jsonl"


class Spool:
    """One sweep's writes to one store, kept until the store has accepted them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.delivered_path = path.with_suffix(".delivered")
        self._fd: int | None = None  # opened for appending on first need
        self._seq: int | None = None  # the last write numbered here, read on first need

    @classmethod
    def open(cls, spool_dir: Path, tracking_uri: str, key: str, header: dict[str, Any]) -> Spool:
        """The spool of sweep `key` at the store, made with `header` if it has none yet."""
        spool = cls(spool_file(spool_dir, tracking_uri, key))
        spool.path.parent.mkdir(parents=True, exist_ok=True)
        (spool.path.parent / "store").write_text(store_name(tracking_uri) + "\n")
        if not spool.path.exists() or spool.path.stat().st_size == 0:
            spool._append_lines([header])
            spool.sync()
        else:
            spool._cut_torn_tail()
        return spool

    def header(self) -> dict[str, Any]:
        with self.path.open() as lines:
            first: dict[str, Any] = json.loads(lines.readline())
        return first

    def last_seq(self) -> int:
        """The number of the last write appended (0: none)."""
        return max((write["seq"] for write in self._writes()), default=0)

    def keep(self, writes: list[Write]) -> None:
        """Number `writes` (their `seq`, after the last one kept) and keep them in the file:
        a killed process loses none of them; `sync` makes them survive the machine too, before
        any is sent."""
        if not writes:
            return
        if self._seq is None:
            self._seq = self.last_seq()
        for write in writes:
            self._seq += 1
            write["seq"] = self._seq
        self._append_lines(writes)

    def sync(self) -> None:
        """Put what was kept on disk (fsync), by this process or another: off the caller of
        `keep`, which is the driver's event loop."""
        if self._fd is not None:
            os.fsync(self._fd)
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def follow(self, after: int) -> Callable[[], list[Write]]:
        """A reader of the writes kept after write `after`, each call returning those kept since
        the last: for a sender in another process than the one that keeps them."""
        lines = self.path.open("rb")
        lines.readline()  # the header
        partial = b""

        def kept_since() -> list[Write]:
            nonlocal partial
            text = partial + lines.read()
            complete = text.rfind(b"\n") + 1
            partial = text[complete:]  # a line still being appended
            writes = [json.loads(line) for line in text[:complete].splitlines()]
            return [write for write in writes if write["seq"] > after]

        return kept_since

    def pending(self) -> list[Write]:
        """The writes the store has not accepted yet, in order."""
        done = self.delivered()
        return [write for write in self._writes() if write["seq"] > done]

    def delivered(self) -> int:
        try:
            return int(self.delivered_path.read_text())
        except (OSError, ValueError):
            return 0

    def mark_delivered(self, seq: int) -> None:
        """Write `seq` and those before it were accepted (replaced whole: a kill leaves the old
        mark or the new one, and at worst one write is sent again)."""
        partial = self.delivered_path.with_suffix(".partial")
        partial.write_text(str(seq))
        partial.replace(self.delivered_path)

    def close(self) -> None:
        """Stop appending (the file stays)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Forget the spool: everything in it was delivered."""
        self.close()
        self.delivered_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)

    def _append_lines(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = text.encode()
        while data:  # one write call, unless the kernel takes less
            data = data[os.write(self._fd, data) :]

    def _cut_torn_tail(self) -> None:
        """Drop a last line a kill cut off mid-append (never sent), so that writes appended
        after it are read."""
        text = self.path.read_bytes()
        if text and not text.endswith(b"\n"):
            with self.path.open("r+b") as out:
                out.truncate(text.rfind(b"\n") + 1)

    def _writes(self) -> Iterator[Write]:
        try:
            with self.path.open() as lines:
                lines.readline()  # the header
                for line in lines:
                    try:
                        write = json.loads(line)
                    except ValueError:  # the last line, cut off by a kill mid-append: never sent
                        return
                    yield write
        except FileNotFoundError:
            return


MARK_EVERY_S = 1.0  # how often a sender that is behind marks what was delivered
CLOSING_BACKOFF_S = 5.0  # the same once the command waits for the store at its end


# The name of a sender's thread (benchmarks/overhead.py tells its MLflow calls from the driver's).
SENDER_THREAD = "tracking-sender"


class Sender:
    """Sends a spool's writes with `deliver`, in order, on a thread of its own.

    A write that fails for want of the store (`store.unreachable`) is tried again, with backoff,
    until it is accepted: the sweep never waits for the store. A write the store refuses for
    what it asks is not retried: its error joins `errors`. One line says when the store went
    away, and one when it came back.
    """

    def __init__(self, spool: Spool, deliver: Callable[[Write], None], errors: list[str]) -> None:
        self.spool = spool
        self.deliver = deliver
        self.errors = errors
        self.busy_seconds = 0.0  # time spent sending
        self.cpu_seconds = 0.0  # of it, the thread's own CPU (the rest: waiting for the store,
        # or for the interpreter lock it shares with the driver's loop)
        self.outage_since: float | None = None  # when the write that found the store away began
        self._backlog: deque[Write] = deque(spool.pending())  # what a killed driver left first
        # The last write queued so far: those the spool keeps after it are still to queue.
        self.queued_through = self._backlog[-1]["seq"] if self._backlog else spool.delivered()
        self._synced = 0  # the last write known to be on disk
        self._accepted = 0  # the last write the store accepted (marked at the latest at the end)
        self._changed = threading.Condition()
        self._closing = False
        self._wake = threading.Event()  # cuts a wait between tries short (closing, giving up)
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name=SENDER_THREAD, daemon=True)
        self._thread.start()

    def send(self, writes: list[Write]) -> None:
        """Keep `writes` in the spool, and queue them (from one thread: the driver's)."""
        self.spool.keep(writes)  # outside the lock: the sender never waits on this file
        self.queue(writes)

    def queue(self, writes: list[Write]) -> None:
        """Queue `writes` the spool keeps already."""
        with self._changed:
            self._backlog.extend(writes)
            self._changed.notify()

    def finish(self, outage_timeout: float) -> int:
        """Send everything queued, waiting for a store that is away up to `outage_timeout`
        seconds (from now, or from when it went away if later); the number of writes left
        undelivered in the spool (none: the spool is removed)."""
        closing = time.time()
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._wake.set()  # a store away may be back: try now, then more often
        while self._thread.is_alive():
            self._thread.join(0.5)
            away = self.outage_since
            if away is not None and time.time() - max(away, closing) > outage_timeout:
                self._abandon.set()
                self._wake.set()
                self._thread.join()
        left = len(self._backlog)
        self.spool.close()
        if left == 0:
            self.spool.remove()
            return 0
        if self._accepted > self.spool.delivered():
            self.spool.mark_delivered(self._accepted)
        if self.outage_since is not None:
            log.warning(
                "tracking store still unreachable after %.0f s: %d writes kept in %s",
                time.time() - self.outage_since,
                left,
                self.spool.path,
            )
        return left

    def _run(self) -> None:
        marked = time.monotonic()
        while True:
            with self._changed:
                while not self._backlog and not self._closing:
                    self._changed.wait()
                if not self._backlog:
                    return
                write, newest = self._backlog[0], self._backlog[-1]["seq"]
            if write["seq"] > self._synced:  # on disk before it is sent: queued ones with it
                self.spool.sync()
                self._synced = newest
            if not self._deliver(write):
                return
            with self._changed:
                self._backlog.popleft()
                caught_up = not self._backlog
            self._accepted = write["seq"]
            # Marked once the queue is empty, or every MARK_EVERY_S (a kill makes the writes
            # since the last mark be sent again, which changes nothing): fewer file writes on
            # a thread that shares the driver's interpreter lock.
            if caught_up or time.monotonic() - marked > MARK_EVERY_S:
                self.spool.mark_delivered(write["seq"])
                marked = time.monotonic()

    def _count(self, started: float, cpu: float) -> None:
        """Book a call begun at `started` (perf_counter) and `cpu` (this thread's CPU time)."""
        took = time.perf_counter() - started
        self.busy_seconds += took
        # The two clocks are read microseconds apart: a call that only computed may read a
        # little more CPU than wall time.
        self.cpu_seconds += min(time.thread_time() - cpu, took)

    def _deliver(self, write: Write) -> bool:
        """Send `write` until the store accepts or refuses it; False if given up meanwhile."""
        attempt = 0
        while True:
            began, started, cpu = time.time(), time.perf_counter(), time.thread_time()
            try:
                self.deliver(write)
            except Exception as error:
                self._count(started, cpu)
                if not unreachable(error):
                    self.errors.append(f"{type(error).__name__}: {error}")
                    log.warning("MLflow write failed: %s", error)
                    break
                if self.outage_since is None:
                    self.outage_since = began
                    log.warning(
                        "tracking store unreachable since %s, %d writes queued",
                        datetime.fromtimestamp(began).strftime("%H:%M:%S"),
                        len(self._backlog),
                    )
                longest = CLOSING_BACKOFF_S if self._closing else MAX_BACKOFF_S
                self._wake.wait(min(2.0**attempt, longest))
                self._wake.clear()
                if self._abandon.is_set():
                    return False
                attempt += 1
                continue
            self._count(started, cpu)
            break
        if self.outage_since is not None:
            log.warning(
                "tracking store back after %.0f s; sending the %d queued writes",
                time.time() - self.outage_since,
                len(self._backlog),
            )
            self.outage_since = None
        return True


def spools_of(spool_dir: Path, tracking_uri: str) -> list[Spool]:
    """The spools kept for the store at `tracking_uri`, oldest first."""
    folder = store_folder(spool_dir, tracking_uri)
    found = sorted(folder.glob("*.jsonl"), key=lambda path: path.stat().st_mtime)
    return [Spool(path) for path in found]


class SenderProcess:
    """A `Sender` in a process of its own (`command`, which runs `serve_sender`), fed through
    the spool: it reads back the writes the driver keeps, so that the store's calls, and their
    CPU, are off the interpreter lock of the driver's loop. Down a pipe the driver tells it the
    number of each batch's last write, and when to finish; up another it says its log lines
    (said here again) and, once finished, what it did.

    It runs in a session of its own, so that the signals that stop a sweep gracefully (Ctrl-C,
    SIGTERM to the driver's process group) leave it sending until the driver tells it to
    finish; and it stops when its driver is gone: what it has not sent stays in the spool, as
    it does when a sending thread dies with its driver."""

    def __init__(
        self, spool: Spool, command: list[str], setup: dict[str, Any], errors: list[str]
    ) -> None:
        self.spool = spool
        self.errors = errors
        self.busy_seconds = 0.0
        self.cpu_seconds = 0.0
        self._left: int | None = None  # told once it finished
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._tell({"setup": {**setup, "spool": str(spool.path)}})
        self._listener = threading.Thread(target=self._listen, name="sender-listener", daemon=True)
        self._listener.start()

    def send(self, writes: list[Write]) -> None:
        """Keep `writes` in the spool, and tell the process (from the driver's thread)."""
        self.spool.keep(writes)
        if writes:
            self._tell({"kept": writes[-1]["seq"]})

    def finish(self, outage_timeout: float) -> int:
        """`Sender.finish`, in the process: the number of writes left undelivered."""
        self._tell({"finish": outage_timeout})
        assert self._process.stdin is not None
        with contextlib.suppress(OSError):  # it is gone already
            self._process.stdin.close()
        code = self._process.wait()
        self._listener.join()
        self.spool.close()
        if self._left is None:
            self.errors.append(f"the trial writer's process ended with exit code {code}")
            return len(self.spool.pending())
        return self._left

    def _tell(self, message: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(message) + "\n")
            self._process.stdin.flush()
        except OSError:  # it is gone: `finish` says so
            pass

    def _listen(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            message = json.loads(line)
            if "log" in message:
                level, text = message["log"]
                log.log(level, "%s", text)
            elif "done" in message:
                done = message["done"]
                self.busy_seconds, self.cpu_seconds = done["busy_seconds"], done["cpu_seconds"]
                self.errors.extend(done["errors"])
                self._left = done["left"]


class SaidUp(logging.Handler):
    """Says a sender process's log records up its pipe (`SenderProcess._listen`)."""

    def __init__(self, say: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(logging.INFO)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        self.say({"log": [record.levelno, record.getMessage()]})


def serve_sender(deliverer: Callable[[dict[str, Any], Spool], Callable[[Write], None]]) -> int:
    """The process of a `SenderProcess`: a `Sender` of the spool the driver names, with the
    `deliver` that `deliverer(setup, spool)` gives, queued what the driver says it kept."""
    # The pipe up to the driver is this process's own: whatever else prints goes to stderr.
    up = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    saying = threading.Lock()

    def say(message: dict[str, Any]) -> None:
        with saying:
            up.write(json.dumps(message) + "\n")
            up.flush()

    logging.getLogger().addHandler(SaidUp(say))
    logging.getLogger("pipeline").setLevel(logging.INFO)
    setup = json.loads(sys.stdin.readline())["setup"]
    spool = Spool(Path(setup["spool"]))
    errors: list[str] = []
    sender = Sender(spool, deliverer(setup, spool), errors)
    kept_since = spool.follow(sender.queued_through)
    for line in sys.stdin:
        message = json.loads(line)
        sender.queue(kept_since())
        if "finish" in message:
            left = sender.finish(float(message["finish"]))
            figures = {"busy_seconds": sender.busy_seconds, "cpu_seconds": sender.cpu_seconds}
            say({"done": {"left": left, "errors": errors, **figures}})
            return 0
    os._exit(1)  # the driver is gone without a word: stop now, as its thread would have
