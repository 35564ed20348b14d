"""Nights scheduled with cron: one line in the user's crontab per checkout and space, installed
and removed idempotently (`crontab -l` / `crontab -`)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

MARK = "# hpo-pipeline nightly:"  # ends each of our lines, naming the checkout and the space
ENV_FILE = "nightly.env"  # sourced by the scheduled command, if present: cron's env is empty
LOG_FILE = "mlruns/nightly.log"


@dataclass(frozen=True)
class CronEntry:
    line: str  # as it stands in the crontab
    command: str  # what cron runs (in /bin/sh, from the user's home)


def parse_time(at: str) -> tuple[int, int]:
    """HH:MM (24 h) as (hour, minute)."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", at)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise PipelineError(f"--at {at!r}: expected a time of day as HH:MM, e.g. 02:00")
    return int(match[1]), int(match[2])


def entry(workdir: Path, python: Path, space: Path, at: str) -> CronEntry:
    """The crontab line that runs the space's night every day at `at` (the machine's local time),
    in `workdir`, with its settings from `workdir/nightly.env` and its log in mlruns/."""
    hour, minute = parse_time(at)
    where = shlex.quote(str(workdir))
    settings = f"{{ [ ! -f {ENV_FILE} ] || {{ set -a; . ./{ENV_FILE}; set +a; }}; }}"
    run = f"{shlex.quote(str(python))} -m pipeline nightly --space {shlex.quote(str(space))}"
    command = f"cd {where} && {settings} && mkdir -p mlruns && exec {run} >> {LOG_FILE} 2>&1"
    if "%" in command:  # cron turns % into a newline
        raise PipelineError(f"{command}: a path with '%' cannot go into a crontab")
    return CronEntry(f"{minute} {hour} * * * {command} {mark(workdir, space)}", command)


def mark(workdir: Path, space: Path) -> str:
    return f"{MARK} {workdir} {space}"


def read_crontab() -> list[str]:
    """The user's crontab lines (none yet: no lines)."""
    if shutil.which("crontab") is None:
        raise PipelineError(
            "no `crontab` command here: install cron (Debian: apt-get install cron)"
        )
    done = subprocess.run(["crontab", "-l"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        if "no crontab" in done.stderr:
            return []
        raise PipelineError(f"crontab -l failed: {done.stderr.strip()}")
    return done.stdout.splitlines()


def write_crontab(lines: list[str]) -> None:
    text = "".join(f"{line}\n" for line in lines)
    done = subprocess.run(["crontab", "-"], input=text, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise PipelineError(f"crontab - failed: {done.stderr.strip()}")


def schedule(workdir: Path, python: Path, space: Path, at: str) -> CronEntry:
    """Install (or replace) the line for this checkout and space; others are left alone."""
    new = entry(workdir, python, space, at)
    ours = mark(workdir, space)
    lines = [line for line in read_crontab() if not line.endswith(ours)]
    write_crontab([*lines, new.line])
    return new


def unschedule(workdir: Path, space: Path) -> int:
    """Remove the line for this checkout and space; how many lines were removed."""
    lines = read_crontab()
    kept = [line for line in lines if not line.endswith(mark(workdir, space))]
    if len(kept) != len(lines):
        write_crontab(kept)
    return len(lines) - len(kept)
