"""The report's pictures: optimization history, parallel coordinates, importance, learning
curves and trial states, each a matplotlib figure (imported only when one is drawn) and its PNG."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.config.metrics import score_of
from pipeline.report.sweep import SweepData, order_of

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
                x[group.index],
                group[data.metric],
                s=28,
                color=state_colour(str(state)),
                label=f"trial ({state})",
                zorder=3,
            )
        valid = trials[trials["valid"] & x.notna()]
        order = x[valid.index].sort_values(kind="stable").index
        if len(order):
            axes.step(
                x[order],
                best_so_far(valid.loc[order, data.metric], data.higher_is_better),
                where="post",
                color=BEST_COLOUR,
                linewidth=2,
                label="best so far",
                zorder=2,
            )
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
                x - 0.04,
                y,
                label,
                ha="right",
                va="center",
                fontsize=8,
                zorder=6,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )
    scores = trials[data.metric]
    colour_map = colormaps["viridis" if data.higher_is_better else "viridis_r"]
    norm = Normalize(scores.min(), scores.max()) if scores.notna().any() else Normalize(0, 1)
    best_id = data.best.trial_id if data.best else None
    for row in trials.index:
        ys = [placed[name][row] for name in columns]
        score = scores[row]
        is_best = trials.at[row, "trial_id"] == best_id
        axes.plot(
            range(len(columns)),
            ys,
            color=colour_map(norm(score)) if pd.notna(score) else "#bbbbbb",
            linewidth=3 if is_best else 1.3,
            alpha=1.0 if is_best else 0.75,
            zorder=3 if is_best else 2,
            path_effects=[withStroke(linewidth=5, foreground="black")] if is_best else None,
        )
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
    """The sweep's metric and the validation loss per epoch of every trial, coloured by state;
    each trial's last epoch marked by how it ended, the best trial drawn thick."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    drawn = [c for c in data.histories.columns if c not in ("trial_id", "epoch")]
    figure, panels = new_figure(5.5 * len(drawn), 4.5, len(drawn))
    states = dict(zip(data.trials["trial_id"], data.trials["state"], strict=True))
    best_id = data.best.trial_id if data.best else None
    histories = data.histories.sort_values(["trial_id", "epoch"])
    for axes, metric in zip(panels, drawn, strict=True):
        for trial_id, history in histories.groupby("trial_id"):
            finite = history[np.isfinite(history[metric])]
            if finite.empty:
                continue
            state = states.get(str(trial_id), "")
            is_best = trial_id == best_id
            axes.plot(
                finite["epoch"],
                finite[metric],
                color=BEST_COLOUR if is_best else state_colour(state),
                linewidth=3 if is_best else 1,
                alpha=1.0 if is_best else 0.55,
                zorder=4 if is_best else 2,
            )
            if state in END_MARKERS:
                last = finite.iloc[-1]
                axes.scatter(
                    last["epoch"],
                    last[metric],
                    marker=END_MARKERS[state][0],
                    s=45,
                    color=state_colour(state),
                    edgecolors="white",
                    linewidths=0.5,
                    zorder=5,
                )
        values = histories[metric][np.isfinite(histories[metric])]
        # A diverging trial's loss dwarfs the others': a log axis keeps them all readable.
        if (
            (data.mode if metric == data.metric else score_of(metric).mode) == "min"
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
