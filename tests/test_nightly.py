"""Nightly reruns through the real CLI on a CSV data set that grows: three nights (the first
stopped mid-sweep by SIGINT to its process group, as a terminal's Ctrl-C stops it; resumed and
stopped again by SIGTERM to its group, as systemd, `timeout` and scancel stop it; resumed and
killed with its machine (SIGKILL); then run again while a second run of it is refused; the third
started by the crontab line `make schedule` installed, run by hand) and the same night twice.
Everything is read back from the MLflow store, the crontab and a local webhook."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.core.sources import load_bundled
from tests.conftest import (
    REPO,
    Hook,
    PrivateCrontab,
    cli_env,
    one_worker,
    private_crontab,
    registry_state,
    run_cli,
    run_in_process,
)

pytestmark = [pytest.mark.slow, one_worker("nightly")]
MODEL = "nightly-digits"
WEAK_LR = 1e-6  # a learning rate at which nothing is learnt in a few epochs
EXPERIMENT = "nightly-smoke"
TODAY = datetime.now(timezone.utc).date().isoformat()


def write_digits(path: Path, rows: int) -> None:
    """The first `rows` of scikit-learn's digits as a CSV with a label column."""
    digits = load_bundled("digits")
    frame = pd.DataFrame(digits.features[:rows], columns=list(digits.columns))
    frame["digit"] = digits.labels[:rows]
    frame.to_csv(path, index=False)


def write_space(path: Path, data: Path, **changes: Any) -> None:
    space: dict[str, Any] = {
        "name": EXPERIMENT,
        "seed": 3,
        "registered_model": MODEL,
        "data": {"source": "csv", "path": str(data), "target": "digit"},
        "budget": {"num_samples": 5, "max_concurrent": 2, "max_epochs": 3},
        "search": {"algorithm": "tpe", "n_initial_points": 2},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "params": {
            "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
            "hidden_units": {"type": "choice", "values": [16, 32]},
            "optimizer": {
                "type": "choice",
                "values": [
                    {"name": "adam", "batch_size": {"type": "choice", "values": [32, 64]}},
                    {
                        "name": "momentum",
                        "momentum": {"type": "float", "low": 0.5, "high": 0.95},
                        "batch_size": {"type": "choice", "values": [32, 64]},
                    },
                ],
            },
        },
    }
    for key, value in changes.items():
        space["params"][key] = value
    path.write_text(yaml.safe_dump(space))


def make(folder: Path, crontab: PrivateCrontab, *args: str) -> subprocess.CompletedProcess[str]:
    """This checkout's Makefile, run in `folder` (whose mlruns/ the commands then use), with
    the test's own crontab."""
    return subprocess.run(
        crontab.wrap(["make", "-s", "-f", str(REPO / "Makefile"), *args]),
        cwd=folder,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def as_cron_runs_it(command: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """A crontab line's command as cron starts it: /bin/sh in the home folder, a bare env."""
    env = {"HOME": str(Path.home()), "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh"}
    env["LOGNAME"] = env["USER"] = os.environ.get("USER", "root")
    return subprocess.run(
        ["/bin/sh", "-c", command], cwd=Path.home(), env=env, capture_output=True, text=True
    )


@dataclass
class Nights:
    folder: Path
    client: MlflowClient
    outputs: dict[str, str]
    codes: dict[str, int]
    hook: Hook
    cron_lines: dict[str, list[str]]  # the crontab after each step
    registry: dict[str, dict[str, Any]]  # aliases and version tags after a step
    # Each stop of the first night, by its signal: status, output, runs RUNNING, locks held.
    stopped: dict[str, tuple[int, str, int, int]]
    refused: tuple[int, str]  # a second run of the first night, while one ran: status, output

    def runs(self) -> list[Run]:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        return self.client.search_runs([experiment.experiment_id], max_results=1000)

    def night(self, date: str) -> Run:
        [run] = [
            r
            for r in self.runs()
            if r.data.tags.get("night.date") == date and "sweep_path" in r.data.tags
        ]
        return run

    def trials(self, parent: Run) -> list[Run]:
        return [
            r
            for r in self.runs()
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
            and "trial_id" in r.data.tags
        ]


def watched_night(
    folder: Path,
    args: list[str],
    env: dict[str, str],
    act: Callable[[str, subprocess.Popen[str]], bool],
) -> tuple[int, str]:
    """A night started in a session of its own, each line it says given to `act` as it says
    it, until `act` returns True; its status and output."""
    night = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=folder,
        env={**env, "PYTHONUNBUFFERED": "1"},  # each line as it is said
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert night.stdout is not None
    said = []
    for line in night.stdout:  # until `act` is done, or the night is
        said.append(line)
        if act(line, night):
            break
    rest, _ = night.communicate(timeout=600)
    return night.returncode, "".join(said) + rest


def stopped_night(
    folder: Path, args: list[str], env: dict[str, str], stop: signal.Signals
) -> tuple[int, str]:
    """A night sent `stop`, to its whole process group, as soon as it says a trial of its sweep
    ended (the others still to run); its status and output."""

    def stop_after_a_trial(line: str, night: subprocess.Popen[str]) -> bool:
        if not re.match(r"t\d+ (completed|stopped)", line):
            return False
        os.killpg(night.pid, stop)
        return True

    return watched_night(folder, args, env, stop_after_a_trial)


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nights]:
    folder = tmp_path_factory.mktemp("nightly")
    data, space = folder / "digits.csv", folder / "space.yaml"
    write_digits(data, 450)
    write_space(space, data)
    hook = Hook(200)
    outputs, codes, cron_lines = {}, {}, {}

    def step(name: str, done: subprocess.CompletedProcess[str]) -> None:
        outputs[name] = done.stdout + done.stderr
        codes[name] = done.returncode

    crontab = private_crontab(folder / "crontabs")
    crontab.write(["17 4 * * * /usr/bin/true  # someone else's line"])
    try:
        first = ["nightly", "--space", str(space), "--date", "2026-11-01"]
        client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
        stopped = {}
        # A terminal's Ctrl-C, then (the same night resumed) systemd's, timeout's or scancel's
        # SIGTERM, then (resumed again) its machine dying.
        for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            env = cli_env(NIGHTLY_WEBHOOK_URL=hook.url)
            status, said = stopped_night(folder, first, env, stop)
            running = client.search_runs(
                [client.get_experiment_by_name(EXPERIMENT).experiment_id],
                "attributes.status = 'RUNNING'",
            )
            locks = client.search_registered_models("name LIKE 'pipeline-lock.%'")
            stopped[stop.name] = (status, said, len(running), len(locks))
        refused = []

        def refuse_beside(line: str, night: subprocess.Popen[str]) -> bool:
            """Once the night resumed holds its lock: the same night again, refused at the
            lock, before Ray (so in this process, see `run_in_process`)."""
            if "resuming its sweep" not in line:
                return False
            done = run_in_process(folder, *first)
            refused.append((done.returncode, done.stdout + done.stderr))
            return True

        env = cli_env(NIGHTLY_WEBHOOK_URL=hook.url)
        codes["2026-11-01"], outputs["2026-11-01"] = watched_night(
            folder, first, env, refuse_beside
        )
        second = ["nightly", "--space", str(space), "--date", "2026-11-02"]
        step("2026-11-02", run_cli(folder, *second, NIGHTLY_WEBHOOK_URL=hook.url))
        registry = {"2026-11-02": registry_state(client, MODEL)}
        # The third night: the data grew, the space gained a parameter, and cron starts it. Its
        # learning rate is now a constant too small to learn anything in three epochs: its
        # challenger surely loses to the champion.
        write_digits(data, 650)
        dropout = {"type": "float", "low": 0.0, "high": 0.3}
        write_space(space, data, dropout=dropout, lr=WEAK_LR)
        (folder / "nightly.env").write_text(f"NIGHTLY_WEBHOOK_URL={hook.url}\n")
        step("schedule", make(folder, crontab, "schedule", f"SPACE={space}", "AT=03:17"))
        step("schedule-again", make(folder, crontab, "schedule", f"SPACE={space}", "AT=03:17"))
        cron_lines["scheduled"] = crontab.lines()
        [line] = [line for line in crontab.lines() if str(space) in line]
        command = " ".join(line.split()[5:])
        log = folder / "mlruns" / "nightly.log"  # where the scheduled command writes
        step(TODAY, as_cron_runs_it(command, folder))
        outputs[TODAY] += log.read_text()
        registry[TODAY] = registry_state(client, MODEL)
        step("rerun", as_cron_runs_it(command, folder))
        outputs["rerun"] += log.read_text().removeprefix(outputs[TODAY])
        step("history", run_cli(folder, "history", "--model", MODEL))
        step("unschedule", make(folder, crontab, "unschedule", f"SPACE={space}"))
        cron_lines["unscheduled"] = crontab.lines()
        yield Nights(
            folder, client, outputs, codes, hook, cron_lines, registry, stopped, refused[0]
        )
    finally:
        hook.close()


def test_every_step_succeeded(nights: Nights) -> None:
    for name, code in nights.codes.items():
        assert code == 0, f"{name}: {nights.outputs[name][-3000:]}"


@pytest.mark.parametrize(("stop", "expected"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_night_stopped_through_its_group_stops_gracefully_and_resumes(
    nights: Nights, stop: str, expected: int
) -> None:
    """SIGINT or SIGTERM to the night's whole process group (a local Ray's processes run in a
    session of their own) reaches the driver alone: 130 or 143 after Tune saved its state, no
    run RUNNING, the lock released; the same night run again resumes that sweep (night 1's
    tests below check what it made)."""
    status, said, running, locks = nights.stopped[stop]
    assert status == expected, said[-3000:]
    assert "Experiment has been interrupted, but the most recent state was saved" in said
    assert "Traceback" not in said and "Failed to connect to GCS" not in said
    assert (running, locks) == (0, 0)
    if stop == "SIGTERM":  # the night the SIGINT stopped, run again
        assert "resuming its sweep" in said
    assert "resuming its sweep" in nights.outputs["2026-11-01"]


def test_night_1_registers_version_1_and_promotes_it(nights: Nights) -> None:
    tags = nights.night("2026-11-01").data.tags
    assert tags["night.outcome"] == "promoted"
    assert tags["night.version"] == "1" and tags["night.champion_after"] == "1"
    assert tags["night.champion_before"] == "none"
    assert tags["night.data_changed"] == "first"
    assert tags["night.warm_start"] == "none"
    version = nights.client.get_model_version(MODEL, "1")
    assert version.tags["night.date"] == "2026-11-01"
    assert version.tags["promotion.decision"] == "promoted"


def test_night_2_warm_starts_from_the_champion_and_the_gate_decides(nights: Nights) -> None:
    night = nights.night("2026-11-02")
    tags = night.data.tags
    assert tags["night.version"] == "2" and tags["night.data_changed"] == "no"
    first_night = nights.night("2026-11-01")
    valid = [
        t
        for t in nights.trials(first_night)
        if t.data.tags["trial_state"] in ("completed", "stopped")
    ]
    assert re.fullmatch(rf"\d points, {len(valid)} results", tags["night.warm_start"])
    # Its first trial runs the champion's configuration, tagged as such.
    [first] = [t for t in nights.trials(night) if t.data.tags["trial_number"] == "1"]
    assert first.data.tags["warm_start"] == "champion"
    champion_run = nights.client.get_run(nights.client.get_model_version(MODEL, "1").run_id)
    recorded = {k: v for k, v in champion_run.data.params.items() if k != "epochs" and "." not in k}
    assert first.data.params == recorded
    # The gate ran as `promote` does; the aliases follow its decision.
    decision = nights.client.get_model_version(MODEL, "2").tags["promotion.decision"]
    assert tags["night.outcome"] == decision
    champion = "2" if decision == "promoted" else "1"
    assert tags["night.champion_after"] == champion
    # Read right after night 2: night 3 registers the next challenger.
    aliases = nights.registry["2026-11-02"]["aliases"]
    assert aliases["champion"] == champion
    if decision == "kept":
        assert aliases["challenger"] == "2", "a version that lost keeps `challenger`"


def test_night_3_sees_the_changed_data_and_rescores_the_champion(nights: Nights) -> None:
    tags = nights.night(TODAY).data.tags
    assert tags["night.data_changed"] == "yes"
    before = nights.night("2026-11-02").data.tags["night.data_fingerprint"]
    assert tags["night.data_fingerprint"] != before
    gate = nights.client.get_model_version(MODEL, tags["night.version"]).tags
    assert gate["promotion.data_fingerprint"] == tags["night.data_fingerprint"]
    champion = tags["night.champion_before"]
    assert champion in ("1", "2") and "promotion.champion_test_acc" in gate
    champion_tags = nights.client.get_model_version(MODEL, champion).tags
    assert champion_tags["data_fingerprint"] != gate["promotion.data_fingerprint"]


def test_a_night_whose_challenger_loses_keeps_the_champion(nights: Nights) -> None:
    """Night 3's challenger cannot learn (WEAK_LR): the gate keeps the champion, which stays
    where it was; the new version stays the challenger, its decision recorded."""
    tags = nights.night(TODAY).data.tags
    champion, version = tags["night.champion_before"], tags["night.version"]
    assert tags["night.outcome"] == "kept" and tags["night.champion_after"] == champion
    gate = nights.client.get_model_version(MODEL, version).tags
    assert gate["promotion.decision"] == "kept"
    assert float(gate["promotion.candidate_test_acc"]) < float(gate["promotion.champion_test_acc"])
    aliases = nights.registry[TODAY]["aliases"]
    assert aliases["champion"] == champion and aliases["challenger"] == version
    assert aliases == nights.registry["2026-11-02"]["aliases"] | {"challenger": version}


def test_points_the_changed_space_no_longer_holds_are_dropped_naming_the_key(
    nights: Nights,
) -> None:
    output = " ".join(nights.outputs[TODAY].split())
    assert "dropped warm start from the champion" in output
    assert "missing a value for 'dropout'" in output
    assert nights.night(TODAY).data.tags["night.warm_start"] == "0 points, 0 results"
    assert not [t for t in nights.trials(nights.night(TODAY)) if "warm_start" in t.data.tags]


def test_one_sweep_and_one_version_per_night_and_no_trial_state_left(nights: Nights) -> None:
    versions = nights.client.search_model_versions(f"name = '{MODEL}'")
    dates = sorted(v.tags["night.date"] for v in versions)
    assert dates == ["2026-11-01", "2026-11-02", TODAY]
    for date in dates:
        assert len(nights.trials(nights.night(date))) == 5
    assert not [r for r in nights.runs() if r.info.status == "RUNNING"]
    assert not list((nights.folder / "mlruns" / "ray").glob("*/*")), "trial state removed"


def test_the_same_night_again_changes_nothing(nights: Nights) -> None:
    assert "already done" in nights.outputs["rerun"]
    assert registry_state(nights.client, MODEL) == nights.registry[TODAY]
    assert len(nights.hook.received) == 3, "one message per night, none for the rerun"


def test_each_night_notified_the_webhook(nights: Nights) -> None:
    messages = {m["night"]: m for m in nights.hook.received}
    assert sorted(messages) == ["2026-11-01", "2026-11-02", TODAY]
    for date, message in messages.items():
        tags = nights.night(date).data.tags
        assert message["outcome"] == tags["night.outcome"]
        assert message["version"] == tags["night.version"]
        assert message["model"] == MODEL and message["trials"] == 5
        assert message["runs"] is None, "a local store has no page to link to"
    assert messages["2026-11-01"]["champion_score"] is None
    assert messages[TODAY]["metric"] == "test_acc"


def test_history_shows_the_three_nights_and_the_refused_run(nights: Nights) -> None:
    lines = [line for line in nights.outputs["history"].splitlines() if "│" in line]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines]
    assert [row[0] for row in rows] == [TODAY, "2026-11-02", "2026-11-01", "2026-11-01"]
    assert rows[2][5] == "skipped-locked"  # newer than the night it found running
    del rows[2]
    for row in rows:
        tags = nights.night(row[0]).data.tags
        assert row[1] == "5" and row[5] == tags["night.outcome"]
        assert row[6] == tags["night.champion_after"]
        assert float(row[3]) == pytest.approx(float(tags["night.challenger_score"]), abs=1e-4)


def test_schedule_installs_one_line_and_unschedule_removes_only_it(nights: Nights) -> None:
    ours = [line for line in nights.cron_lines["scheduled"] if "hpo-pipeline nightly" in line]
    assert len(ours) == 1, "scheduling twice keeps one line"
    assert ours[0].startswith("17 3 * * * ")
    assert "mlruns/nightly.log" in ours[0]
    assert any("someone else's line" in line for line in nights.cron_lines["unscheduled"])
    assert not [x for x in nights.cron_lines["unscheduled"] if "hpo-pipeline nightly" in x]
    log = (nights.folder / "mlruns" / "nightly.log").read_text()
    assert f"night {TODAY} of {MODEL}" in log


def test_a_second_run_of_a_night_is_refused_and_a_killed_nights_lock_is_taken_over(
    nights: Nights,
) -> None:
    """The first night killed with its machine (SIGKILL to its group) left its lock behind,
    which the same night run again took over at once (its holder gone), resuming the sweep: one
    run per trial, each finished. Meanwhile the same night started once more was refused (75,
    naming the lock) and recorded as skipped."""
    code, said = nights.refused
    assert code == 75 and "another run holds the lock" in said, said[-3000:]
    assert nights.stopped["SIGKILL"][0] == -signal.SIGKILL
    output = " ".join(nights.outputs["2026-11-01"].split())
    assert "took over the stale lock" in output and "that process is gone" in output
    assert "resuming its sweep" in output
    runs = [r for r in nights.runs() if r.data.tags.get("night.date") == "2026-11-01"]
    skipped = [r for r in runs if "sweep_path" not in r.data.tags]
    assert [r.data.tags["night.outcome"] for r in skipped] == ["skipped-locked"]
    trials = nights.trials(nights.night("2026-11-01"))
    assert len({t.data.tags["trial_id"] for t in trials}) == len(trials) == 5
    assert all(t.info.status == "FINISHED" for t in trials)
