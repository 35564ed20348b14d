"""A sweep's report: pictures of how the search went and one self-contained HTML page holding
them. Plain data in (tables of trials and of their epochs), PNG bytes and HTML text out; no Ray,
no MLflow, so it is drawn the same from a live sweep or from a store read years later."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MIN_IMPORTANCE_TRIALS = 4  # below this a forest fitted to the trials says nothing
IMPORTANCE_REPEATS = 20  # shuffles per hyperparameter in the permutation test
STATE_COLOURS = {
    "completed": "#1f77b4",
    "stopped": "#ff7f0e",
    "diverged": "#d62728",
    "errored": "#222222",
    "interrupted": "#9e9e9e",
}
OTHER_COLOUR = "#8c564b"
# How a trial's last epoch is marked on the learning curves; completed trials need no mark.
END_MARKERS = {
    "stopped": ("v", "stopped early by ASHA"),
    "diverged": ("X", "diverged"),
    "errored": ("s", "errored"),
    "interrupted": ("o", "interrupted"),
}
BEST_COLOUR = "#2ca02c"
MISSING = -0.12  # where a trial without the hyperparameter sits on a parallel axis


@dataclass(frozen=True)
class SweepData:
    """What a report shows, as plain values.

    `trials`: one row per trial with `trial_id`, `state`, `valid` (may be the best trial: has a
    score and neither diverged nor errored), `number` (the searcher's order, from 1),
    `end_seconds` (when it ended, since the sweep started; NaN if unknown), the score column
    `metric` (its best epoch's), `epoch` (that epoch) and one column per name in `params`.
    `histories`: one row per trial and epoch with `trial_id`, `epoch`, `val_acc`, `val_loss`.
    """

    experiment: str
    run_name: str
    parent_run_id: str
    started: datetime
    metric: str  # val_acc or val_loss
    mode: str  # max or min
    seed: int  # of the importance forest and its shuffles
    params: tuple[str, ...]
    log_params: frozenset[str]  # sampled log-uniformly: drawn on a log axis
    states: tuple[str, ...]  # every state a trial can end in: counted even when none did
    trials: pd.DataFrame
    histories: pd.DataFrame
    best: dict[str, Any] | None  # the best valid trial's row of `trials`
    model_version: str | None = None  # the registered model version the sweep produced

    @property
    def higher_is_better(self) -> bool:
        return self.mode == "max"


@dataclass(frozen=True)
class Section:
    """One part of the report: a question, and a picture (or why there is none)."""

    name: str  # the PNG's file stem
    title: str
    question: str
    png: bytes | None
    note: str = ""


@dataclass(frozen=True)
class Report:
    """The report as files: the HTML page (pictures embedded) and each picture as a PNG."""

    html: str
    sections: tuple[Section, ...]

    @property
    def pngs(self) -> dict[str, bytes]:
        """File name -> PNG, for each section that has a picture."""
        return {f"{s.name}.png": s.png for s in self.sections if s.png is not None}


def build_report(data: SweepData) -> Report:
    """Draw every section of the report and write the HTML page that holds them."""
    importance = importances(data)
    sections = (
        Section(
            "history",
            "Optimization history",
            "Is the search still finding better configurations, by trial and by wall time, or "
            "has it levelled off?",
            png(history_figure(data)),
        ),
        Section(
            "parallel",
            "Hyperparameters against the score",
            "Which values of each hyperparameter do the best trials share?",
            png(parallel_figure(data)) if data.params else None,
            "" if data.params else "the sweep sampled no hyperparameters",
        ),
        Section(
            "importance",
            "Hyperparameter importance",
            "Which hyperparameters explain most of the differences in score between trials?",
            png(importance_figure(importance, data))
            if isinstance(importance, pd.DataFrame)
            else None,
            importance if isinstance(importance, str) else importance_note(data),
        ),
        Section(
            "curves",
            "Learning curves",
            "How did each trial learn epoch by epoch, and where did ASHA stop the weak ones?",
            png(curves_figure(data)),
        ),
        Section(
            "states",
            "Trial states",
            "How many trials ran to the end, were stopped early, diverged or failed?",
            png(states_figure(data)),
        ),
    )
    return Report(page(data, sections), sections)


# --- pictures ----------------------------------------------------------------------------------


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def new_figure(width: float, height: float, columns: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure  # only a report draws; keeps the CLI start light

    figure = Figure(figsize=(width, height), layout="constrained")  # no pyplot: no global state
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def state_colour(state: str) -> str:
    return STATE_COLOURS.get(state, OTHER_COLOUR)


def scored(data: SweepData) -> pd.DataFrame:
    """The trials that have a score, in the searcher's order."""
    trials = data.trials
    return trials[trials[data.metric].notna()].sort_values("number", kind="stable")


def best_so_far(scores: pd.Series, higher_is_better: bool) -> pd.Series:
    return scores.cummax() if higher_is_better else scores.cummin()


def history_figure(data: SweepData) -> Figure:
    """The score of each trial as a dot and the best valid score so far as a step line, against
    the trial number and against the time the trial ended."""
    from matplotlib.ticker import MaxNLocator

    figure, (by_number, by_time) = new_figure(11, 4.2, 2)
    trials = scored(data)
    seconds, unit = time_unit(trials["end_seconds"])
    for axes, x, label in (
        (by_number, trials["number"], "trial number (order the searcher suggested)"),
        (by_time, trials["end_seconds"] / seconds, f"when the trial ended ({unit} into the sweep)"),
    ):
        for state, group in trials.groupby("state"):
            axes.scatter(
                x[group.index], group[data.metric], s=28, color=state_colour(str(state)),
                label=f"trial ({state})", zorder=3,
            )  # fmt: skip
        valid = trials[trials["valid"] & x.notna()]
        order = x[valid.index].sort_values(kind="stable").index
        if len(order):
            axes.step(
                x[order], best_so_far(valid.loc[order, data.metric], data.higher_is_better),
                where="post", color=BEST_COLOUR, linewidth=2, label="best so far", zorder=2,
            )  # fmt: skip
        axes.set_xlabel(label)
        axes.set_ylabel(f"{data.metric} (best epoch)")
        axes.grid(alpha=0.3)
    by_number.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_number.set_title("by trial")
    by_time.set_title("by wall time")
    if len(trials):
        by_number.legend(fontsize=8, loc="best")
    else:
        for axes in (by_number, by_time):
            axes.text(0.5, 0.5, "no trial has a score", ha="center", transform=axes.transAxes)
    return figure


def time_unit(seconds: pd.Series) -> tuple[float, str]:
    """The unit that suits a span of seconds: (its length in seconds, its name)."""
    longest = seconds.max()
    if not longest > 120:  # also when no time is known (NaN)
        return 1.0, "seconds"
    return (60.0, "minutes") if longest <= 7200 else (3600.0, "hours")


def axis_positions(values: pd.Series, log: bool) -> tuple[pd.Series, list[tuple[float, str]]]:
    """A parameter's values placed on [0, 1] (missing ones at MISSING), and the ticks to label:
    categories evenly spaced, numbers linearly or, if `log`, on a log scale."""
    present = values.dropna()
    ticks: list[tuple[float, str]] = []
    numeric = pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present)
    if not numeric:
        categories = sorted(present.astype(str).unique())
        step = 1 / (len(categories) - 1) if len(categories) > 1 else 0.0
        where = {c: (i * step if len(categories) > 1 else 0.5) for i, c in enumerate(categories)}
        positions = values.map(lambda v: where[str(v)] if pd.notna(v) else np.nan)
        ticks = [(where[c], c) for c in categories]
    else:
        numbers = present.astype(float)
        log = log and bool((numbers > 0).all())

        def scale(value: float) -> float:
            return math.log10(value) if log else value

        low, high = (scale(numbers.min()), scale(numbers.max())) if len(numbers) else (0.0, 0.0)
        span = high - low

        def place(value: float) -> float:
            return (scale(value) - low) / span if span else 0.5

        positions = values.astype(float).map(lambda v: place(v) if pd.notna(v) else np.nan)
        if bool((numbers == numbers.round()).all()) and numbers.nunique() <= 6:
            ticks = [(place(v), f"{v:g}") for v in sorted(numbers.unique())]  # each integer
        else:
            for fraction in (0.0, 0.5, 1.0) if span else (0.5,):
                value = low + fraction * span
                ticks.append((fraction, f"{10**value if log else value:.3g}"))
    if values.isna().any():
        ticks.append((MISSING, "n/a"))
    return positions.fillna(MISSING), ticks


def parallel_figure(data: SweepData) -> Figure:
    """One vertical axis per hyperparameter, plus the score; a line per trial, coloured by its
    score (trials without one in grey), the best trial drawn thick."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patheffects import withStroke

    trials = data.trials.reset_index(drop=True)
    columns = [*data.params, data.metric]
    figure, (axes,) = new_figure(min(max(8.0, 1.15 * len(columns) + 2), 13.0), 5.0)
    placed = {}
    for x, name in enumerate(columns):
        placed[name], ticks = axis_positions(trials[name], name in data.log_params)
        axes.axvline(x, color="#555555", linewidth=1)
        for y, label in ticks:
            axes.text(
                x - 0.04, y, label, ha="right", va="center", fontsize=8, zorder=6,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )  # fmt: skip
    scores = trials[data.metric]
    colour_map = colormaps["viridis" if data.higher_is_better else "viridis_r"]
    norm = Normalize(scores.min(), scores.max()) if scores.notna().any() else Normalize(0, 1)
    best_id = data.best["trial_id"] if data.best else None
    for row in trials.index:
        ys = [placed[name][row] for name in columns]
        score = scores[row]
        is_best = trials.at[row, "trial_id"] == best_id
        axes.plot(
            range(len(columns)), ys,
            color=colour_map(norm(score)) if pd.notna(score) else "#bbbbbb",
            linewidth=3 if is_best else 1.3, alpha=1.0 if is_best else 0.75,
            zorder=3 if is_best else 2,
            path_effects=[withStroke(linewidth=5, foreground="black")] if is_best else None,
        )  # fmt: skip
    axes.set_xticks(range(len(columns)), [label_of(n, data) for n in columns], fontsize=9)
    axes.set_yticks([])
    axes.set_xlim(-0.6, len(columns) - 0.8)
    axes.set_ylim(MISSING - 0.06, 1.06)
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    colour_bar = figure.colorbar(ScalarMappable(norm, colour_map), ax=axes, pad=0.01)
    colour_bar.set_label(
        f"{data.metric} ({'higher' if data.higher_is_better else 'lower'} is better)"
    )
    outlined = f"; the best trial ({best_id}) outlined in black" if best_id is not None else ""
    axes.set_title(f"one line per trial, coloured by {data.metric}{outlined}", fontsize=10)
    return figure


def label_of(name: str, data: SweepData) -> str:
    return f"{name}\n(log scale)" if name in data.log_params else name


def encoded(data: SweepData, valid: pd.DataFrame) -> pd.DataFrame:
    """The hyperparameters as numbers for a forest: categories as codes, log-scaled ones as
    log10; missing (a parameter of another optimizer) stays NaN, which the forest handles."""
    columns = {}
    for name in data.params:
        values = valid[name]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numbers = values.astype(float)
            columns[name] = (
                np.log10(numbers)
                if name in data.log_params and (numbers.dropna() > 0).all()
                else numbers
            )
        else:
            codes = pd.Categorical(values.astype("string")).codes.astype(float)
            columns[name] = pd.Series(np.where(codes < 0, np.nan, codes), index=values.index)
    return pd.DataFrame(columns, index=valid.index)


def importances(data: SweepData) -> pd.DataFrame | str:
    """Permutation importance of each hyperparameter for a random forest fitted to the valid
    trials' scores (scikit-learn's, seeded), most important first; or why there is none."""
    from sklearn.ensemble import RandomForestRegressor

    valid = data.trials[data.trials["valid"]]
    if len(valid) < MIN_IMPORTANCE_TRIALS:
        return (
            f"too few trials: {len(valid)} valid trial(s), at least {MIN_IMPORTANCE_TRIALS} "
            "are needed to estimate importance"
        )
    features = encoded(data, valid)
    features = features.loc[:, features.nunique(dropna=False) > 1]  # a constant explains nothing
    scores = valid[data.metric].astype(float)
    if features.empty or scores.nunique() < 2:
        return "every valid trial scored the same or sampled the same values: nothing to explain"
    forest = RandomForestRegressor(n_estimators=200, random_state=data.seed, min_samples_leaf=1)
    forest.fit(features.to_numpy(), scores.to_numpy())
    drops = permutation_drops(
        forest.predict, features.to_numpy(), scores.to_numpy(), IMPORTANCE_REPEATS, data.seed
    )
    table = pd.DataFrame(
        {"importance": drops.mean(axis=1), "std": drops.std(axis=1)}, index=features.columns
    )
    return table.sort_values("importance", ascending=False)


def permutation_drops(
    predict: Callable[[np.ndarray], np.ndarray],
    features: np.ndarray,
    targets: np.ndarray,
    repeats: int,
    seed: int,
) -> np.ndarray:
    """How much the fit (R²) of `predict` drops when one column's values are shuffled: an array
    of columns x `repeats` shuffles. scikit-learn's `permutation_importance` computes the same,
    but predicts each shuffled copy in a call of its own (a forest of 200 trees then took 5 s
    for a 40-trial sweep); here every copy goes in one call."""
    rng = np.random.default_rng(seed)
    rows, columns = features.shape
    copies = np.repeat(features[np.newaxis], columns * repeats, axis=0)
    for column in range(columns):
        for repeat in range(repeats):
            copies[column * repeats + repeat, :, column] = rng.permutation(features[:, column])
    predicted = predict(copies.reshape(-1, columns)).reshape(columns, repeats, rows)
    spread = float(((targets - targets.mean()) ** 2).sum())

    def r2(values: np.ndarray) -> np.ndarray:
        return np.asarray(1.0 - ((values - targets) ** 2).sum(axis=-1) / spread)

    return np.asarray(r2(predict(features)) - r2(predicted))


def importance_note(data: SweepData) -> str:
    valid = int(data.trials["valid"].sum())
    return (
        f"A random forest fitted to {valid} valid trials; each bar is how much its fit (R²) "
        f"drops when that hyperparameter's values are shuffled ({IMPORTANCE_REPEATS} shuffles, "
        "line: their spread). With few trials, read it as a hint, not a measurement."
    )


def importance_figure(table: pd.DataFrame, data: SweepData) -> Figure:
    figure, (axes,) = new_figure(8, 1.2 + 0.45 * len(table))
    shown = table.iloc[::-1]  # the most important on top
    axes.barh(shown.index, shown["importance"], xerr=shown["std"], color="#4c72b0", capsize=3)
    axes.axvline(0, color="#555555", linewidth=0.8)
    axes.set_xlabel(f"drop in R² of the forest's fit of {data.metric} when shuffled")
    axes.grid(axis="x", alpha=0.3)
    valid = int(data.trials["valid"].sum())
    axes.set_title(f"permutation importance, random forest on {valid} valid trials", fontsize=10)
    return figure


def curves_figure(data: SweepData) -> Figure:
    """val_acc and val_loss per epoch of every trial, coloured by state; each trial's last epoch
    marked by how it ended, the best trial drawn thick."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    figure, panels = new_figure(11, 4.5, 2)
    states = dict(zip(data.trials["trial_id"], data.trials["state"], strict=True))
    best_id = data.best["trial_id"] if data.best else None
    histories = data.histories.sort_values(["trial_id", "epoch"])
    for axes, metric in zip(panels, ("val_acc", "val_loss"), strict=True):
        for trial_id, history in histories.groupby("trial_id"):
            finite = history[np.isfinite(history[metric])]
            if finite.empty:
                continue
            state = states.get(str(trial_id), "")
            is_best = trial_id == best_id
            axes.plot(
                finite["epoch"], finite[metric],
                color=BEST_COLOUR if is_best else state_colour(state),
                linewidth=3 if is_best else 1, alpha=1.0 if is_best else 0.55,
                zorder=4 if is_best else 2,
            )  # fmt: skip
            if state in END_MARKERS:
                last = finite.iloc[-1]
                axes.scatter(
                    last["epoch"], last[metric], marker=END_MARKERS[state][0], s=45,
                    color=state_colour(state), edgecolors="white", linewidths=0.5, zorder=5,
                )  # fmt: skip
        values = histories[metric][np.isfinite(histories[metric])]
        # A diverging trial's loss dwarfs the others': a log axis keeps them all readable.
        if (
            metric == "val_loss"
            and len(values)
            and values.min() > 0
            and values.max() / values.min() > 20
        ):
            axes.set_yscale("log")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(metric)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    present = set(states.values())
    handles = (
        [Line2D([], [], color=BEST_COLOUR, linewidth=3, label=f"best trial ({best_id})")]
        if best_id
        else []
    )
    handles += [
        Line2D([], [], color=state_colour(s), linewidth=1, label=s)
        for s in sorted(present, key=order_of(data))
    ]
    handles += [
        Line2D([], [], color=state_colour(s), marker=m, linestyle="", label=f"last epoch: {text}")
        for s, (m, text) in END_MARKERS.items()
        if s in present
    ]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    return figure


def order_of(data: SweepData) -> Callable[[str], tuple[int, str]]:
    """Sort key: the known states in their order, any other after them by name."""
    return lambda state: (
        data.states.index(state) if state in data.states else len(data.states),
        state,
    )


def states_figure(data: SweepData) -> Figure:
    from matplotlib.ticker import MaxNLocator

    counts = data.trials["state"].value_counts()
    states = sorted({*data.states, *counts.index.astype(str)}, key=order_of(data))
    figure, (axes,) = new_figure(7, 3.8)
    heights = [int(counts.get(s, 0)) for s in states]
    bars = axes.bar(states, heights, color=[state_colour(s) for s in states])
    axes.bar_label(bars, padding=2)
    axes.set_ylabel("trials")
    axes.set_xlabel("state the trial ended in")
    axes.set_ylim(0, max([*heights, 1]) * 1.15)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"{len(data.trials)} trials", fontsize=10)
    return figure


# --- the page ----------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1250px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { text-align: left; padding: 0.2em 0.9em 0.2em 0; vertical-align: top; }
th { color: #555; font-weight: 600; }
code { font-family: ui-monospace, monospace; font-size: 0.95em; }
.question { font-style: italic; color: #444; }
.note { color: #555; font-size: 0.9em; }
.missing { padding: 1em; background: #f6f6f6; border: 1px dashed #bbb; }
img { max-width: 100%; height: auto; }
"""


def page(data: SweepData, sections: tuple[Section, ...]) -> str:
    """The HTML page: a header of facts and the winner, then each section. Inline CSS and
    pictures as data URIs only: it opens offline, from anywhere, with no script."""
    facts = [
        ("experiment", data.experiment),
        ("sweep run", data.run_name),
        ("parent run id", data.parent_run_id),
        ("started", f"{data.started:%Y-%m-%d %H:%M} UTC"),
        ("trials", summary_of_states(data)),
        ("metric", f"{data.metric} ({data.mode})"),
    ]
    if data.best is not None:
        facts.append(
            (
                f"best {data.metric}",
                f"{float(data.best[data.metric]):.4f}: trial {data.best['trial_id']}, "
                f"epoch {int(data.best['epoch'])}",
            )
        )
    else:
        facts.append((f"best {data.metric}", "no trial completed or stopped without failing"))
    if data.model_version is not None:
        facts.append(("registered", data.model_version))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sweep report: {escape(data.run_name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Sweep report: {escape(data.run_name)}</h1>",
        rows_table(facts),
    ]
    if data.best is not None:
        # A parameter the winner did not sample (another optimizer's) is left out.
        winner = [
            (name, format_value(data.best[name]))
            for name in data.params
            if pd.notna(data.best.get(name))
        ]
        parts += ["<h2>The winner's hyperparameters</h2>", rows_table(winner, code=True)]
    for section in sections:
        parts.append(f'<section id="{section.name}"><h2>{escape(section.title)}</h2>')
        parts.append(f'<p class="question">{escape(section.question)}</p>')
        if section.png is not None:
            encoded_png = base64.b64encode(section.png).decode("ascii")
            parts.append(
                f'<img alt="{escape(section.title)}" src="data:image/png;base64,{encoded_png}">'
            )
            if section.note:
                parts.append(f'<p class="note">{escape(section.note)}</p>')
        else:
            parts.append(f'<p class="missing">{escape(section.note)}</p>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def summary_of_states(data: SweepData) -> str:
    counts = data.trials["state"].value_counts()
    states = sorted(counts.index.astype(str), key=order_of(data))
    listed = ", ".join(f"{int(counts[s])} {s}" for s in states)
    return f"{len(data.trials)}" + (f" ({listed})" if listed else "")


def rows_table(rows: list[tuple[str, str]], code: bool = False) -> str:
    def cell(text: str) -> str:
        return f"<code>{escape(text)}</code>" if code else escape(text)

    body = "".join(f"<tr><th>{escape(k)}</th><td>{cell(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def format_value(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, (float, np.floating)) else str(value)


def escape(text: str) -> str:
    return html.escape(text, quote=True)
