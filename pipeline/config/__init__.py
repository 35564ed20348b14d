"""Search-space YAML -> a validated, frozen experiment.

Every entry is a small typed record checked when it is built (`records`); each hyperparameter's
meaning and domain are in `hyperparameters`; the space's tree and its one walker in `space`; the
sections and the whole experiment in `experiment`; reading a file with overrides in `loading`. A
bad file fails here, before Ray starts, with one line per problem naming the file and the key.
"""

from pipeline.config.experiment import (
    IMAGE_SOURCES,
    BudgetConfig,
    CodeConfig,
    DataConfig,
    Experiment,
    ModelConfig,
    ResourcesConfig,
    SchedulerConfig,
    SearchConfig,
)
from pipeline.config.hyperparameters import (
    HYPERPARAMETERS,
    OPTIMIZERS,
    Hyperparameter,
    Hyperparameters,
)
from pipeline.config.loading import load_experiment, parse_experiment
from pipeline.config.records import (
    ChoiceParam,
    ConditionalOption,
    FloatParam,
    IntParam,
    ParamSpec,
    Scalar,
    did_you_mean,
    option_name,
)
from pipeline.config.space import (
    SpaceNode,
    active_params,
    flatten_sample,
    log_scaled,
    point_from_values,
    walk,
)

__all__ = [
    "HYPERPARAMETERS",
    "IMAGE_SOURCES",
    "OPTIMIZERS",
    "BudgetConfig",
    "ChoiceParam",
    "CodeConfig",
    "ConditionalOption",
    "DataConfig",
    "Experiment",
    "FloatParam",
    "Hyperparameter",
    "Hyperparameters",
    "IntParam",
    "ModelConfig",
    "ParamSpec",
    "ResourcesConfig",
    "Scalar",
    "SchedulerConfig",
    "SearchConfig",
    "SpaceNode",
    "active_params",
    "did_you_mean",
    "flatten_sample",
    "load_experiment",
    "log_scaled",
    "option_name",
    "parse_experiment",
    "point_from_values",
    "walk",
]
