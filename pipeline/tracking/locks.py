"""A lock held in the tracking store, so that it holds across every machine that shares the store
(a file lock holds on one host only).

The lock is a registered model named `pipeline-lock.<key>`: creating a registered model is
atomic in MLflow's stores (a unique name), so of two processes that try at once exactly one gets
it. Its tags say who holds it (host, pid, process start, boot) and when it last showed a sign of
life; the holder refreshes that heartbeat from a thread. A lock whose holder is gone is taken
over: at once when the holder ran on this host and its process no longer exists (SIGKILL,
reboot), else once its heartbeat is older than `stale_after_s` (a lost node). Taking over renames
the stale lock to a name of its own first, which only one contender can do, so two contenders
never both take it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from mlflow.exceptions import MlflowException

from pipeline import tags
from pipeline.errors import PipelineError
from pipeline.tracking.store import Client, impatient, unreachable

log = logging.getLogger(__name__)

LOCK_PREFIX = "pipeline-lock."
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0  # several missed heartbeats, and far above clock skew between hosts
TAKEOVER_ATTEMPTS = 3


def boot_id() -> str:
    """This machine's boot (Linux); a process of an earlier boot is gone."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), '' where that cannot be read: with
    the pid it tells a process from a later one that reuses its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


@dataclass(frozen=True, kw_only=True)
class Holder:
    """Who holds a lock, and their last sign of life."""

    id: str
    host: str
    pid: int
    pid_start: str
    boot: str
    since: str  # when it was taken, UTC
    heartbeat: float  # seconds since the epoch, the holder's clock

    def as_tags(self) -> dict[str, str]:
        return {
            tags.LOCK_HOLDER: self.id,
            tags.HOST: self.host,
            tags.LOCK_PID: str(self.pid),
            tags.LOCK_PID_START: self.pid_start,
            tags.LOCK_BOOT: self.boot,
            tags.LOCK_SINCE: self.since,
            tags.LOCK_HEARTBEAT: f"{self.heartbeat:.3f}",
        }

    @classmethod
    def from_tags(cls, marks: dict[str, str]) -> Holder:
        return cls(
            id=marks.get(tags.LOCK_HOLDER, ""),
            host=marks.get(tags.HOST, ""),
            pid=int(marks.get(tags.LOCK_PID, "0") or 0),
            pid_start=marks.get(tags.LOCK_PID_START, ""),
            boot=marks.get(tags.LOCK_BOOT, ""),
            since=marks.get(tags.LOCK_SINCE, ""),
            heartbeat=float(marks.get(tags.LOCK_HEARTBEAT, "0") or 0),
        )

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since}"


def this_process() -> Holder:
    pid = os.getpid()
    return Holder(
        id=uuid.uuid4().hex,
        host=socket.gethostname(),
        pid=pid,
        pid_start=process_start(pid),
        boot=boot_id(),
        since=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        heartbeat=time.time(),
    )


def why_stale(holder: Holder, now: float, stale_after_s: float) -> str | None:
    """Why the holder no longer holds its lock, or None while it may still be alive."""
    if holder.host == socket.gethostname():
        if holder.boot and holder.boot != boot_id():
            return f"{holder.describe()}: that host has rebooted since"
        try:
            os.kill(holder.pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:  # exists, another user's
            alive = True
        if not alive or (holder.pid_start and process_start(holder.pid) != holder.pid_start):
            return f"{holder.describe()}: that process is gone"
        return None
    silent = now - holder.heartbeat
    if silent > stale_after_s:
        return f"{holder.describe()}: no heartbeat for {silent:.0f} s"
    return None


class LockHeld(PipelineError):
    """Another live process holds the lock."""

    def __init__(self, key: str, holder: Holder) -> None:
        super().__init__(f"another run holds the lock on {key} ({holder.describe()})")
        self.holder = holder


class StoreLock:
    """The lock on `key` in the tracking store; a context manager that heartbeats while held."""

    def __init__(
        self,
        client: Client,
        key: str,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.client = client
        self.key = key
        self.name = f"{LOCK_PREFIX}{key}"
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.holder = this_process()
        self.taken_over: str | None = None  # why the previous holder's lock was stale
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, or a stale one over; LockHeld when a live process holds it."""
        for _ in range(TAKEOVER_ATTEMPTS):
            try:
                self.client.create_registered_model(
                    self.name,
                    tags=self.holder.as_tags(),
                    description=f"held by a pipeline run: {self.key} (deleted when it ends)",
                )
                break
            except MlflowException as exc:
                # A create that the store's going away cut off (a connection reset mid-request)
                # may have landed or not: the read below, once the store is back, tells.
                if exc.error_code != "RESOURCE_ALREADY_EXISTS" and not unreachable(exc):
                    raise
            current = self.read()
            if current is None:  # released meanwhile: try again
                continue
            if current.id == self.holder.id:  # made by a try whose answer the outage lost
                break
            reason = why_stale(current, time.time(), self.stale_after_s)
            if reason is None:
                raise LockHeld(self.key, current)
            self.take_over(current, reason)
        else:
            raise PipelineError(f"could not take the lock on {self.key}: contended; try again")
        self._thread = threading.Thread(target=self._beat, name="lock-heartbeat", daemon=True)
        self._thread.start()

    def read(self) -> Holder | None:
        """The current holder, None when the lock is free."""
        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return Holder.from_tags(dict(model.tags))

    def live_holder(self) -> Holder | None:
        """Who holds the lock, if it is held by a process that may still be alive."""
        current = self.read()
        if current is None or why_stale(current, time.time(), self.stale_after_s) is not None:
            return None
        return current

    def clear_stale(self) -> None:
        """Drop the lock if its holder is gone (a sweep given up after its driver died)."""
        current = self.read()
        if current is not None:
            reason = why_stale(current, time.time(), self.stale_after_s)
            if reason is not None:
                self.take_over(current, reason)

    def take_over(self, stale: Holder, reason: str) -> None:
        """Move a stale lock aside (a name only one contender can give it), then drop it."""
        aside = f"{self.name}.stale.{stale.id}"
        try:
            self.client.rename_registered_model(self.name, aside)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                return  # another contender moved it first
            raise
        self.client.delete_registered_model(aside)
        self.taken_over = reason
        log.warning("took over the stale lock on %s (%s)", self.key, reason)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                with impatient():  # a store that is away: the next beat tries again
                    current = self.read()
                    if current is None or current.id != self.holder.id:
                        log.error("lost the lock on %s: another run took it over", self.key)
                        return
                    self.client.set_registered_model_tag(
                        self.name, tags.LOCK_HEARTBEAT, f"{time.time():.3f}"
                    )
            except Exception as exc:  # a store that is busy or down for a moment: next beat
                # (an outage is told once, by the sweep's tracking writes)
                level = logging.DEBUG if unreachable(exc) else logging.WARNING
                log.log(level, "lock heartbeat on %s failed: %s", self.key, exc)

    def release(self) -> None:
        """Stop the heartbeat and delete the lock, if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        current = self.read()
        if current is not None and current.id == self.holder.id:
            self.client.delete_registered_model(self.name)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
