"""A sweep's report: pictures of how the search went and one self-contained HTML page holding
them. Plain data in (tables of trials and of their epochs), PNG bytes and HTML text out; no Ray,
no MLflow, so it is drawn the same from a live sweep or from a store read years later."""

from __future__ import annotations

import pandas as pd

from pipeline.report.emphasis import broke
from pipeline.report.figures import (
    curves_figure,
    history_figure,
    importance_figure,
    parallel_figure,
    png,
    states_figure,
)
from pipeline.report.importance import importance_note, importances, trained, what_breaks
from pipeline.report.page import page
from pipeline.report.sweep import Report, Section, SweepData, Winner

__all__ = ["Report", "Section", "SweepData", "Winner", "build_report", "draw_sections"]


def build_report(data: SweepData, sections: tuple[Section, ...] | None = None) -> Report:
    """Draw every section of the report (unless given `sections`, drawn for the same trials and
    winner) and write the HTML page that holds them."""
    if sections is None:
        sections = draw_sections(data)
    return Report(page(data, sections), sections)


def draw_sections(data: SweepData) -> tuple[Section, ...]:
    """Each section of the report: its picture, or the note of why it has none."""
    importance = importances(data)
    return (
        Section(
            name="history",
            title="Optimization history",
            question="Is the search still finding better configurations, by trial and by wall "
            "time, or has it levelled off?",
            png=png(history_figure(data)),
        ),
        Section(
            name="parallel",
            title="Hyperparameters against the score",
            question="Which values of each hyperparameter do the best trials share?",
            png=png(parallel_figure(data)) if data.params else None,
            note="" if data.params else "the sweep sampled no hyperparameters",
        ),
        Section(
            name="importance",
            title="Hyperparameter importance",
            question="Which hyperparameters explain most of the differences in score between "
            "trials?",
            png=png(importance_figure(importance, data))
            if isinstance(importance, pd.DataFrame)
            else None,
            note=" ".join(
                [
                    importance if isinstance(importance, str) else importance_note(data),
                    *breaking_note(data),
                ]
            ),
        ),
        Section(
            name="curves",
            title="Learning curves",
            question="How did each trial learn epoch by epoch, where did ASHA stop the weak "
            "ones, and have the best levelled off?",
            png=png(curves_figure(data)),
            note=loss_note(data),
        ),
        Section(
            name="states",
            title="Trial states",
            question="How many trials ran to the end, were stopped early, diverged or failed?",
            png=png(states_figure(data)),
        ),
    )


def breaking_note(data: SweepData) -> list[str]:
    """What breaks training, apart from the importance of what to narrow next."""
    broken = broke(data)
    if not broken:
        return []
    lines = what_breaks(data) or ["no one value or range they share"]
    return [
        f"Left out of it: {len(broken)} trial(s) that scored far below the "
        f"{len(trained(data))} others (they failed to learn, or ASHA stopped them before they "
        f"did). What they share: {'; '.join(lines)}."
    ]


def loss_note(data: SweepData) -> str:
    """Whether the validation losses compare across trials that trained on different losses."""
    varied = [
        name
        for name in ("label_smoothing", "loss")
        if name in data.trials and data.trials[name].nunique(dropna=True) > 1
    ]
    if not varied:
        return ""
    return (
        f"The trials trained with different {' and '.join(varied)}; val_loss is the same plain "
        "loss for every trial (cross-entropy without smoothing, or squared error in the "
        "target's units), so its curves compare, but the trials' own training losses do not."
    )
