"""Every tag name the pipeline writes into the tracking store, once: on a sweep's runs, on model
versions, on nights and on locks. These names are read back by the pipeline (resume, nights, the
promotion gate), by MLflow's UI and by users' own queries, so each is spelled in this module
only (`tests/test_tags.py` holds the package to it)."""

from __future__ import annotations

from pipeline.config.metrics import TEST_PREFIX

# --- a sweep's parent run ----------------------------------------------------------------------

SWEEP_PATH = "sweep_path"  # marks a parent run as a sweep: where Ray keeps its trial state
SWEEP_ABANDONED = "sweep.abandoned"  # an interrupted sweep that will not be resumed: when
DATA_FINGERPRINT = "data_fingerprint"  # the split's fingerprint (parent, retrain run, version)
TRIAL_COUNT = "trials."  # + a trial state: how many of the sweep's trials ended in it
SELECTION_REASON = "selection.reason"  # why the registered trial was chosen (one sentence)

# --- a trial's run -----------------------------------------------------------------------------

TRIAL_ID = "trial_id"  # Ray's id of the trial; marks a run as a trial's
TRIAL_NUMBER = "trial_number"  # its place in the searcher's order, from 1
TRIAL_STATE = "trial_state"  # completed, stopped, diverged, errored, interrupted, lost
TRIAL_ERROR = "trial_error"  # the last line of a failed trial's traceback
REGISTERED_AS = "registered_as"  # the model version it became: `name/version`
WARM_START = "warm_start"  # where a warm-start configuration came from: champion, ...
HOST = "host"  # the machine it ran on (also a lock holder's)
NODE_IP = "node_ip"
NODE_ID = "node_id"
DEVICE = "device"  # cpu, cuda:0, ... (also the retrain run's)

# --- the retrain run ---------------------------------------------------------------------------

SOURCE_TRIAL_ID = "source_trial_id"  # the trial it retrained (not TRIAL_ID: not a trial's run)
SOURCE_TRIAL = "source_trial"  # that trial's run name: t07 adam 2x256 ...
SOURCE_TRIAL_RUN_ID = "source_trial_run_id"
TEST_ROWS_SEEN = "test_rows_seen"  # `once`: the test split is touched by the final model only

# --- a model version ---------------------------------------------------------------------------

PARENT_RUN_ID = "parent_run_id"  # the sweep it came from
RETRAIN_RUN_ID = "retrain_run_id"
RETRAINED_EPOCHS = "epochs"
INTERVAL_SUFFIX = "_95"  # after the sweep's metric's test score: its 95% interval
# What made it (also in its MLmodel metadata, under the same names): the network's builder, the
# data's loader (or built-in source) and its arguments, the shipped code and the example's shape.
BUILDER = "builder"
LOADER = "loader"
LOADER_ARGS = "loader_args"
CODE_FINGERPRINT = "code_fingerprint"
INPUT_SHAPE = "input_shape"
MODEL_ORIGIN = (BUILDER, LOADER, LOADER_ARGS, CODE_FINGERPRINT, INPUT_SHAPE)


def test_score(score: str) -> str:
    """A version's test score, by the score's bare name: `test_acc`, `test_rmse`, ..."""
    return TEST_PREFIX + score  # the score's MLflow metric name, as the tag's


def test_interval(score: str) -> str:
    """The 95% interval of a version's test score on the sweep's metric, e.g. `test_rmse_95`."""
    return test_score(score) + INTERVAL_SUFFIX


def trial_score(metric: str) -> str:
    """The version's trial's score in the sweep, e.g. `trial_val_acc`."""
    return f"trial_{metric}"


def selection_score(metric: str) -> str:
    """The version's selection score (its second opinion), e.g. `selection_val_acc`."""
    return f"selection_{metric}"


# A registry decision, on the version it was about: PROMOTION or ROLLBACK + one of the fields.
PROMOTION = "promotion."
ROLLBACK = "rollback."
DECISION = "decision"  # promoted, kept, forced, rolled back
DECIDED_BY = "by"
DECIDED_AT = "at"
REASON = "reason"
CHAMPION_BEFORE = "champion_before"
MIN_DELTA = "min_delta"


GATE_ROLES = ("candidate", "champion")  # the two models a gate scores


def gate_score(role: str, metric: str) -> str:
    """A gate's score of one model (`candidate` or `champion`), e.g. `candidate_test_rmse`."""
    return f"{role}_{metric}"


# --- nights (on a night's run and, where they apply, on its model version) --------------------

NIGHT_DATE = "night.date"
NIGHT_MODEL = "night.model"
NIGHT_OUTCOME = "night.outcome"
NIGHT_FINGERPRINT = "night.data_fingerprint"
NIGHT_CHANGED = "night.data_changed"  # yes, no, or first (no earlier night to compare with)
NIGHT_VERSION = "night.version"
NIGHT_BEFORE = "night.champion_before"
NIGHT_AFTER = "night.champion_after"
NIGHT_TRIALS = "night.trials"
NIGHT_BEST = "night.best_score"
NIGHT_METRIC = "night.metric"  # the test score the gate compared: test_acc, test_rmse, ...
NIGHT_CHALLENGER_SCORE = "night.challenger_score"
NIGHT_CHAMPION_SCORE = "night.champion_score"
NIGHT_WARM = "night.warm_start"
NIGHT_ERROR = "night.error"

# --- a lock (a registered model of its own, see tracking/locks.py) -----------------------------

LOCK_HOLDER = "holder"
LOCK_PID = "pid"
LOCK_PID_START = "pid_start"
LOCK_BOOT = "boot"
LOCK_SINCE = "since"
LOCK_HEARTBEAT = "heartbeat"

# --- params of a sweep's parent run (names, like tags, that queries use) ----------------------

# The winner: the trial retrained and registered (the best second opinion of the sweep's top
# few), once it is. + a hyperparameter: its value; + number, name, trial_id, epoch, the metric,
# selection_<metric>: which trial, and its scores.
BEST_PARAM = "best."
# The sweep's own top trial by its sweep score, recorded as the sweep ends: + number, name,
# trial_id, epoch and each validation score. Params, not metrics: the parent run does not
# compete with its trials when the UI sorts them.
SWEEP_BEST = "sweep_best."
