"""The report's HTML page: a header of facts, the registered trial (the winner) and how it was
chosen, its hyperparameters, then each section with its picture embedded; one self-contained
file."""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

from pipeline.core.decisions import Selection
from pipeline.core.trials import TrialRow
from pipeline.report.sweep import Section, SweepData, order_of

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
    facts += outcome_facts(data)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sweep report: {escape(data.run_name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Sweep report: {escape(data.run_name)}</h1>",
        rows_table(facts),
    ]
    if data.winner is not None and data.winner.selection is not None:
        parts += [
            "<h2>How the winner was chosen</h2>",
            f'<p class="question">{escape(data.winner.selection.reason())}</p>',
            candidates_table(data.winner.selection, data.winner.row.trial_id),
        ]
    chosen = data.chosen
    if chosen is not None:
        # A parameter the winner did not sample (another optimizer's) is left out.
        winner = [
            (name, format_value(chosen.params[name]))
            for name in data.params
            if name in chosen.params
        ]
        parts += [
            f"<h2>The winner's hyperparameters ({escape(chosen.label)})</h2>",
            rows_table(winner, code=True),
        ]
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


def outcome_facts(data: SweepData) -> list[tuple[str, str]]:
    """What the sweep produced: the registered trial (the winner) and the sweep's best by its
    sweep score, which differ when a second opinion overruled the sweep."""
    metric, best, facts = data.metric, data.best, []
    if best is None:
        return [(f"best {metric}", "no trial completed or stopped without failing")]
    if data.winner is not None:
        row = data.winner.row
        facts.append(("winner (registered)", f"{row.name}: {data.winner.model_version}"))
        facts.append((f"winner's {metric}", describe_score(row, metric)))
    else:
        facts.append(("winner", f"{best.name}: not retrained or registered yet"))
    if data.winner is None or data.winner.row.trial_id != best.trial_id:
        facts.append((f"sweep's best {metric}", f"{describe_score(best, metric)}: {best.name}"))
    return facts


def describe_score(row: TrialRow, metric: str) -> str:
    return f"{row.score(metric):.4f} at epoch {row.epoch}"


def candidates_table(selection: Selection, registered: str) -> str:
    """The sweep's top few side by side: their sweep score and their second opinion."""
    metric = selection.metric
    head = ["trial", "rank in the sweep", f"sweep {metric}", f"second opinion {metric}", ""]
    rows = []
    for o in sorted(selection.opinions, key=lambda o: o.rank):
        mark = "registered" if o.trial_id == registered else ""
        cells = [o.name, str(o.rank), f"{o.sweep_score:.4f}", f"{o.second_opinion:.4f}", mark]
        rows.append("".join(f"<td>{escape(c)}</td>" for c in cells))
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(f"<tr>{r}</tr>" for r in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


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
