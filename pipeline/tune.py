"""Ray Tune: the HyperOpt search space and searcher, the scheduler, and the Tuner."""

from __future__ import annotations

import logging
import math
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from hyperopt import hp
from hyperopt.pyll import scope
from ray import tune
from ray.exceptions import AuthenticationError
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.hyperopt import HyperOptSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.config import (
    ChoiceParam,
    ConditionalOption,
    Experiment,
    FloatParam,
    IntParam,
    ParamSpec,
    Scalar,
    option_name,
)
from pipeline.data import TuningData
from pipeline.errors import PipelineError
from pipeline.trainable import TrialSettings, run_trial

log = logging.getLogger(__name__)

# Hyperopt labels carry this prefix so that they never equal a key of the space: Ray would then
# try to translate warm-start values itself, which it cannot do for conditional options.
LABEL_PREFIX = "hp:"
T = TypeVar("T")


def hyperopt_space(params: dict[str, ParamSpec], path: str = "") -> dict[str, Any]:
    """The search space as hyperopt expressions; a conditional option becomes a nested dict."""
    space: dict[str, Any] = {}
    for name, spec in params.items():
        label = f"{LABEL_PREFIX}{path}{name}"
        if isinstance(spec, FloatParam):
            space[name] = float_expression(label, spec)
        elif isinstance(spec, IntParam):
            space[name] = int_expression(label, spec)
        elif isinstance(spec, ChoiceParam):
            options = [
                {"name": o.name, **hyperopt_space(o.params, f"{path}{name}/{o.name}/")}
                if isinstance(o, ConditionalOption)
                else o
                for o in spec.values
            ]
            if any(isinstance(o, ConditionalOption) for o in spec.values):
                options = [o if isinstance(o, dict) else {"name": o} for o in options]
            space[name] = hp.choice(label, options)
        else:
            space[name] = spec
    return space


def float_expression(label: str, spec: FloatParam) -> Any:
    if spec.log:
        return hp.loguniform(label, math.log(spec.low), math.log(spec.high))
    if spec.step is not None:
        return hp.quniform(label, spec.low, spec.high, spec.step)
    return hp.uniform(label, spec.low, spec.high)


def int_expression(label: str, spec: IntParam) -> Any:
    if spec.log:
        expression = hp.qloguniform(label, math.log(spec.low), math.log(spec.high), spec.step)
    else:
        # Widened by half a step so that both ends are as likely as the values between them.
        half = spec.step / 2
        expression = hp.quniform(label, spec.low - half, spec.high + half, spec.step)
    return scope.int(scope.minimum(scope.maximum(expression, spec.low), spec.high))


def hyperopt_point(
    params: dict[str, ParamSpec], point: dict[str, Scalar], path: str = ""
) -> dict[str, Any]:
    """A warm-start point (parameter values) in hyperopt's terms: labels, indices for choices."""
    native: dict[str, Any] = {}
    for name, spec in params.items():
        label = f"{LABEL_PREFIX}{path}{name}"
        if isinstance(spec, ChoiceParam):
            names = [option_name(o) for o in spec.values]
            index = names.index(point[name])
            native[label] = index
            chosen = spec.values[index]
            if isinstance(chosen, ConditionalOption):
                native.update(hyperopt_point(chosen.params, point, f"{path}{name}/{chosen.name}/"))
        elif isinstance(spec, (FloatParam, IntParam)):
            native[label] = point[name]
    return native


class ConditionalHyperOptSearch(HyperOptSearch):
    """HyperOptSearch whose warm-start points may leave out parameters of options not chosen.

    TPE expects every label in a trial's `misc.idxs` (an empty list when inactive), but hyperopt's
    `generate_trials_to_calculate` writes only the labels a point gives, so TPE's first model
    fails with a KeyError on a conditional space. Pad the missing labels.
    """

    def _setup_hyperopt(self) -> None:
        super()._setup_hyperopt()
        assert self.domain is not None
        for trial in self._hpopt_trials._dynamic_trials:
            for label in self.domain.params:
                trial["misc"]["idxs"].setdefault(label, [])
                trial["misc"]["vals"].setdefault(label, [])
        self._hpopt_trials.refresh()


def make_searcher(experiment: Experiment) -> HyperOptSearch:
    """TPE over the space (random search: every trial drawn before TPE would start), seeded."""
    points = [hyperopt_point(experiment.params, p) for p in experiment.search.points_to_evaluate]
    return ConditionalHyperOptSearch(
        space=hyperopt_space(experiment.params),
        metric=experiment.metric,
        mode=experiment.mode,
        points_to_evaluate=points or None,
        n_initial_points=experiment.n_initial_points,
        random_state_seed=experiment.seed,
    )


def make_scheduler(experiment: Experiment) -> TrialScheduler:
    """ASHA on the epoch (max_t = budget.max_epochs), or FIFO, which lets every trial finish."""
    if experiment.scheduler.name == "fifo":
        return FIFOScheduler()  # type: ignore[no-untyped-call]
    return AsyncHyperBandScheduler(
        time_attr="epoch",
        max_t=experiment.budget.max_epochs,
        grace_period=experiment.scheduler.grace_period,
        reduction_factor=experiment.scheduler.reduction_factor,
        brackets=1,
    )


REACH_TIMEOUT_S = 5.0  # how long an unreachable head may take to say so


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


def connect_ray(
    address: str | None,
    worker_setup: Callable[[], None] | None = None,
    ship_code: bool = False,
) -> None:
    """Join the cluster at `address`, or start a local Ray; errors say which address failed.

    `worker_setup` runs in every worker process before its first task (e.g. to set log levels).
    `ship_code` uploads this `pipeline` package with the job, so that a cluster's workers run the
    driver's code rather than whatever version they have installed. Token authentication is
    Ray's: the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, and
    it is never switched off here.
    """
    if ray.is_initialized():
        return
    if address:
        check_ray_address(address)
    runtime_env: dict[str, Any] = {}
    if worker_setup:
        runtime_env["worker_process_setup_hook"] = worker_setup
    if ship_code:
        runtime_env["py_modules"] = [str(Path(__file__).parent)]
    try:
        ray.init(
            address=address or "local",
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env=runtime_env or None,
        )
    except AuthenticationError as exc:
        raise PipelineError(
            f"cannot connect to Ray at {address}: no valid token ({exc}); give this driver the "
            "cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on "
            "the head)"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ""
        if address:  # Ray reports a refused token only as a failed connection
            hint = (
                "; if the head runs with token authentication, give this driver the cluster's "
                "token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on the head)"
            )
        raise PipelineError(f"cannot connect to Ray at {address or 'local'}: {exc}{hint}") from None


def check_storage(storage: str) -> None:
    """Fail before the sweep when trial storage cannot be written, and, on a cluster, when a
    node cannot see what the driver wrote there (a local folder that is not shared)."""
    root = storage if "://" in storage else Path(storage).absolute().as_uri()
    probe = f"{root.rstrip('/')}/.pipeline-probe-{uuid.uuid4().hex}"
    try:
        filesystem, path = pafs.FileSystem.from_uri(probe)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(b"ok")
    except (OSError, pa.ArrowException) as exc:
        raise PipelineError(f"trial storage {storage} is not writable: {exc}") from None
    try:
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
        if len(nodes) > 1:
            seen = ray.get([probe_storage_on.options(**pin_to(n)).remote(probe) for n in nodes])
            blind = [node for node, ok in zip(nodes, seen, strict=True) if not ok]
            if blind:
                raise PipelineError(
                    f"trial storage {storage} is not shared: {len(blind)} of {len(nodes)} Ray "
                    "nodes cannot see it; use a folder every node mounts (NFS) or s3://..."
                )
    finally:
        filesystem.delete_file(path)


def pin_to(node_id: str) -> dict[str, Any]:
    """Task options that run it on one given node."""
    strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return {"scheduling_strategy": strategy, "num_cpus": 0}


@ray.remote
def probe_storage_on(probe: str) -> bool:
    """On one node: can it read the probe the driver wrote?"""
    try:
        filesystem, path = pafs.FileSystem.from_uri(probe)
        return bool(filesystem.get_file_info(path).type == pafs.FileType.File)
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


def ray_is_running() -> bool:
    """Whether this process is connected to Ray (as after a sweep)."""
    return bool(ray.is_initialized())


def run_remote(function: Callable[..., T], cpus: float, gpus: float, *args: Any) -> T:
    """Run `function(*args)` as one Ray task with these resources (a GPU node when gpus > 0)
    and hand its result back to the driver."""
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(function)
    return cast(T, ray.get(task.remote(*args)))


def make_trainable(experiment: Experiment, data: TuningData) -> Any:
    """`run_trial` with the data put in the object store once and the trial's resources."""
    settings = TrialSettings(
        family=experiment.model.family,
        max_epochs=experiment.budget.max_epochs,
        seed=experiment.seed,
        cpus=experiment.resources.cpus,
    )
    trainable = tune.with_parameters(run_trial, data=data, settings=settings)
    return tune.with_resources(
        trainable, {"cpu": experiment.resources.cpus, "gpu": experiment.resources.gpus}
    )


def make_tuner(
    experiment: Experiment,
    data: TuningData,
    storage: Path | str,
    run_name: str,
    callbacks: list[tune.Callback],
) -> tune.Tuner:
    """The Tuner for one sweep; trial state lands in `storage`/`run_name`."""
    return tune.Tuner(
        make_trainable(experiment, data),
        tune_config=tune.TuneConfig(
            metric=experiment.metric,
            mode=experiment.mode,
            search_alg=make_searcher(experiment),
            scheduler=make_scheduler(experiment),
            num_samples=experiment.budget.num_samples,
            max_concurrent_trials=experiment.budget.max_concurrent,
            # A reused actor skips process start-up and `import torch` for every trial.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=str(storage),
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=experiment.budget.max_failures),
            verbose=0,
        ),
    )


def restore_tuner(experiment: Experiment, data: TuningData, sweep_path: str) -> tune.Tuner:
    """Resume an interrupted sweep: finished trials stay, the others continue from checkpoints."""
    if not tune.Tuner.can_restore(sweep_path):
        raise PipelineError(f"{sweep_path}: no sweep state to resume from")
    return tune.Tuner.restore(
        sweep_path, make_trainable(experiment, data), resume_unfinished=True, resume_errored=True
    )
