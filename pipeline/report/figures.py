"""The report's pictures: optimization history, parallel coordinates, importance, learning
curves and trial states, each a matplotlib figure (imported only when one is drawn) and its PNG."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.config.metrics import score_of
from pipeline.report.emphasis import (
    REGISTERED_COLOUR,
    Emphasis,
    emphasis,
    ranked_ids,
    score_scale,
)
from pipeline.report.importance import trained
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
    the trial number and against the time the trial ended; drawn on the sweep's score scale
    (`emphasis.score_scale`), the top trials in their colours, the registered one starred."""
    from matplotlib.ticker import MaxNLocator

    figure, (by_number, by_time) = new_figure(11, 4.4, 2)
    trials = scored(data)
    scale, marked = score_scale(data), emphasis(data)
    drawn = scale.drawn(trials[data.metric])
    seconds, unit = time_unit(trials["end_seconds"])
    for axes, x, label in (
        (by_number, trials["number"], "trial number (order the searcher suggested)"),
        (by_time, trials["end_seconds"] / seconds, f"when the trial ended ({unit} into the sweep)"),
    ):
        plain = trials[~trials["trial_id"].isin(marked.colours)]
        for state, group in plain.groupby("state"):
            axes.scatter(
                x[group.index],
                drawn[group.index],
                s=24,
                color=state_colour(str(state)),
                alpha=0.7,
                label=f"trial ({state})",
                zorder=3,
            )
        for trial_id, colour in marked.colours.items():
            row = trials.index[trials["trial_id"] == trial_id]
            registered = trial_id == marked.registered
            axes.scatter(
                x[row],
                drawn[row],
                s=150 if registered else 60,
                marker="*" if registered else "o",
                color=colour,
                edgecolors=REGISTERED_COLOUR if registered else "white",
                linewidths=1.2,
                label=marked.legend_label(trial_id),
                zorder=5,
            )
        valid = trials[trials["valid"] & x.notna()]
        order = x[valid.index].sort_values(kind="stable").index
        if len(order):
            best = best_so_far(valid.loc[order, data.metric], data.higher_is_better)
            axes.step(
                x[order],
                scale.drawn(best),
                where="post",
                color="#444444",
                linewidth=1.5,
                label="best so far",
                zorder=2,
            )
        axes.set_xlabel(label)
        axes.set_ylabel(f"{scale.label}, best epoch")
        if scale.log and len(trials):
            axes.set_yscale("log")
        axes.grid(alpha=0.3, which="both")
    by_number.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_number.set_title("by trial")
    by_time.set_title("by wall time")
    if len(trials):
        figure.legend(
            handles=by_number.get_legend_handles_labels()[0], loc="outside right upper", fontsize=8
        )
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
    """One vertical axis per hyperparameter, plus the score (on the sweep's score scale); a line
    per trial, grey by its rank, the top trials each in their colour, the registered one outlined
    in black."""
    trials = data.trials.reset_index(drop=True)
    scale, marked = score_scale(data), emphasis(data)
    score_axis = scale.quantity
    values = trials.assign(**{score_axis: scale.drawn(trials[data.metric])})
    columns = [*data.params, score_axis]
    figure, (axes,) = new_figure(min(max(8.0, 1.15 * len(columns) + 2), 13.0), 5.0)
    logged = {n for n in columns if n in data.log_params or (n == score_axis and scale.log)}
    placed = {}
    for x, name in enumerate(columns):
        placed[name], ticks = axis_positions(values[name], name in logged)
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
    # The rest in greys by rank: the darker, the better; trials without a score the palest.
    ranks = values[score_axis].rank(ascending=True, pct=True)
    rows = {str(values.at[row, "trial_id"]): row for row in values.index}
    for trial_id, row in rows.items():
        if trial_id not in marked.colours:
            shade = 0.85 if pd.isna(ranks[row]) else 0.35 + 0.45 * float(ranks[row])
            ys = [placed[name][row] for name in columns]
            axes.plot(range(len(columns)), ys, color=str(shade), linewidth=1.0, zorder=2)
    for trial_id, colour in marked.colours.items():  # best first: the legend's order
        registered = trial_id == marked.registered
        axes.plot(
            range(len(columns)),
            [placed[name][rows[trial_id]] for name in columns],
            color=colour,
            linewidth=3 if registered else 2.2,
            zorder=5 if registered else 4,
            label=marked.legend_label(trial_id),
            path_effects=registered_edge(registered),
        )
    names = [f"{n}\n(log scale)" if n in logged else n for n in columns]
    axes.set_xticks(range(len(columns)), names, fontsize=9)
    axes.set_yticks([])
    axes.set_xlim(-0.6, len(columns) - 0.8)
    axes.set_ylim(MISSING - 0.06, 1.06)
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    if marked.colours:
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    axes.set_title(
        f"one line per trial; the best {len(marked.colours)} in colour, the rest grey (darker: "
        f"better){'; the registered trial outlined in black' if marked.registered else ''}",
        fontsize=10,
    )
    return figure


def importance_figure(table: pd.DataFrame, data: SweepData) -> Figure:
    figure, (axes,) = new_figure(8, 1.2 + 0.45 * len(table))
    shown = table.iloc[::-1]  # the most important on top
    axes.barh(shown.index, shown["importance"], xerr=shown["std"], color="#4c72b0", capsize=3)
    axes.axvline(0, color="#555555", linewidth=0.8)
    scale = score_scale(data)
    target = f"log10({scale.quantity})" if scale.log else data.metric
    axes.set_xlabel(f"drop in R² of the forest's fit of {target} when shuffled")
    axes.grid(axis="x", alpha=0.3)
    count = len(trained(data))
    axes.set_title(
        f"permutation importance, random forest on {count} trials that trained", fontsize=10
    )
    return figure


def curves_figure(data: SweepData) -> Figure:
    """Per epoch of every trial: the sweep's metric (on its score scale), the same for the top
    ten trials on a panel of their own, and the validation loss; each trial's last epoch marked
    by how it ended, the top trials in their colours, the registered one edged in black."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    scale, marked = score_scale(data), emphasis(data)
    top_ten = ranked_ids(data)[:TOP_CURVES]
    histories = data.histories.sort_values(["trial_id", "epoch"])
    histories = histories.assign(trial_id=histories["trial_id"].astype(str))
    panels_of: list[tuple[str, list[str] | None, str]] = [
        (data.metric, None, f"{data.metric}: every trial")
    ]
    panels_of.append((data.metric, top_ten, f"{data.metric}: the best {len(top_ten)} trials"))
    panels_of += [
        (n, None, n) for n in histories.columns if n not in ("trial_id", "epoch", data.metric)
    ]
    figure, panels = new_figure(5.0 * len(panels_of), 4.5, len(panels_of))
    states = dict(zip(data.trials["trial_id"].astype(str), data.trials["state"], strict=True))
    for axes, (metric, only, title) in zip(panels, panels_of, strict=True):
        shown = histories if only is None else histories[histories["trial_id"].isin(only)]
        values = shown[metric].astype(float)
        drawn = scale.drawn(values) if metric == data.metric else values
        shown = shown.assign(drawn=drawn)[np.isfinite(drawn)]
        draw_curves(axes, shown, states, marked, dim=only is None)
        log = scale.log if metric == data.metric else loss_needs_log(shown["drawn"], data, metric)
        if log and len(shown):
            axes.set_yscale("log")
        axes.set_xlabel("epoch")
        axes.set_ylabel(scale.label if metric == data.metric else metric)
        axes.set_title(title, fontsize=10)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3, which="both")
    present = set(states.values())
    handles = [
        Line2D(
            [],
            [],
            color=colour,
            linewidth=2.5,
            label=marked.legend_label(trial_id),
            path_effects=registered_edge(trial_id == marked.registered),
        )
        for trial_id, colour in marked.colours.items()
    ]
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


TOP_CURVES = 10  # trials on the learning curves' own panel of the best


def draw_curves(
    axes: Axes, shown: pd.DataFrame, states: dict[str, str], marked: Emphasis, *, dim: bool
) -> None:
    """One line per trial of `shown` (its `drawn` column per epoch); the rest dimmed where
    `dim`, the marked trials on top."""
    for trial_id, history in shown.groupby("trial_id"):
        state = states.get(str(trial_id), "")
        colour = marked.colours.get(str(trial_id))
        registered = trial_id == marked.registered
        axes.plot(
            history["epoch"],
            history["drawn"],
            color=colour or state_colour(state),
            linewidth=2.2 if colour else 1,
            alpha=1.0 if colour or not dim else 0.45,
            zorder=4 if colour else 2,
            path_effects=registered_edge(registered),
        )
        if state in END_MARKERS:
            last = history.iloc[-1]
            axes.scatter(
                last["epoch"],
                last["drawn"],
                marker=END_MARKERS[state][0],
                s=40,
                color=state_colour(state),
                edgecolors="white",
                linewidths=0.5,
                zorder=5,
            )


def registered_edge(registered: bool) -> list[Any] | None:
    from matplotlib.patheffects import withStroke

    return [withStroke(linewidth=4.5, foreground=REGISTERED_COLOUR)] if registered else None


def loss_needs_log(values: pd.Series, data: SweepData, metric: str) -> bool:
    """A diverging trial's loss dwarfs the others': a log axis keeps them all readable."""
    lower_is_better = (data.mode if metric == data.metric else score_of(metric).mode) == "min"
    return bool(
        lower_is_better and len(values) and values.min() > 0 and values.max() / values.min() > 20
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
