"""A sweep's runs in the tracking store: the parent run with its settings, data and trial
table, the trial runs nested under it and their epochs, and runs that only record something."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    MLFLOW_RUN_NOTE,
)

from pipeline import tags
from pipeline.config import Experiment, Scalar
from pipeline.config.metrics import VAL_PREFIX
from pipeline.core.decisions import TRIAL_STATES, Selection, best_epoch
from pipeline.core.trials import TrialRow, trial_frame
from pipeline.tracking.store import Client


@dataclass(frozen=True, kw_only=True)
class LoggedData:
    """Rows a run used, for its Dataset column: the data set, where it comes from, the split's
    fingerprint (the digest) and the rows' shape."""

    name: str
    source: str
    fingerprint: str
    rows: int
    input_shape: tuple[int, ...]
    context: str  # MLflow's: training, testing

    def as_input(self) -> DatasetInput:
        """The run input MLflow records: name, digest, source, shapes (not the rows)."""
        profile = {
            "features_shape": [self.rows, *self.input_shape],
            "targets_shape": [self.rows],
        }
        dataset = DatasetEntity(
            name=self.name,
            digest=self.fingerprint,
            source_type="local",
            source=json.dumps({"uri": self.source}),
            profile=json.dumps(profile),
        )
        return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, self.context)])


def flat_settings(experiment: Experiment) -> dict[str, Scalar]:
    """The experiment's settings as dotted keys (params excluded: they are the trials' business)."""
    dumped = experiment.model_dump(mode="json", exclude={"params", "search"})
    flat: dict[str, Scalar] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif node is not None and node != "":
            flat[prefix.rstrip(".")] = node

    walk(dumped, "")
    flat["search.algorithm"] = experiment.search.algorithm
    flat["search.n_initial_points"] = experiment.n_initial_points
    flat["search.points_to_evaluate"] = len(experiment.search.points_to_evaluate)
    return flat


def describe_experiment(experiment: Experiment) -> str:
    """The experiment's description (Markdown, shown on its page in MLflow's UI)."""
    about = f"{experiment.description}\n\n" if experiment.description else ""
    best = "highest" if experiment.mode == "max" else "lowest"
    return (
        f"{about}Hyperparameter sweeps of `{experiment.name}` on the "
        f"`{experiment.data.source or experiment.data.loader}` data: one parent run per sweep "
        f"(its settings, `trials.csv` and the sweep report under `report/`), one nested run per "
        f"trial, and a `retrain` run holding the model registered "
        f"as `{experiment.model_name}`. Trials are ranked on `{experiment.metric}` ({best} wins) "
        f"at their best epoch: sort the trial runs by `best_{experiment.metric}`."
    )


def start_parent_run(
    client: Client,
    experiment_id: str,
    run_name: str,
    experiment: Experiment,
    *,
    space_text: str,
    marks: dict[str, str],
    params: dict[str, Scalar],
    data: DatasetInput,
) -> str:
    """Open the sweep's parent run: its settings, data, the search-space file and the resolved
    config; tagged with `marks`."""
    run = client.create_run(
        experiment_id, run_name=run_name, tags={MLFLOW_RUN_NAME: run_name, **marks}
    )
    run_id = str(run.info.run_id)
    settings = {**flat_settings(experiment), **params}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in settings.items()])
    client.log_inputs(run_id, [data])
    client.log_text(run_id, space_text, "search_space.yaml")
    client.log_text(run_id, json.dumps(experiment.model_dump(mode="json"), indent=2), "config.json")
    return run_id


def sweep_tags(sweep_path: str, data_fingerprint: str, code_version: str | None) -> dict[str, str]:
    """The tags that mark a parent run as a sweep: where its trial state is, which data, which
    code."""
    marks = {tags.SWEEP_PATH: sweep_path, tags.DATA_FINGERPRINT: data_fingerprint}
    if code_version:
        marks[MLFLOW_GIT_COMMIT] = code_version
    return marks


def reopen_run(client: Client, run_id: str) -> None:
    """Mark a run RUNNING again (a resumed sweep's parent)."""
    client.update_run(run_id, status="RUNNING")


def finish_parent_run(
    client: Client,
    run_id: str,
    trials: list[TrialRow],
    *,
    best: TrialRow | None,
    status: str,
    scores: tuple[str, ...],
    metric: str,
) -> None:
    """Record the sweep's top trial by its sweep score, the trial counts and the trial table
    on the parent run and end it with `status`."""
    params = [] if best is None else trial_params(tags.SWEEP_BEST, best)
    counts = Counter(row.state for row in trials)
    counted = [RunTag(f"{tags.TRIAL_COUNT}{state}", str(counts[state])) for state in TRIAL_STATES]
    note = sweep_note(len(trials), metric, best, status)
    client.log_batch(run_id, params=params, tags=[*counted, RunTag(MLFLOW_RUN_NOTE, note)])
    table = trial_frame(trials, scores, metric)
    client.log_text(run_id, table.to_csv(index=False), "trials.csv")
    client.set_terminated(run_id, status)


def sweep_note(trials: int, metric: str, best: TrialRow | None, status: str) -> str:
    """The parent run's description as the sweep ends (the winner is added once registered)."""
    if status != "FINISHED":
        return f"A sweep interrupted after {trials} trials: continue it with `tune --resume`."
    if best is None:
        return f"A sweep of {trials} trials: none finished without diverging or failing."
    return (
        f"A sweep of {trials} trials ranked on {metric}; its top trial by sweep score: {best.name}."
    )


def trial_params(prefix: str, trial: TrialRow) -> list[Param]:
    """Which trial (number, name, id), its best epoch and its scores there, as params under
    `prefix`."""
    named: dict[str, Any] = {"name": trial.name, "trial_id": trial.trial_id, "epoch": trial.epoch}
    if trial.number is not None:
        named["number"] = trial.number
    named.update(trial.scores)
    return [Param(f"{prefix}{key}", str(value)) for key, value in named.items()]


def record_winner(
    client: Client, parent_run_id: str, winner: TrialRow, selection: Selection, *, links: str
) -> str:
    """Name the registered trial on the sweep's parent run: `best.*` (its hyperparameters,
    which trial, its scores in the sweep and its selection score), why it was chosen, and in
    its description `links` (Markdown: the trial's run, the version). Params are written once:
    a sweep retrained again keeps the first winner's, and a different one is said in the
    warning returned (else "")."""
    parent = client.get_run(parent_run_id).data
    recorded = parent.params.get(tags.BEST_PARAM + "trial_id")
    if recorded is not None:
        if recorded == winner.trial_id:
            return ""
        return (
            f"the sweep's parent run already names trial {recorded} as its registered winner "
            f"(best.*); this retrain chose {winner.label}, whose version's tags say so"
        )
    params = [Param(f"{tags.BEST_PARAM}{k}", str(v)) for k, v in winner.params.items()]
    params += trial_params(tags.BEST_PARAM, winner)
    chosen_by = tags.BEST_PARAM + tags.selection_score(selection.metric)
    params.append(Param(chosen_by, str(selection.score)))
    reason = selection.reason()
    note = f"{parent.tags.get(MLFLOW_RUN_NOTE, '')}\n\nRegistered: {links}. {reason}".strip()
    marks = [RunTag(tags.SELECTION_REASON, reason), RunTag(MLFLOW_RUN_NOTE, note)]
    client.log_batch(parent_run_id, params=params, tags=marks)
    return ""


def recorded(params: Mapping[str, str], field: str) -> str | None:
    """A field of a sweep's winner as its parent run records it: the registered trial's
    (`best.*`), else the sweep's top trial's (`sweep_best.*`); None before either."""
    for prefix in (tags.BEST_PARAM, tags.SWEEP_BEST):
        value = params.get(prefix + field)
        if value is not None and value != "None":
            return value
    return None


def recorded_best(params: Mapping[str, str], metric: str) -> float | None:
    """A sweep's best score on `metric` as its parent run records it (see `recorded`)."""
    value = recorded(params, metric)
    return None if value is None else float(value)


def child_runs(client: Client, experiment_id: str, parent_run_id: str) -> list[Run]:
    """Every run nested under the parent run."""
    return search_all(client, experiment_id, f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")


def trial_run_id(
    client: Client, experiment_id: str, parent_run_id: str, trial_id: str
) -> str | None:
    """The run of one of the sweep's trials (None if someone deleted it)."""
    parent = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"
    query = f"{parent} and tags.{tags.TRIAL_ID} = '{trial_id}'"
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return str(found[0].info.run_id) if found else None


def run_link(experiment_id: str, run_id: str | None, text: str) -> str:
    """A Markdown link to a run's page in MLflow's UI (for a run's or a version's note); the
    text alone where the run is unknown."""
    return text if run_id is None else f"[{text}](#/experiments/{experiment_id}/runs/{run_id})"


def search_all(
    client: Client, experiment_id: str, filter_string: str, order_by: list[str] | None = None
) -> list[Run]:
    """Every run of the experiment that matches, page after page."""
    found: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            order_by=order_by,
            max_results=1000,
            page_token=token,
        )
        found.extend(page)
        token = page.token
        if not token:
            return found


def trial_states(client: Client, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """trial id -> the state its child run was tagged with."""
    runs = child_runs(client, experiment_id, parent_run_id)
    return {
        r.data.tags[tags.TRIAL_ID]: r.data.tags.get(tags.TRIAL_STATE, "")
        for r in runs
        if tags.TRIAL_ID in r.data.tags
    }


def close_open_runs(client: Client, experiment_id: str, parent_run_id: str, status: str) -> None:
    """End the parent and any child still RUNNING, so no run outlives its sweep."""
    for run in child_runs(client, experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)
    if client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_terminated(parent_run_id, status)


def summary_metrics(best: Mapping[str, Any], step: int) -> list[Metric]:
    """A trial's summary on its run: its best epoch and that epoch's validation scores, each
    logged as best_<name> (`best_val_acc`, `best_val_loss`, `best_epoch`) at `step`; the UI
    sorts trials on them."""
    now = int(time.time() * 1000)
    names = [n for n in best if n.startswith(VAL_PREFIX) and best[n] is not None]
    return [Metric(f"best_{name}", float(best[name]), now, step) for name in [*names, "epoch"]]


def best_metrics(history: list[dict[str, float]], metric: str, mode: str) -> list[Metric]:
    """A trial's summary from its epochs: that of its best epoch on `metric` (logged at that
    epoch's step); none for an empty history."""
    best = best_epoch(history, metric, mode)
    return [] if best is None else summary_metrics(dict(best), step=int(best["epoch"]))


def logged_epochs(client: Client, run_id: str, names: Sequence[str]) -> list[dict[str, float]]:
    """A trial run's logged epochs: epoch and the metrics `names` (its validation scores)."""
    epochs: dict[int, dict[str, float]] = {}
    for name in names:
        for m in client.get_metric_history(run_id, name):
            epochs.setdefault(m.step, {"epoch": float(m.step)})[name] = m.value
    return [epochs[step] for step in sorted(epochs)]


def set_run_tags(client: Client, run_id: str, marks: dict[str, str]) -> None:
    """Tag a run, in one batch."""
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in marks.items()])


def record_run(client: Client, experiment_id: str, run_name: str, marks: dict[str, str]) -> str:
    """A finished run that only records something (tags), such as a night that did not sweep."""
    run = client.create_run(
        experiment_id, run_name=run_name, tags={MLFLOW_RUN_NAME: run_name, **marks}
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return str(run.info.run_id)
