"""A sweep's report: pictures of how the search went and one self-contained HTML page holding
them. Plain data in (tables of trials and of their epochs), PNG bytes and HTML text out; no Ray,
no MLflow, so it is drawn the same from a live sweep or from a store read years later."""

from __future__ import annotations

import pandas as pd

from pipeline.report.figures import (
    curves_figure,
    history_figure,
    importance_figure,
    parallel_figure,
    png,
    states_figure,
)
from pipeline.report.importance import importance_note, importances
from pipeline.report.page import page
from pipeline.report.sweep import Report, Section, SweepData

__all__ = ["Report", "Section", "SweepData", "build_report"]


def build_report(data: SweepData) -> Report:
    """Draw every section of the report and write the HTML page that holds them."""
    importance = importances(data)
    sections = (
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
            note=importance if isinstance(importance, str) else importance_note(data),
        ),
        Section(
            name="curves",
            title="Learning curves",
            question="How did each trial learn epoch by epoch, and where did ASHA stop the weak "
            "ones?",
            png=png(curves_figure(data)),
        ),
        Section(
            name="states",
            title="Trial states",
            question="How many trials ran to the end, were stopped early, diverged or failed?",
            png=png(states_figure(data)),
        ),
    )
    return Report(page(data, sections), sections)
