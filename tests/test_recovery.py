"""A sweep stopped every way a driver can be stopped, then resumed to its end through the real
CLI: Ctrl-C (SIGINT), SIGTERM as a scheduler sends it (to the driver, and to its whole process
group, Ray's local processes included, as systemd, `timeout` and scancel do), and SIGKILL of
the driver with its local Ray (a lost machine), its saved state then damaged as a kill in the
middle of Ray's writes leaves it. A new sweep is refused while one is interrupted; `--abandon`
gives one up. Two sweeps started in the same second on a fresh store share nothing. Everything
is read back from the MLflow store and from Ray's own trial records."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient
from ray import cloudpickle

from pipeline.distributed.tuner import staged_copies
from tests.conftest import (
    SPACES,
    cli_env,
    finished_trial_runs,
    one_worker,
    require_private_mounts,
    run_cli,
    run_in_process,
)

pytestmark = [pytest.mark.slow, one_worker("recovery")]
TOTAL = 12  # trials: enough that three interruptions land mid-sweep
# Every trial trains 12 epochs (no early stop): a few seconds each, so that the sweep is still
# under way when a signal lands, however far the MLflow writer lags behind Ray on a busy machine.
SWEEP = ["tune", "--space", str(SPACES / "smoke.yaml"), "--no-retrain"]
EPOCHS = 12
SWEEP += ["--set", f"budget.max_epochs={EPOCHS}", "--set", "scheduler.name=fifo"]
# Checkpointing every epoch: the trials under way at the SIGKILL have checkpointed.
TUNE = [*SWEEP, "--set", f"budget.num_samples={TOTAL}", "--set", "budget.checkpoint_seconds=0"]


def start(folder: Path, *args: str) -> subprocess.Popen[str]:
    """`python -m pipeline ARGS` in its own process group (the driver and its local Ray)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=folder,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop_after(
    process: subprocess.Popen[str],
    db: Path,
    trials: int,
    how: signal.Signals,
    group: bool = False,
    also: Callable[[], bool] = lambda: True,
) -> str:
    """Once `trials` trial runs have finished (and `also()` holds), send `how` (SIGKILL: to the
    driver and its local Ray, as when the machine dies); the process's output."""
    deadline = time.monotonic() + 300
    while (finished_trial_runs(db) < trials or not also()) and process.poll() is None:
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.3)
    if process.poll() is not None:
        assert process.stdout is not None
        ended = process.stdout.read()[-3000:]
        raise AssertionError(
            f"the sweep ended ({process.returncode}) before it could be stopped:\n{ended}"
        )
    if how == signal.SIGKILL or group:
        os.killpg(process.pid, how)
    else:
        process.send_signal(how)
    output, _ = process.communicate(timeout=180)
    return output


@dataclass
class Recovery:
    folder: Path
    client: MlflowClient
    outputs: dict[str, str]
    codes: dict[str, int]
    left: dict[str, tuple[int, int]]  # after a step: runs still RUNNING, locks still held
    checkpoints_removed: int  # after the SIGKILL, before the resume

    def sweeps(self) -> list[Run]:
        experiment = self.client.get_experiment_by_name("smoke")
        found = self.client.search_runs([experiment.experiment_id], max_results=1000)
        return [r for r in found if "sweep_path" in r.data.tags]

    def trial_runs(self, parent: Run, view: int = ViewType.ACTIVE_ONLY) -> list[Run]:
        found = self.client.search_runs(
            [parent.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            run_view_type=view,
            max_results=1000,
        )
        return [r for r in found if "trial_id" in r.data.tags]


@pytest.fixture(scope="module")
def recovery(tmp_path_factory: pytest.TempPathFactory) -> Recovery:
    folder = tmp_path_factory.mktemp("recovery")
    db = folder / "mlruns" / "mlflow.db"
    outputs: dict[str, str] = {}
    codes: dict[str, int] = {}

    def step(name: str, process: subprocess.Popen[str], output: str) -> None:
        outputs[name], codes[name] = output, process.returncode

    process = start(folder, *TUNE)  # Ctrl-C at a terminal: SIGINT to the process group
    step("sigint", process, stop_after(process, db, 2, signal.SIGINT, group=True))
    # Refused before anything starts: run in this process (see `run_in_process`).
    done = run_in_process(folder, *TUNE)
    outputs["refused"], codes["refused"] = done.stdout + done.stderr, done.returncode
    process = start(folder, *TUNE, "--resume")
    stopped = stop_after(process, db, finished_trial_runs(db) + 2, signal.SIGTERM, group=True)
    step("sigterm-group", process, stopped)
    client = MlflowClient(f"sqlite:///{db}")
    running = client.search_runs(
        [client.get_experiment_by_name("smoke").experiment_id], "attributes.status = 'RUNNING'"
    )
    locks = client.search_registered_models("name LIKE 'pipeline-lock.%'")
    left = {"sigterm-group": (len(running), len(locks))}
    process = start(folder, *TUNE, "--resume")
    more = finished_trial_runs(db) + 2
    ray = folder / "mlruns" / "ray"
    step(
        "sigkill",
        process,
        stop_after(process, db, more, signal.SIGKILL, also=lambda: trial_under_way(ray)),
    )
    checkpoints_removed = damage_saved_state(ray)
    done = run_in_process(folder, *TUNE)
    outputs["refused-after-kill"] = done.stdout + done.stderr
    codes["refused-after-kill"] = done.returncode
    done = run_cli(folder, *TUNE, "--resume")
    outputs["resumed"], codes["resumed"] = done.stdout + done.stderr, done.returncode
    # A second sweep, killed with its machine, then given up for a new one.
    process = start(folder, *TUNE)
    step("killed", process, stop_after(process, db, finished_trial_runs(db) + 1, signal.SIGKILL))
    done = run_cli(
        folder,
        *SWEEP,
        "--set",
        "budget.num_samples=2",
        "--set",
        "search.n_initial_points=1",
        "--abandon",
    )
    outputs["abandon"], codes["abandon"] = done.stdout + done.stderr, done.returncode
    return Recovery(folder, client, outputs, codes, left, checkpoints_removed)


def test_ctrl_c_and_sigterm_to_the_process_group_stop_gracefully_with_a_resume_hint(
    recovery: Recovery,
) -> None:
    """SIGINT (a terminal's Ctrl-C) and SIGTERM (`timeout`, scancel) sent to the driver's whole
    process group reach the driver alone (a local Ray's processes run in a session of their
    own), so Tune stops its trials and saves its state: 130 and 143, the resume hint, no run
    RUNNING and no lock held after the SIGTERM; the resume after it finishes the sweep (see
    test_the_resumed_sweep_ends_truthful_one_run_per_trial)."""
    assert recovery.codes["sigint"] == 130, recovery.outputs["sigint"][-3000:]
    assert recovery.codes["sigterm-group"] == 143, recovery.outputs["sigterm-group"][-3000:]
    for name in ("sigint", "sigterm-group"):
        output = recovery.outputs[name]
        assert "--resume" in output
        assert "Experiment has been interrupted, but the most recent state was saved" in output
        assert "SIGTERM received" not in output and "Aborted" not in output
        assert "Traceback" not in output
        assert "Failed to connect to GCS" not in output  # Ray's processes were not stopped
    assert recovery.left["sigterm-group"] == (0, 0)


def test_a_new_sweep_is_refused_while_one_is_interrupted(recovery: Recovery) -> None:
    for name in ("refused", "refused-after-kill"):
        assert recovery.codes[name] == 1, recovery.outputs[name][-3000:]
        [line] = [x for x in recovery.outputs[name].splitlines() if "error:" in x]
        assert "has an interrupted sweep smoke-" in line
        assert "--resume" in line and "--abandon" in line
    assert len(recovery.sweeps()) == 3, "the refused commands started no sweep"


def test_the_resumed_sweep_ends_truthful_one_run_per_trial(recovery: Recovery) -> None:
    assert recovery.codes["sigkill"] == -signal.SIGKILL
    assert recovery.codes["resumed"] == 0, recovery.outputs["resumed"][-3000:]
    first = min(recovery.sweeps(), key=lambda r: r.info.start_time)
    assert first.info.status == "FINISHED"
    children = recovery.trial_runs(first)
    trial_ids = [c.data.tags["trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == TOTAL, "one run per trial, none phantom"
    # Ray's own record of the sweep: a folder per trial it started (run_trial_<id>_...), with
    # the results its driver wrote (result.json, which a kill can leave empty). It names every
    # trial that counts, with results, and those it restarted under new ids (their runs
    # deleted, see test_a_resume_whose_saved_state_is_damaged_restarts_those_trials).
    sweep = Path(first.data.tags["sweep_path"])
    started = {folder.name.split("_")[2] for folder in sweep.glob("run_trial_*")}
    ray_ids = {
        json.loads(line)["trial_id"]
        for result in sweep.glob("*/result.json")
        for line in result.read_text().splitlines()[:1]
    }
    gone = recovery.trial_runs(first, ViewType.DELETED_ONLY)
    restarted = {r.data.tags["trial_id"] for r in gone if r.data.tags["trial_state"] == "restarted"}
    assert set(trial_ids) <= ray_ids <= set(trial_ids) | restarted
    assert restarted <= started
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["trial_state"] in ("completed", "stopped")
        steps = [m.step for m in recovery.client.get_metric_history(child.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, len(steps) + 1)), "every epoch logged, once"
    # Runs of trials Ray never saved (started just before the kill) are deleted, not left.
    for lost in gone:
        assert lost.data.tags["trial_state"] in ("lost", "restarted")
        if lost.data.tags["trial_state"] == "lost":
            assert lost.data.tags["trial_id"] not in ray_ids


def test_abandon_ends_the_killed_sweep_and_starts_anew(recovery: Recovery) -> None:
    assert recovery.codes["killed"] == -signal.SIGKILL
    assert recovery.codes["abandon"] == 0, recovery.outputs["abandon"][-3000:]
    assert "abandoned the interrupted sweep" in recovery.outputs["abandon"]
    _, killed, new = sorted(recovery.sweeps(), key=lambda r: r.info.start_time)
    assert killed.info.status == "KILLED" and "sweep.abandoned" in killed.data.tags
    assert all(r.info.status != "RUNNING" for r in recovery.trial_runs(killed))
    assert not Path(killed.data.tags["sweep_path"]).exists(), "its trial state is removed"
    assert new.info.status == "FINISHED" and len(recovery.trial_runs(new)) == 2


def test_no_run_is_left_running_and_no_lock_is_left_held(recovery: Recovery) -> None:
    experiment = recovery.client.get_experiment_by_name("smoke")
    found = recovery.client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [r for r in found if r.info.status == "RUNNING"]
    assert not recovery.client.search_registered_models("name LIKE 'pipeline-lock.%'")


def test_two_sweeps_started_at_once_on_a_fresh_store_share_nothing(tmp_path: Path) -> None:
    args = [*SWEEP, "--set", "budget.num_samples=2", "--set", "search.n_initial_points=1"]
    first, second = start(tmp_path, *args), start(tmp_path, *args)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [o[-2000:] for o in outputs]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    sweeps = [r for r in runs if "sweep_path" in r.data.tags]
    assert len({s.data.tags["sweep_path"] for s in sweeps}) == len(sweeps) == 2
    assert len({s.info.run_name for s in sweeps}) == 2
    for sweep in sweeps:
        assert sweep.info.status == "FINISHED"
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
        assert len(trials) == 2


def test_a_full_trial_storage_is_named_in_a_few_lines_and_leaves_no_run_running(
    tmp_path: Path,
) -> None:
    """Trial storage on a 400 KB tmpfs (in a private mount namespace) fills up mid-sweep. Ray
    either gives up the sweep (one error line naming the full storage) or survives it with the
    trials that could not write errored (one line each, and a warning naming the full storage);
    which one happens depends on what Ray was writing when the space ran out. Either way: no
    traceback, a few lines, no run left RUNNING."""
    require_private_mounts("give the sweep a small private disk")
    storage = tmp_path / "storage"
    storage.mkdir()
    small = ["budget.num_samples=4", "--set", "search.n_initial_points=1"]
    small += ["--set", "budget.max_failures=0"]
    tune = " ".join([sys.executable, "-m", "pipeline", *SWEEP, "--set", *small])
    script = f"mount -t tmpfs -o size=400k none {storage} && exec {tune}"
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=tmp_path,
        env=cli_env(PIPELINE_STORAGE=str(storage)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    # Without whitespace: the log handler wraps a long storage path anywhere.
    named = "".join(f"trial storage {storage} is full (".split())
    assert named in "".join(output.split()), output[-3000:]
    assert "Traceback" not in output and "Aborted" not in output
    assert len(output.splitlines()) < 40, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == done.returncode, output[-3000:]  # exit 1 comes with its one line
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]


def trial_under_way(storage: Path) -> bool:
    """Whether a trial has reported (and so checkpointed) 2 epochs or more, but not all yet."""
    results = storage.glob("smoke-*/run_trial_*/result.json")
    return any(2 <= len(r.read_text().splitlines()) < EPOCHS for r in results)


def damage_saved_state(storage: Path) -> int:
    """Damage the killed sweep's saved state as a driver killed in the middle of Ray's writes
    leaves it: every checkpoint deleted (killed as Ray replaced one: seen in CI, the saved state
    then names a deleted one), the search state one trial ahead of the trial list (killed as Tune
    copied the two to storage), and the trial list in storage empty (a copy cut off at its
    start; the killed driver's own copy, in Ray's staging folder, is whole), and so is the
    searcher's state (seen in CI: 0 bytes in storage after a kill, whole in staging). The
    checkpoints deleted."""
    checkpoints = list(storage.glob("smoke-*/run_trial_*/checkpoint_*"))
    for folder in checkpoints:
        shutil.rmtree(folder)
    newest = max(storage.glob("smoke-*/search_gen_state-*.json"))
    try:
        state = cloudpickle.loads(newest.read_bytes())
    except (EOFError, pickle.UnpicklingError):  # the kill cut it off: damage the driver's copy
        state = cloudpickle.loads(staged_copies(str(newest.parent), newest.name)[0])
    state["counter"] += 1
    state["name:ConcurrencyLimiter"]["live_trials"].add("00000000")
    state["name:ConcurrencyLimiter"]["num_unfinished_live_trials"] += 1
    newest.write_bytes(cloudpickle.dumps(state))
    max(storage.glob("smoke-*/experiment_state-*.json")).write_bytes(b"")
    max(storage.glob("smoke-*/searcher-state-*.pkl")).write_bytes(b"")
    return len(checkpoints)


def test_a_resume_whose_saved_state_is_damaged_restarts_those_trials(
    recovery: Recovery,
) -> None:
    """The resume after the SIGKILL (its state damaged, `damage_saved_state`) restarts the trials
    that cannot continue from their first epoch (Ray gives them new trial ids; the runs of the
    old ones are deleted), runs the trials the list lacks, and still ends truthful (see
    test_the_resumed_sweep_ends_truthful_one_run_per_trial); what it says agrees with the
    store: the trials it restarted are the runs it deleted as restarted, the runs it deleted as
    never saved are those tagged lost, and its last line counts every trial of the sweep once."""
    assert recovery.checkpoints_removed, "no trial had checkpointed before the kill"
    output = " ".join(recovery.outputs["resumed"].split())
    assert recovery.codes["resumed"] == 0, output[-3000:]
    first = min(recovery.sweeps(), key=lambda r: r.info.start_time)
    gone = Counter(
        r.data.tags["trial_state"] for r in recovery.trial_runs(first, ViewType.DELETED_ONLY)
    )
    assert set(gone) <= {"restarted", "lost"}, gone
    said = re.search(r"(\d+) trial\(s\) could not resume: the checkpoint Ray's saved", output)
    assert said and int(said[1]) == gone["restarted"] > 0, output[-3000:]
    never = re.search(r"deleted (\d+) run\(s\) of trials the interrupted sweep never", output)
    assert (int(never[1]) if never else 0) == gone["lost"], output[-3000:]
    states = Counter(t.data.tags["trial_state"] for t in recovery.trial_runs(first))
    counted = ", ".join(f"{states[s]} {s}" for s in ("completed", "stopped") if states[s])
    assert f"trials {TOTAL}/{TOTAL} ended ({counted})" in output, output[-3000:]
