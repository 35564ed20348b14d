"""Search-space validation: every bad file fails in load_experiment, naming the file and the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import (
    ChoiceParam,
    ConditionalOption,
    Experiment,
    FloatParam,
    Hyperparameters,
    IntParam,
    flatten_sample,
    load_experiment,
    point_from_values,
)
from pipeline.errors import PipelineError

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"

# A snapshot of search_spaces/smoke.yaml (the shipped file is edited by others; these cases must
# not move with it). Each case below breaks exactly one thing in a copy of it.
BASE: dict[str, Any] = {
    "name": "smoke",
    "description": "smoke test of every stage on a small slice of digits",
    "seed": 7,
    "metric": "val_acc",
    "mode": "max",
    "registered_model": "smoke-digits-mlp",
    "data": {"source": "digits", "limit": 600},
    "budget": {"num_samples": 6, "max_concurrent": 2, "max_epochs": 4},
    "search": {"algorithm": "tpe", "n_initial_points": 3},
    "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    "params": {
        "lr": {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True},
        "hidden_layers": {"type": "int", "low": 1, "high": 2},
        "hidden_units": {"type": "choice", "values": [16, 32]},
        "activation": {"type": "choice", "values": ["relu", "tanh"]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "optimizer": {
            "type": "choice",
            "values": [
                {
                    "name": "momentum",
                    "momentum": {"type": "float", "low": 0.5, "high": 0.95},
                    "batch_size": {"type": "choice", "values": [32, 64]},
                },
                {"name": "adam", "batch_size": {"type": "choice", "values": [32, 64]}},
            ],
        },
    },
}
# A warm-start point inside BASE's space (adam branch).
POINT: dict[str, Any] = {
    "lr": 0.01,
    "hidden_layers": 1,
    "hidden_units": 32,
    "activation": "relu",
    "dropout": 0.1,
    "optimizer": "adam",
    "batch_size": 32,
}
DELETE = object()


def edited(changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of BASE with dotted keys set (or removed, for DELETE)."""
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node: Any = raw
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    return raw


def write(tmp_path: Path, raw: Any, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def load_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(PipelineError) as info:
        load_experiment(path, overrides)
    return str(info.value)


def assert_error(path: Path, *fragments: str, overrides: list[str] | None = None) -> None:
    message = load_error(path, overrides)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_base_snapshot_loads(tmp_path: Path) -> None:
    experiment = load_experiment(write(tmp_path, BASE))
    assert experiment.name == "smoke"
    assert experiment.n_initial_points == 3
    assert isinstance(experiment.params["lr"], FloatParam)
    assert isinstance(experiment.params["hidden_layers"], IntParam)
    optimizer = experiment.params["optimizer"]
    assert isinstance(optimizer, ChoiceParam)
    assert all(isinstance(o, ConditionalOption) for o in optimizer.values)


INVALID: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    (
        "low_above_high",
        {"params.lr.low": 0.5, "params.lr.high": 0.1},
        ("params.lr", "low (0.5) must not exceed high (0.1)"),
    ),
    (
        "int_low_above_high",
        {"params.hidden_layers.low": 3},
        ("params.hidden_layers", "must not exceed"),
    ),
    ("log_low_zero", {"params.lr.low": 0.0}, ("params.lr", "log-uniform needs low > 0")),
    ("log_low_negative", {"params.lr.low": -1.0}, ("params.lr", "log-uniform needs low > 0")),
    ("step_with_log", {"params.lr.step": 0.01}, ("params.lr", "step and log cannot be used")),
    (
        "int_step_with_log",
        {"params.hidden_layers.step": 2, "params.hidden_layers.log": True},
        ("params.hidden_layers", "step and log cannot be used"),
    ),
    (
        "empty_choice",
        {"params.activation.values": []},
        ("params.activation", "values must not be empty"),
    ),
    (
        "duplicate_choice",
        {"params.activation.values": ["relu", "tanh", "relu"]},
        ("params.activation", "duplicate values: relu"),
    ),
    (
        "duplicate_option",
        {"params.optimizer.values.1.name": "momentum"},
        ("params.optimizer", "duplicate values: momentum"),
    ),
    ("low_not_a_number", {"params.lr.low": "abc"}, ("params.lr.low", "valid number", "'abc'")),
    (
        "num_samples_not_int",
        {"budget.num_samples": "many"},
        ("budget.num_samples", "valid integer", "'many'"),
    ),
    ("list_for_budget", {"budget": [6, 4]}, ("budget", "valid dictionary")),
    ("list_for_params", {"params": ["lr", "dropout"]}, ("params", "valid dictionary")),
    ("list_for_data", {"data": ["digits"]}, ("data", "valid dictionary")),
    (
        "unknown_nested_key",
        {"budget.num_sample": 6, "budget.num_samples": DELETE},
        ("budget", "unknown key 'num_sample'", "did you mean 'num_samples'"),
    ),
    (
        "unknown_param_key",
        {"params.lr.lg": True},
        ("params.lr", "unknown key 'lg'", "did you mean 'log'"),
    ),
    (
        "unknown_hyperparameter",
        {
            "params.hiden_units": {"type": "choice", "values": [16, 32]},
            "params.hidden_units": DELETE,
        },
        (
            "params.hiden_units",
            "'hiden_units' is neither a training hyperparameter nor an argument of builder "
            "pipeline.core.networks:mlp",
            "did you mean 'hidden_units'",
        ),
    ),
    (
        "unknown_hyperparameter_no_close_match",
        {"params.learning_rate": {"type": "float", "low": 0.001, "high": 0.1}},
        ("params.learning_rate", "'learning_rate' is neither a training hyperparameter"),
    ),
    (
        "unknown_param_type",
        {"params.activation.type": "categorical"},
        ("params.activation", "type: float, int or choice"),
    ),
    (
        "float_for_int_hyperparameter",
        {"params.hidden_units": {"type": "float", "low": 8, "high": 64}},
        ("params.hidden_units", "use type: int"),
    ),
    (
        "options_on_non_optimizer",
        {"params.activation.values": [{"name": "relu", "dropout": 0.1}, "tanh"]},
        ("params.activation", "only optimizer options may carry parameters"),
    ),
    (
        "momentum_top_level_with_adam",
        {"params.momentum": {"type": "float", "low": 0.5, "high": 0.9}},
        ("params.momentum", "does not apply to optimizer adam"),
    ),
    (
        "momentum_default_optimizer",
        {"params.optimizer": DELETE, "params.momentum": 0.9},
        ("params.momentum", "does not apply to optimizer adam"),
    ),
    (
        "batch_size_top_level_with_gd",
        {"params.optimizer": {"type": "choice", "values": ["gd", "adam"]}, "params.batch_size": 32},
        ("params.batch_size", "does not apply to optimizer gd"),
    ),
    (
        "batch_size_top_level_and_in_option",
        {"params.batch_size": 32},
        ("params.optimizer.momentum.batch_size", "also given at the top level"),
    ),
    (
        "dropout_high_one",
        {"params.dropout.high": 1.0},
        ("params.dropout.high", "must be below 1.0"),
    ),
    ("dropout_constant_one", {"params.dropout": 1.0}, ("params.dropout", "must be below 1.0")),
    (
        "activation_not_allowed",
        {"params.activation.values": ["relu", "rellu"]},
        ("params.activation.values[1]", "'rellu' is not one of", "did you mean 'relu'"),
    ),
    (
        "optimizer_not_allowed",
        {"params.optimizer": "nadam"},
        ("params.optimizer", "'nadam' is not one of"),
    ),
    (
        "momentum_out_of_range",
        {"params.optimizer.values.0.momentum.high": 1.5},
        ("params.optimizer.momentum.momentum.high", "must be below 1.0"),
    ),
    (
        "epochs_above_max_epochs",
        {"params.epochs": {"type": "int", "low": 1, "high": 10}},
        ("params.epochs.high", "exceeds budget.max_epochs (4)"),
    ),
    (
        "epochs_constant_above_max_epochs",
        {"params.epochs": 5},
        ("params.epochs", "exceeds budget.max_epochs (4)"),
    ),
    (
        "grace_period_above_max_epochs",
        {"scheduler.grace_period": 5},
        ("scheduler.grace_period (5)", "budget.max_epochs (4)"),
    ),
    ("mode_min_for_val_acc", {"mode": "min"}, ("mode", "val_acc is better higher, so its mode")),
    (
        "mode_max_for_val_loss",
        {"metric": "val_loss"},
        ("mode", "val_loss is better lower, so its mode is min"),
    ),
    (
        "mode_max_for_val_rmse",
        {"task": "regression", "data": {"source": "diabetes"}, "metric": "val_rmse"},
        ("mode", "val_rmse is better lower"),
    ),
    ("unknown_metric", {"metric": "val_f1"}, ("metric", "'val_f1' is not one of val_loss")),
    (
        "custom_metric_without_mode",
        {"metrics": "my_scores:score", "metric": "val_recall", "mode": None},
        ("mode: give max or min for val_recall",),
    ),
    (
        "custom_metric_not_val",
        {"metrics": "my_scores:score", "metric": "recall"},
        ("metric", "'recall' is neither ours", "val_<key> of a key that metrics"),
    ),
    (
        "metrics_not_a_reference",
        {"metrics": "my_scores.score", "metric": "val_recall"},
        ("metrics", "is not a function reference"),
    ),
    (
        "metric_of_another_task",
        {"metric": "val_r2"},
        ("metric", "val_r2 does not apply to task classification", "val_macro_f1"),
    ),
    (
        "regression_on_classes",
        {"task": "regression", "metric": None, "mode": None},
        ("task", "data.source digits is a classification set, not regression"),
    ),
    (
        "smoothing_in_a_regression",
        {
            "task": "regression",
            "metric": None,
            "mode": None,
            "data": {"source": "diabetes"},
            "params": {"label_smoothing": {"type": "float", "low": 0, "high": 0.1}},
        },
        ("params.label_smoothing", "applies to classification only"),
    ),
    (
        "n_initial_points_equal_num_samples",
        {"search.n_initial_points": 6},
        ("search.n_initial_points (6)", "budget.num_samples (6)"),
    ),
    (
        "n_initial_points_above_num_samples",
        {"search.n_initial_points": 9},
        ("search.n_initial_points (9)", "budget.num_samples (6)"),
    ),
    (
        "point_key_not_in_space",
        {"search.points_to_evaluate": [{**POINT, "hiden_units": 16}]},
        (
            "search.points_to_evaluate[0]",
            "'hiden_units' is not sampled",
            "did you mean 'hidden_units'",
        ),
    ),
    (
        "point_key_of_other_branch",
        {"search.points_to_evaluate": [{**POINT, "momentum": 0.9}]},
        ("search.points_to_evaluate[0]", "'momentum' is not sampled"),
    ),
    (
        "point_missing_key",
        {"search.points_to_evaluate": [POINT, {k: v for k, v in POINT.items() if k != "dropout"}]},
        ("search.points_to_evaluate[1]", "missing a value for 'dropout'"),
    ),
    (
        "point_missing_conditional_key",
        {"search.points_to_evaluate": [{**POINT, "optimizer": "momentum"}]},
        ("search.points_to_evaluate[0]", "missing a value for 'momentum'"),
    ),
    (
        "point_float_out_of_range",
        {"search.points_to_evaluate": [{**POINT, "lr": 0.5}]},
        ("search.points_to_evaluate[0].lr", "0.5 is outside [0.001, 0.1]"),
    ),
    (
        "point_int_out_of_range",
        {"search.points_to_evaluate": [{**POINT, "hidden_layers": 3}]},
        ("search.points_to_evaluate[0].hidden_layers", "outside [1, 2]"),
    ),
    (
        "point_not_a_choice",
        {"search.points_to_evaluate": [{**POINT, "hidden_units": 17}]},
        ("search.points_to_evaluate[0].hidden_units", "17 is not one of the choices"),
    ),
    (
        "point_string_for_float",
        {"search.points_to_evaluate": [{**POINT, "lr": "fast"}]},
        ("search.points_to_evaluate[0].lr", "outside"),
    ),
    (
        "cnn_on_wine",
        {"data.source": "wine", "data.limit": DELETE, "model": {"family": "cnn"}},
        ("model.family", "cnn needs image data", "wine is tabular"),
    ),
    (
        "cnn_on_csv",
        {"data": {"source": "csv", "path": "x.csv", "target": "y"}, "model": {"family": "cnn"}},
        ("model.family", "csv is tabular"),
    ),
    (
        "csv_without_target",
        {"data": {"source": "csv", "path": "x.csv"}},
        ("data", "needs 'path'", "'target'"),
    ),
    (
        "target_on_digits",
        {"data.target": "label"},
        ("data", "'target' only applies to sources csv and parquet"),
    ),
    (
        "fractions_leave_no_training",
        {"data.val_fraction": 0.5, "data.test_fraction": 0.45},
        ("data", "val_fraction + test_fraction"),
    ),
    ("limit_too_small", {"data.limit": 5}, ("data.limit",)),
    ("unknown_source", {"data.source": "cifar"}, ("data.source", "'cifar'")),
    ("missing_budget", {"budget": DELETE}, ("budget", "required key is missing")),
    (
        "missing_max_epochs",
        {"budget.max_epochs": DELETE},
        ("budget.max_epochs", "required key is missing"),
    ),
    ("bad_name", {"name": "has spaces"}, (": name: String should match pattern", "'has spaces'")),
    ("fractional_gpus_above_one", {"resources": {"gpus": 1.5}}, ("resources", "gpus above 1")),
]


@pytest.mark.parametrize(
    ("changes", "fragments"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_space_names_file_and_key(
    tmp_path: Path, changes: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    assert_error(write(tmp_path, edited(changes)), *fragments)


def test_unknown_top_level_key_suggests_the_known_one(tmp_path: Path) -> None:
    raw = edited({"budget": DELETE})
    raw["budjet"] = BASE["budget"]
    assert_error(write(tmp_path, raw), "unknown key 'budjet'", "did you mean 'budget'")


def test_unknown_key_lists_the_allowed_ones(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, edited({"scheduler.grace": 2})))
    assert "scheduler: unknown key 'grace'" in message
    assert "grace_period" in message and "reduction_factor" in message


def test_every_line_of_a_multi_error_message_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, edited({"budget.num_samples": "many", "budget.max_epochs": "lots"}))
    lines = load_error(path).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{path}: budget.") for line in lines)


def test_momentum_under_adam_option_is_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        edited({"params.optimizer.values.1.momentum": {"type": "float", "low": 0.5, "high": 0.9}}),
    )
    assert_error(path, "params.optimizer.adam.momentum", "does not apply to optimizer adam")


def test_batch_size_under_gd_option_is_rejected(tmp_path: Path) -> None:
    options = [
        *BASE["params"]["optimizer"]["values"],
        {"name": "gd", "batch_size": {"type": "choice", "values": [32]}},
    ]
    path = write(tmp_path, edited({"params.optimizer.values": options}))
    assert_error(path, "params.optimizer.gd.batch_size", "does not apply to optimizer gd")


def test_point_with_fractional_int_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, edited({"search.points_to_evaluate": [{**POINT, "hidden_layers": 1.5}]}))
    assert_error(path, "search.points_to_evaluate[0].hidden_layers")


def test_momentum_top_level_with_momentum_optimizer_only_is_fine(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        edited(
            {
                "params.optimizer": "momentum",
                "params.momentum": 0.9,
                "params.batch_size": {"type": "choice", "values": [32, 64]},
            }
        ),
    )
    experiment = load_experiment(path)
    assert experiment.params["momentum"] == 0.9


def test_valid_points_to_evaluate_in_both_branches(tmp_path: Path) -> None:
    momentum_point = {**POINT, "optimizer": "momentum", "momentum": 0.9, "batch_size": 64}
    path = write(tmp_path, edited({"search.points_to_evaluate": [POINT, momentum_point]}))
    assert load_experiment(path).search.points_to_evaluate == [POINT, momentum_point]


def test_constants_need_no_value_in_a_point(tmp_path: Path) -> None:
    point = {k: v for k, v in POINT.items() if k != "dropout"}
    path = write(tmp_path, edited({"params.dropout": 0.2, "search.points_to_evaluate": [point]}))
    assert load_experiment(path).params["dropout"] == 0.2


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: smoke\nbudget: {num_samples: 6\nparams: [\n")
    assert_error(path, "not valid YAML")


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- name: smoke\n")
    assert_error(path, "expected a mapping")


def test_missing_file(tmp_path: Path) -> None:
    assert_error(tmp_path / "nope.yaml", "no such search-space file")


# --- --set overrides ---------------------------------------------------------------------------


def test_overrides_change_values(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    experiment = load_experiment(
        path,
        [
            "budget.num_samples=10",
            "data.limit=300",
            "search.algorithm=random",
            "params.lr.high=0.05",
            "params.weight_decay=0.001",
        ],
    )
    assert experiment.budget.num_samples == 10
    assert experiment.data.limit == 300
    assert experiment.search.algorithm == "random"
    assert experiment.n_initial_points == 10  # random search: every trial is random
    assert isinstance(experiment.params["lr"], FloatParam) and experiment.params["lr"].high == 0.05
    assert experiment.params["weight_decay"] == 0.001
    assert yaml.safe_load(path.read_text()) == BASE  # the file itself is untouched


def test_override_creates_a_missing_section(tmp_path: Path) -> None:
    experiment = load_experiment(write(tmp_path, BASE), ["resources.cpus=2"])
    assert experiment.resources.cpus == 2


def test_override_with_bad_value_names_file_and_key(tmp_path: Path) -> None:
    assert_error(
        write(tmp_path, BASE),
        "budget.num_samples",
        "valid integer",
        "'abc'",
        overrides=["budget.num_samples=abc"],
    )


def test_override_that_breaks_a_cross_check(tmp_path: Path) -> None:
    assert_error(
        write(tmp_path, BASE),
        "search.n_initial_points (3)",
        "budget.num_samples (2)",
        overrides=["budget.num_samples=2"],
    )


@pytest.mark.parametrize("override", ["budget.num_samples", "=4", ""])
def test_override_without_key_value_errors(tmp_path: Path, override: str) -> None:
    message = load_error(write(tmp_path, BASE), [override])
    assert "expected key=value" in message
    assert repr(override) in message


def test_override_through_a_scalar_errors(tmp_path: Path) -> None:
    assert_error(
        write(tmp_path, BASE), "--set name.x", "'name' is not a mapping", overrides=["name.x=1"]
    )


# --- the shipped files ------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_loads(path: Path) -> None:
    experiment = load_experiment(path)
    assert isinstance(experiment, Experiment)
    assert experiment.budget.num_samples >= 1


def test_shipped_spaces_exist() -> None:
    assert {"default.yaml", "smoke.yaml"} <= {p.name for p in SPACES.glob("*.yaml")}


def test_default_space_is_digits_mlp() -> None:
    experiment = load_experiment(SPACES / "default.yaml")
    assert experiment.data.source == "digits"
    assert experiment.model.family == "mlp"
    assert experiment.model_name == "digits-mlp"
    assert experiment.metric == "val_acc" and experiment.mode == "max"


# --- flat trial parameters ----------------------------------------------------------------------


def test_flatten_sample_lifts_the_chosen_option() -> None:
    sample = {
        "lr": 0.01,
        "optimizer": {"name": "momentum", "momentum": 0.8, "batch_size": 32},
        "activation": "tanh",
    }
    assert flatten_sample(sample) == {
        "lr": 0.01,
        "optimizer": "momentum",
        "momentum": 0.8,
        "batch_size": 32,
        "activation": "tanh",
    }
    assert flatten_sample({"optimizer": {"name": "gd"}}) == {"optimizer": "gd"}
    assert flatten_sample({"lr": 0.1}) == {"lr": 0.1}


def test_from_params_gd_has_no_batch_size() -> None:
    hp = Hyperparameters.from_params(flatten_sample({"optimizer": {"name": "gd"}, "lr": 0.5}))
    assert hp.optimizer == "gd"
    assert hp.batch_size is None
    assert hp.lr == 0.5
    # Even a batch size that slipped through is dropped for full-batch descent.
    assert Hyperparameters.from_params({"optimizer": "gd", "batch_size": 32}).batch_size is None


def test_from_params_momentum_option() -> None:
    params = flatten_sample(
        {
            "optimizer": {"name": "momentum", "momentum": 0.7, "batch_size": 16.0},
            "hidden_layers": 2.0,
        }
    )
    hp = Hyperparameters.from_params(params)
    assert (hp.optimizer, hp.momentum, hp.batch_size) == ("momentum", 0.7, 16)
    assert isinstance(hp.batch_size, int)
    # Not a training hyperparameter: the builder's, passed on as sampled.
    assert hp.builder_args == {"hidden_layers": 2.0}


def test_from_params_defaults_for_absent_keys() -> None:
    hp = Hyperparameters.from_params({"lr": 0.02})
    assert hp == Hyperparameters(lr=0.02)
    assert (hp.optimizer, hp.batch_size, hp.epochs, hp.builder_args) == ("adam", 64, None, {})
    assert Hyperparameters.from_params({}) == Hyperparameters()


def test_planned_epochs_capped_by_max_epochs() -> None:
    assert Hyperparameters().planned_epochs(12) == 12
    assert Hyperparameters(epochs=5).planned_epochs(12) == 5
    assert Hyperparameters(epochs=50).planned_epochs(12) == 12
    assert Hyperparameters.from_params({"epochs": 7.0}).planned_epochs(4) == 4


def test_a_recorded_trial_becomes_a_point_of_the_space() -> None:
    """As trials.csv records a trial: every config value, floats where pandas saw NaN."""
    params = load_experiment(SPACES / "default.yaml").params
    row = {"lr": 0.01, "hidden_layers": 2.0, "hidden_units": 64.0, "activation": "relu"}
    row |= {"dropout": 0.1, "weight_decay": 1e-5, "optimizer": "adam", "batch_size": 32.0}
    row |= {"label_smoothing": 0.05}
    point = point_from_values(params, row, "warm start")
    assert point == {**row, "hidden_layers": 2, "hidden_units": 64, "batch_size": 32}
    assert [type(point[k]) for k in ("hidden_layers", "hidden_units", "batch_size")] == [int] * 3
    # Values the chosen option does not use (momentum of another optimizer) are left out.
    assert point_from_values(params, {**row, "momentum": 0.9}, "warm start") == point


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_units": 48.0}, "warm start.hidden_units: 48.0 is not one of the choices"),
        ({"lr": 0.9}, r"warm start.lr: 0.9 is outside \[0.0001, 0.5\]"),
        ({"activation": None}, "warm start: missing a value for 'activation'"),
    ],
)
def test_a_trial_the_space_no_longer_holds_names_the_key(
    change: dict[str, Any], message: str
) -> None:
    params = load_experiment(SPACES / "default.yaml").params
    row = {"lr": 0.01, "hidden_layers": 2, "hidden_units": 64, "activation": "relu"}
    row |= {"dropout": 0.1, "weight_decay": 1e-5, "optimizer": "adam", "batch_size": 32}
    row |= {"label_smoothing": 0.05}
    row = {k: v for k, v in {**row, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        point_from_values(params, row, "warm start")
