"""The Ray cluster: connecting (token and address errors), checks that fail before a sweep
writes anything (trial storage, resources), and running a function as a remote task."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray._private import services
from ray._private.utils import detect_fate_sharing_support
from ray.exceptions import AuthenticationError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.config import Experiment
from pipeline.config.door import import_callable, shipped_modules
from pipeline.errors import PipelineError
from pipeline.storage import locate

log = logging.getLogger(__name__)

REACH_TIMEOUT_S = 5.0  # how long an unreachable head may take to say so
T = TypeVar("T")
P = ParamSpec("P")


def check_ray_address(address: str) -> None:
    """Fail fast, before anything is written, when the Ray head at `address` does not answer.

    `ray.init` itself retries an unreachable head for a minute or more.
    """
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://").rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise PipelineError(
            f"Ray address {address!r}: expected host:port of the head (e.g. 10.0.0.5:6380) "
            "or ray://host:10001"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise PipelineError(
            f"cannot reach the Ray head at {address} ({reason}); is `ray start --head` running "
            "there, and is RAY_ADDRESS right?"
        ) from None


@dataclass
class BackgroundStart:
    """A join of Ray begun on a thread of its own (`connecting_in_background`)."""

    ended: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)  # the thread may end
    failure: Exception | None = None


# A join begun in the background, until `connect` takes it over.
starting: list[BackgroundStart] = []
# The threads that started the local Ray, each waiting to be released once that Ray is left: Ray
# starts its processes fate-sharing with the thread that starts them (Linux's parent-death
# signal follows the thread, not the process), so that thread lives as long as they do.
holding: list[threading.Event] = []


class NoMainThreadWarning(logging.Filter):
    """Drops Ray's warning that a driver joining from a thread has no SIGTERM handler of Ray's:
    the command's own handler is the one that stays (see `join`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


@contextmanager
def connecting_in_background(address: str | None, code_paths: Sequence[str] = ()) -> Iterator[None]:
    """Begin `join` on a background thread while the block runs: a local Ray's start (seconds of
    starting its processes and waiting for them) overlaps what the driver does before its sweep,
    its remaining imports and its tracking set-up. The next `connect` waits for it and raises
    what it raised. A block left by an exception waits for the start to end, so that a command
    never exits half way through starting a Ray (whose exit hook then stops it)."""
    if connected() or starting:
        yield
        return
    start = BackgroundStart()

    def join_and_hold() -> None:
        ray_worker_log = logging.getLogger("ray._private.worker")
        quiet = NoMainThreadWarning()
        ray_worker_log.addFilter(quiet)
        try:
            join(address, code_paths)
        except Exception as exc:
            start.failure = exc
            return
        finally:
            ray_worker_log.removeFilter(quiet)
            start.ended.set()
        start.release.wait()

    threading.Thread(target=join_and_hold, name="ray-start", daemon=True).start()
    starting.append(start)
    try:
        yield
    except BaseException:
        if start in starting:  # not taken over by a `connect` in the block
            take_over(start)  # what the block raised is the error to tell, not the start's
        raise


def take_over(start: BackgroundStart) -> Exception | None:
    """Wait for a join begun in the background to end, and take it over (its thread is then
    held until that Ray is left); returns what it raised."""
    start.ended.wait()
    starting.remove(start)
    if start.failure is None:
        holding.append(start.release)
    return start.failure


def connect(address: str | None, code_paths: Sequence[str] = ()) -> None:
    """`join` the cluster at `address`, or a local Ray, once a join begun in the background
    (`connecting_in_background`) has ended; its error, if it failed, is raised here."""
    wait_disconnected()  # a Ray being left is not joined again
    while starting:
        failure = take_over(starting[0])
        if failure is not None:
            raise failure
    join(address, code_paths)


def join(address: str | None, code_paths: Sequence[str] = ()) -> None:
    """Join the cluster at `address`, or start a local Ray; errors say which address failed.

    The user's code (each package and module in `code_paths`) is uploaded with the job, so that
    every worker imports it whether or not its node has those folders. Joining a cluster also
    uploads this `pipeline` package, so that its workers run the driver's code rather than
    whatever version they have installed. Token authentication is
    Ray's: the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, and
    it is never switched off here.
    """
    if ray.is_initialized():
        return
    if address:
        check_ray_address(address)
    # No worker setup hook: it cost each worker the import of this module and its own; the
    # trial quiets Ray's loggers itself (trainable.run_trial).
    runtime_env: dict[str, Any] = {}
    modules = [str(path) for path in shipped_modules(code_paths)]
    if address:
        modules.append(str(Path(__file__).parents[1]))
    if modules:
        runtime_env["py_modules"] = modules
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with nullcontext() if address else processes_of_their_own():
            ray.init(
                address=address or "local",
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env=runtime_env or None,
            )
        # Ray's driver takes SIGTERM over (a core dump, exit 134); the caller's handler stays.
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)
    except AuthenticationError as exc:
        raise PipelineError(
            f"cannot connect to Ray at {address}: no valid token ({exc}); give this driver the "
            "cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on "
            "the head)"
        ) from None
    except ConnectionError as exc:
        hint = ""
        if address:  # the head answered (checked above) but Ray says only "Failed to connect":
            # what it logs is "InvalidAuthToken", so a refused token is the likely cause
            hint = (
                "; if the head runs with token authentication, give this driver the cluster's "
                "token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on the head)"
            )
        raise PipelineError(f"cannot connect to Ray at {address or 'local'}: {exc}{hint}") from None
    except (RuntimeError, ValueError) as exc:
        raise PipelineError(f"cannot connect to Ray at {address or 'local'}: {exc}") from None


@contextmanager
def processes_of_their_own() -> Iterator[None]:
    """Start the local Ray's processes (and so its workers, theirs) in a session of their own
    while the block runs.

    A stop sent to the driver's whole process group (`timeout`, Slurm's scancel, `kill -TERM --
    -PGID`, a terminal's Ctrl-C) then reaches the driver alone, which stops the sweep
    gracefully; sent to Ray's processes too, it killed them under the stopping sweep (Ray blocks
    only SIGINT in them). They still end with the driver: Ray starts them fate-sharing (the
    kernel kills them when it dies), which is also why this is done only where the kernel
    can, as Ray itself gives its processes a group of their own on Windows."""
    if not detect_fate_sharing_support():  # type: ignore[no-untyped-call]
        yield
        return
    shared = services.ConsolePopen

    class OwnSession(shared):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnSession  # type: ignore[misc]
    try:
        yield
    finally:
        services.ConsolePopen = shared  # type: ignore[misc]


def connected() -> bool:
    """Whether this process is joined to a Ray: a cluster, or the local Ray it started."""
    return bool(ray.is_initialized()) and not leaving


# The thread leaving Ray, while one runs (see `disconnect_in_background`).
leaving: list[threading.Thread] = []


def disconnect_in_background() -> None:
    """Leave Ray on a background thread (once; `wait_disconnected` waits for it).

    Stopping a local Ray takes seconds (each of its processes is given up to a second to exit,
    and the interpreter's own exit hook sleeps half a second more); work that needs no Ray, the
    retrain and the model's logging, goes on meanwhile.
    """
    if connected():
        thread = threading.Thread(target=leave, name="ray-shutdown")
        thread.start()
        leaving.append(thread)


def leave() -> None:
    """Leave Ray, and release the thread that started it, if one waits (see `holding`)."""
    ray.shutdown()
    while holding:
        holding.pop().set()


def wait_disconnected() -> None:
    """Wait until the Ray that `disconnect_in_background` leaves is left."""
    while leaving:
        leaving[0].join()
        leaving.pop()


def check_storage(storage: str, endpoint: str | None = None) -> None:
    """Fail before the sweep when trial storage cannot be written, and, on a cluster, when a
    node cannot see what the driver wrote there (a local folder that is not shared)."""
    try:
        filesystem, root = locate(storage, endpoint)
        probe = f"{root.rstrip('/')}/.pipeline-probe-{uuid.uuid4().hex}"
        filesystem.create_dir(root, recursive=True)
        with filesystem.open_output_stream(probe) as stream:
            stream.write(b"ok")
    except (OSError, pa.ArrowException) as exc:
        raise PipelineError(f"trial storage {storage} is not writable: {exc}") from None
    try:
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
        if len(nodes) > 1:
            probes = [
                probe_storage_on.options(**pin_to(n)).remote(filesystem, probe) for n in nodes
            ]
            blind = [node for node, ok in zip(nodes, ray.get(probes), strict=True) if not ok]
            if blind:
                raise PipelineError(
                    f"trial storage {storage} is not shared: {len(blind)} of {len(nodes)} Ray "
                    "nodes cannot see it; use a folder every node mounts (NFS) or s3://..."
                )
    finally:
        filesystem.delete_file(probe)


def check_code(experiment: Experiment) -> None:
    """Refuse a sweep whose user code some node cannot import (a module missing from the code
    folders shipped with the job, or a dependency that node lacks): one line naming the node
    and the module, before any trial runs."""
    references = [
        (role, reference)
        for role, reference in (
            ("model.builder", experiment.model.builder),
            ("data.loader", experiment.data.loader),
        )
        if reference is not None
    ]
    if not references:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    checks = [import_on_node.options(**pin_to(n["NodeID"])).remote(references) for n in nodes]
    for node, problem in zip(nodes, ray.get(checks), strict=True):
        if problem:
            raise PipelineError(
                f"Ray node {node['NodeManagerAddress']} ({node['NodeID'][:8]}) cannot import "
                f"the job's code: {problem}"
            )


@ray.remote
def import_on_node(references: list[tuple[str, str]]) -> str | None:
    """On one node: why the user's functions cannot be imported there, or None."""
    for role, reference in references:
        try:
            import_callable(reference, (), role)
        except PipelineError as exc:
            return str(exc)
    return None


def pin_to(node_id: str) -> dict[str, Any]:
    """Task options that run it on one given node."""
    strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return {"scheduling_strategy": strategy, "num_cpus": 0}


@ray.remote
def probe_storage_on(filesystem: pafs.FileSystem, probe: str) -> bool:
    """On one node: can it read the probe the driver wrote?"""
    try:
        return bool(filesystem.get_file_info(probe).type == pafs.FileType.File)
    except (OSError, pa.ArrowException):
        return False


def check_resources(experiment: Experiment, autoscaling: bool) -> None:
    """Refuse a sweep no node can run: trials asking for GPUs on a cluster without any would
    wait forever. A cluster that may add nodes (`autoscaling`) only gets a warning."""
    total = ray.cluster_resources()  # type: ignore[no-untyped-call]
    wanted = {"GPU": experiment.resources.gpus, "CPU": experiment.resources.cpus}
    short = [f"{kind} {need:g}" for kind, need in wanted.items() if need > total.get(kind, 0)]
    if not short:
        return
    message = (
        f"each trial asks for {', '.join(short)} (resources in the space) but the Ray cluster "
        f"has {total.get('GPU', 0):g} GPU and {total.get('CPU', 0):g} CPU in all"
    )
    if not autoscaling:
        raise PipelineError(message)
    log.warning("%s; the trials wait until the cluster grows", message)


def run_remote(
    function: Callable[P, T], cpus: float, gpus: float, *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run `function(*args, **kwargs)` as one Ray task with these resources (a GPU node when
    gpus > 0) and hand its result back to the driver."""
    return result(start_remote(function, cpus, gpus, *args, **kwargs))


def start_remote(
    function: Callable[P, T], cpus: float, gpus: float, *args: P.args, **kwargs: P.kwargs
) -> ray.ObjectRef[T]:
    """Start `function(*args, **kwargs)` as one Ray task with these resources (a GPU node when
    gpus > 0); `result` waits for it."""
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(function)
    return task.remote(*args, **kwargs)


def result(pending: ray.ObjectRef[T]) -> T:
    """What a task begun with `start_remote` returned, once it has; an error of ours that it
    raised is raised here as itself (its one line, not Ray's traceback of the task)."""
    try:
        return ray.get(pending)
    except RayTaskError as exc:
        if isinstance(exc.cause, PipelineError):
            raise exc.cause from None
        raise


def run_remote_each(
    function: Callable[..., T],
    cpus: float,
    gpus: float,
    calls: list[dict[str, Any]],
    *,
    shared: dict[str, Any] | None = None,
) -> list[T]:
    """Run `function(**arguments, **shared)` for the arguments of each of `calls` as Ray tasks
    side by side, in that order, each with these resources, and hand their results back in the
    order of `calls`. The `shared` arguments (the data) go to the object store once."""
    stored = {name: ray.put(value) for name, value in (shared or {}).items()}
    pending = [start_remote(function, cpus, gpus, **arguments, **stored) for arguments in calls]
    return [result(task) for task in pending]
