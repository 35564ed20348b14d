"""What the commands print: the sweep summary, a registration, a registry decision, a
prediction. Results go to stdout; the CLI's progress and errors go to stderr."""

from __future__ import annotations

import sys
from collections import Counter
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from pipeline import tags

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.core.evaluate import TestReport
    from pipeline.stopwatch import Stopwatch
    from pipeline.tracking.delivery import Delivered
    from pipeline.tracking.promotion import Decision
    from pipeline.workflows.nights import Night
    from pipeline.workflows.reporting import ReportFiles, SweepSummary
    from pipeline.workflows.retraining import Registration
    from pipeline.workflows.serving import ExportedRows, Prediction
    from pipeline.workflows.sweep import SweepResult

# The best trials' table shows these first, then the builder's other arguments, six in all.
SHOWN_PARAMS = ("optimizer", "lr", "hidden_layers", "hidden_units", "activation", "batch_size")
SHOWN_COUNT = 6


def results() -> Console:
    """The console for results: stdout, at most 120 columns when it is not a terminal."""
    return Console(width=None if sys.stdout.isatty() else 120)


def format_cell(value: object) -> str:
    """A table cell: 4 significant digits; empty where a trial has no such value."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_sweep(result: SweepResult, top: int = 5) -> None:
    """The best trials, the trial states, timings and where the runs are."""
    # Loaded already: the sweep ranked its trials.
    from pipeline.core.decisions import CANDIDATES, rank_trials

    trials, metric = result.trials, result.metric
    out = results()
    ranked = rank_trials(trials, metric, result.mode)[:top]
    if ranked:
        shown = Table(
            title=f"best {len(ranked)} of {len(trials)} trials, ranked on {metric} at their best "
            f"epoch (the sweep score); the top {CANDIDATES} get a second opinion before one is "
            "retrained"
        )
        headers = {
            "hidden_layers": "layers",
            "hidden_units": "units",
            "activation": "act.",
            "batch_size": "batch",
        }
        present = list(dict.fromkeys(name for row in ranked for name in row.params))
        params = [c for c in SHOWN_PARAMS if c in present]
        params += [c for c in present if c not in params][: SHOWN_COUNT - len(params)]
        for header in ["trial", "state", f"best {metric}", "at epoch", *params]:
            shown.add_column(headers.get(header, header), no_wrap=True)
        for row in ranked:
            shown.add_row(
                row.label,
                row.state,
                f"{row.score(metric):.4f}",
                f"{row.epoch} of {row.epochs_trained}",
                *(format_cell(row.params.get(c)) for c in params),
            )
        out.print(shown)
    states = Counter(row.state for row in trials).most_common()
    epochs = sum(row.epochs_trained for row in trials)
    out.print(f"trials: {', '.join(f'{n} {s}' for s, n in states)}; {epochs} epochs trained")
    out.print(
        f"wall time {result.wall_seconds:.1f} s; MLflow writes {result.tracking_seconds:.2f} s "
        f"({result.tracking_cpu_seconds:.2f} s of CPU)"
    )
    if result.best is None:
        out.print("[red]no trial finished without diverging or failing[/red]")
    out.print(f"experiment: {result.experiment_name}   parent run: {result.parent_run_id}")
    out.print(
        "browse the runs: make ui, then open http://127.0.0.1:5000/#/experiments/"
        f"{result.experiment_id}",
        highlight=False,
        soft_wrap=True,
    )


def print_resume_hint(space: Path, experiment_name: str) -> None:
    """How to continue an interrupted sweep (on stderr, with the interruption)."""
    Console(stderr=True).print(
        f"sweep interrupted; continue it with: python -m pipeline tune --space {space} "
        f"--experiment {experiment_name} --resume"
    )


def print_delivered(delivered: Delivered) -> None:
    """What `sync` delivered."""
    if not delivered.writes:
        results().print(f"nothing kept for {delivered.store}: every tracking write was delivered")
        return
    results().print(
        f"delivered {delivered.writes} kept tracking writes of {delivered.spools} sweep(s) to "
        f"{delivered.store}"
    )


def print_registration(registration: Registration) -> None:
    from pipeline.tracking.registry import CHALLENGER  # loaded already: it registered a model

    out = results()
    report = registration.report
    metric = registration.metric
    selection = registration.selection
    shown = Table(title=f"second opinions: {metric} on fresh folds, from a fresh seed")
    for header in ("trial", "rank in the sweep", f"sweep {metric}", "second opinion", ""):
        shown.add_column(header, no_wrap=True)
    for o in sorted(selection.opinions, key=lambda o: o.rank):
        chosen = "registered" if o is selection.chosen else ""
        shown.add_row(
            o.name, str(o.rank), f"{o.sweep_score:.4f}", f"{o.second_opinion:.4f}", chosen
        )
    out.print(shown)
    out.print(f"winner: {selection.reason()}", highlight=False, soft_wrap=True)
    low, high = report.interval
    loss = f", test_loss {report.loss:.4f}" if report.metric != "loss" else ""
    out.print(
        f"retrained {registration.trial}: {report.name} {report.value:.4f} (95% interval "
        f"{low:.4f}-{high:.4f}){loss} on {registration.test_rows} held-out rows",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"registered {registration.model_name} version {registration.version} as "
        f"'{CHALLENGER}'; next: make promote"
    )


def describe_report(report: TestReport) -> str:
    """Every test score, the sweep's metric first."""
    names = dict.fromkeys([report.metric, *report.scores])
    return ", ".join(f"test_{name} {report.scores[name]:.4f}" for name in names)


def print_decision(decision: Decision) -> None:
    # Loaded already: the command decided.
    from pipeline.tracking.promotion import NOTHING
    from pipeline.tracking.registry import CHAMPION

    out = results()
    if decision.action == NOTHING:
        stays = f"version {decision.champion_after}" if decision.champion_after else "none"
        out.print(f"{NOTHING}: {decision.reason}; {CHAMPION} stays {stays}")
        return
    if decision.action == "kept":
        out.print(
            f"{decision.model}: version {decision.candidate} NOT promoted; champion stays "
            f"version {decision.champion_before}"
        )
    else:
        before = decision.champion_before or "none"
        out.print(
            f"{decision.model}: version {decision.champion_after} is now {CHAMPION} "
            f"({decision.action}; was {before})"
        )
    for role, version, report in (
        ("candidate", decision.candidate, decision.candidate_report),
        ("champion", decision.champion_before, decision.champion_report),
    ):
        if report is not None:
            out.print(f"  {role:9} v{version}: {describe_report(report)}")
    out.print(f"  reason: {decision.reason}")


def print_prediction(prediction: Prediction) -> None:
    out = results()
    out.print(
        f"{prediction.model} version {prediction.version}: {prediction.rows} predictions "
        f"written to {prediction.output}"
    )
    if prediction.labelled is not None:
        name, value = prediction.labelled
        logged = prediction.logged
        against = f" (logged {name} {logged:.4f})" if logged is not None else ""
        out.print(f"{name} {value:.4f} on {prediction.rows} labelled rows{against}")


def print_exported(exported: ExportedRows) -> None:
    results().print(f"{exported.rows} test rows of {exported.dataset} written to {exported.output}")


def print_night(night: Night) -> None:
    """What the night did, in a line or two."""
    out = results()
    for warning in night.warnings:
        out.print(f"warning: {warning}", highlight=False)
    if night.already_done:
        out.print(
            f"night {night.date} of {night.model} already done ({night.outcome}); nothing to do"
        )
        return
    line = f"night {night.date} of {night.model}: {night.outcome}"
    if night.outcome in ("promoted", "kept"):
        challenger = score(night.tag(tags.NIGHT_CHALLENGER_SCORE))
        champion = score(night.tag(tags.NIGHT_CHAMPION_SCORE)) or "-"
        metric = night.tag(tags.NIGHT_METRIC)
        line += (
            f"; version {night.tag(tags.NIGHT_VERSION)} ({metric} {challenger}) vs champion "
            f"{night.tag(tags.NIGHT_BEFORE)} ({metric} {champion}); champion now "
            f"{night.tag(tags.NIGHT_AFTER)}"
        )
    elif night.tag(tags.NIGHT_ERROR):
        line += f": {night.tag(tags.NIGHT_ERROR)}"
    out.print(line, highlight=False)
    if night.outcome in ("promoted", "kept", "no-valid-trial"):
        out.print(
            f"data {night.tag(tags.NIGHT_FINGERPRINT)} (changed since the previous night: "
            f"{night.tag(tags.NIGHT_CHANGED)}); {night.tag(tags.NIGHT_TRIALS)} trials; history: "
            f"python -m pipeline history --model {night.model}",
            highlight=False,
        )


def print_history(nights: list[Night], model: str) -> None:
    """The last nights, newest first."""
    out = results()
    if not nights:
        out.print(f"no nights of {model} yet (python -m pipeline nightly --space ...)")
        return
    metrics = {night.tag(tags.NIGHT_METRIC) for night in nights} - {None}
    scored = ", ".join(sorted(m for m in metrics if m)) or "test"
    shown = Table(title=f"nights of {model}, newest first; scores: {scored}")
    columns = (
        "date",
        "trials",
        "best val",
        "challenger test",
        "champion test",
        "decision",
        "champion",
    )
    for column in columns:
        shown.add_column(column, no_wrap=True)
    for night in nights:
        best = f"{night.best_score:.4f}" if night.best_score is not None else ""
        shown.add_row(
            night.date,
            night.tag(tags.NIGHT_TRIALS) or "",
            best,
            score(night.tag(tags.NIGHT_CHALLENGER_SCORE)),
            score(night.tag(tags.NIGHT_CHAMPION_SCORE)),
            night.outcome,
            night.tag(tags.NIGHT_AFTER) or night.tag(tags.NIGHT_BEFORE) or "",
        )
    out.print(shown)


def score(text: str | None) -> str:
    return f"{float(text):.4f}" if text else ""


def print_scheduled(line: str) -> None:
    out = results()
    out.print("installed in your crontab:", highlight=False)
    out.print(f"  {line}", highlight=False, soft_wrap=True)
    out.print(
        "cron starts it with an empty environment: put MLFLOW_TRACKING_URI, RAY_ADDRESS, "
        "NIGHTLY_WEBHOOK_URL and the like in ./nightly.env",
        highlight=False,
    )


def print_timings(stopwatch: Stopwatch) -> None:
    """Where the command's time went, in one line."""
    results().print(stopwatch.line(), highlight=False, soft_wrap=True, style="dim")


def print_report(report: ReportFiles) -> None:
    """Where the sweep's report went."""
    out = results()
    out.print(
        f"report of sweep {report.run_name} (parent run {report.parent_run_id}) logged to "
        f"{report.artifact_uri}: {', '.join(report.files)}",
        highlight=False,
        soft_wrap=True,
    )
    if report.output is not None:
        out.print(f"written to {report.output}", highlight=False, soft_wrap=True)
    for note in report.notes:
        out.print(f"  {note}", highlight=False)


def best_cell(summary: SweepSummary) -> str:
    """The sweep's best score, and under it the trial that has it (t07)."""
    if summary.best_score is None:
        return ""
    trial = f"\n{summary.best_trial.split()[0]}" if summary.best_trial else ""
    return f"{summary.best_score:.4f}{trial}"


def print_sweeps(summaries: list[SweepSummary], experiment: str, format_: str) -> None:
    """The experiment's sweeps, newest first: a table, or one CSV row / JSON object each."""
    import csv
    import json
    from dataclasses import fields

    from pipeline.workflows.reporting import SweepSummary  # loaded already: it listed them

    records = [s.record() for s in summaries]
    if format_ == "json":
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
        return
    if format_ == "csv":
        columns = [f.name for f in fields(SweepSummary)]
        writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n")
        writer.writeheader()
        for summary, record in zip(summaries, records, strict=True):
            writer.writerow(
                {**record, "params": summary.compact_params, "aliases": " ".join(summary.aliases)}
            )
        return
    out = results()
    if not summaries:
        out.print(f"experiment '{experiment}' has no sweep yet")
        return
    metrics = ", ".join(sorted({s.metric for s in summaries}))
    models = {s.model for s in summaries if s.model}
    title = f"sweeps of {experiment}, newest first (best: {metrics}"
    title += f"; versions of {next(iter(models))})" if len(models) == 1 else ")"
    shown = Table(title=title, show_lines=True)
    for column in ("sweep (started, UTC)", "status", "trials", "best"):
        shown.add_column(column, no_wrap=True)
    shown.add_column("winner's hyperparameters", min_width=24)
    shown.add_column("version", no_wrap=True)
    shown.add_column("decision, aliases")
    for s in summaries:
        started = s.started.replace("T", " ")[:16]
        version = f"v{s.version}" if len(models) == 1 else f"{s.model} v{s.version}"
        shown.add_row(
            f"{s.run_name}\n{started}",
            s.status,
            str(s.trials),
            f"{s.best_score:.4f}\n{s.best_trial.split()[0]}"
            if s.best_score is not None and s.best_trial
            else "",
            s.compact_params,
            version if s.version else "",
            ", ".join(x for x in (s.decision, *s.aliases) if x),
        )
    out.print(shown)
