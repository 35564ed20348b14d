"""The sweep report, drawn from synthetic trial tables: every section, valid PNGs, a page that
opens offline, importance that finds the parameter that matters and says so when it cannot."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from pipeline.core.decisions import Opinion, select
from pipeline.core.trials import read_trials
from pipeline.report import SweepData, Winner, build_report
from pipeline.report.emphasis import broke
from pipeline.report.figures import MISSING, axis_positions
from pipeline.report.importance import importances, permutation_drops, what_breaks

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("history", "parallel", "importance", "curves", "states")
STATES = ("completed", "stopped", "diverged", "errored", "interrupted")


def sweep(
    trials: int = 12, metric: str = "val_acc", seed: int = 0, run_name: str = "smoke-1"
) -> SweepData:
    """A sweep whose score depends on lr alone (log-scaled): 0.95 at lr 1e-2, falling off on
    both sides; the other hyperparameters are noise. Some trials stopped, one diverged, one
    errored."""
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-4, 0, trials)
    accuracy = 0.95 - 0.2 * np.abs(np.log10(lr) + 2)
    optimizer = rng.choice(["adam", "momentum"], trials)
    states = ["completed" if i % 3 else "stopped" for i in range(trials)]
    states[-1], states[-2] = "diverged", "errored"
    table = pd.DataFrame(
        {
            "trial_id": [f"{i:04x}ab" for i in range(trials)],
            "state": states,
            "lr": lr,
            "optimizer": optimizer,
            "momentum": np.where(optimizer == "momentum", rng.uniform(0.5, 0.95, trials), np.nan),
            "hidden_units": rng.choice([16, 32, 64], trials),
            "epoch": 4,
            "val_acc": accuracy,
            "val_loss": 2.5 * (1 - accuracy),
            "number": range(1, trials + 1),
            "end_seconds": np.arange(1, trials + 1) * 30.0,
        }
    )
    table.loc[table["state"] == "diverged", ["val_acc", "val_loss", "epoch"]] = np.nan
    table["valid"] = table["state"].isin(["completed", "stopped"])
    epochs = []
    for row in table.itertuples():
        reached = {"completed": 4, "stopped": 1, "diverged": 2, "errored": 3}[row.state]
        for epoch in range(1, reached + 1):
            final = row.val_acc if row.state != "diverged" else 0.1
            loss = np.inf if row.state == "diverged" and epoch == reached else 2.5 * (1 - final)
            epochs.append((row.trial_id, epoch, final * epoch / reached, loss + 1 / epoch))
    histories = pd.DataFrame(epochs, columns=["trial_id", "epoch", "val_acc", "val_loss"])
    mode = "max" if metric == "val_acc" else "min"
    ranked = table[table["valid"]].sort_values(metric, ascending=mode == "min")
    winners = read_trials(ranked.drop(columns=["end_seconds", "valid"]))
    winner = None
    if len(winners) > 1:  # the runner-up's second opinion overruled the sweep
        first, second = winners[0], winners[1]
        opinions = [
            Opinion(r.trial_id, 4, r.scores[metric], opinion, label=r.label)
            for r, opinion in ((first, 0.90), (second, 0.93))
        ]
        chosen = select(opinions, metric, "max" if metric == "val_acc" else "min")
        registered = second if chosen.chosen.trial_id == second.trial_id else first
        winner = Winner(
            row=registered, model_version="smoke-digits-mlp version 3", selection=chosen
        )
    return SweepData(
        experiment="smoke",
        run_name=run_name,
        parent_run_id="0123456789abcdef",
        started=datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc),
        metric=metric,
        mode=mode,
        seed=7,
        params=("lr", "optimizer", "momentum", "hidden_units"),
        log_params=frozenset({"lr"}),
        states=STATES,
        trials=table,
        histories=histories,
        best=winners[0] if winners else None,
        winner=winner,
    )


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_every_section_is_drawn_and_embedded() -> None:
    data = sweep()
    report = build_report(data)
    assert set(report.pngs) == {f"{name}.png" for name in SECTIONS}
    for png in report.pngs.values():
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
    for name in SECTIONS:
        assert f'<section id="{name}">' in report.html
    # The page holds the very pictures that are logged beside it.
    assert embedded_pngs(report.html) == list(report.pngs.values())


def test_the_page_opens_offline() -> None:
    page = build_report(sweep()).html
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page


def test_the_header_names_the_registered_trial_as_the_winner_and_says_why() -> None:
    data = sweep()
    page = build_report(data).html
    assert data.best is not None and data.winner is not None
    registered, best = data.winner.row, data.best
    assert registered.trial_id != best.trial_id  # the second opinion overruled the sweep
    for fact in ("smoke", "smoke-1", "0123456789abcdef", "smoke-digits-mlp version 3"):
        assert fact in page
    header = page.split("<h2>")[0]
    assert f"{registered.name}: smoke-digits-mlp version 3" in header
    assert f"{registered.scores['val_acc']:.4f} at epoch 4</td>" in header
    # The sweep's own best is named too, as such, not as the winner.
    assert (
        f"sweep&#x27;s best val_acc</th><td>{best.scores['val_acc']:.4f} at epoch 4: {best.name}"
        in header
    )
    assert "12 (6 completed, 4 stopped, 1 diverged, 1 errored)" in header
    # The candidates side by side, and the one sentence that says why.
    chosen = page.split("How the winner was chosen")[1].split("</table>")[0]
    assert "had the best second opinion on fresh folds" in chosen
    assert f"sweep&#x27;s leader {best.label}" in chosen
    assert f"<td>{registered.label}</td><td>2</td>" in chosen and "registered" in chosen
    assert "<td>0.9300</td>" in chosen and "<td>0.9000</td>" in chosen
    winner = page.split("The winner's hyperparameters")[1].split("</table>")[0]
    assert winner.startswith(f" ({registered.label})")
    assert f"<code>{registered.params['optimizer']}</code>" in winner
    # A parameter the winner never sampled (another optimizer's) is not listed for it.
    assert ("momentum" in winner) == (registered.params["optimizer"] == "momentum")
    # One sentence per picture saying what it answers, and the winner's.
    assert page.count('<p class="question">') == len(SECTIONS) + 1


def test_text_from_the_store_is_escaped() -> None:
    page = build_report(sweep(run_name="<b>x</b>")).html
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_importance_finds_the_parameter_that_matters_and_is_seeded() -> None:
    data = sweep(trials=30)
    found = importances(data)
    assert isinstance(found, pd.DataFrame)
    assert found.index[0] == "lr"
    assert found.loc["lr", "importance"] > 3 * found.drop("lr")["importance"].max()
    again = importances(data)
    assert isinstance(again, pd.DataFrame)
    pd.testing.assert_frame_equal(found, again)


def test_permutation_drops_agree_with_scikit_learns_permutation_importance() -> None:
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    features = rng.random((40, 3))
    targets = 2 * features[:, 0] + 0.5 * features[:, 1]  # the third column is ignored
    model = LinearRegression().fit(features, targets)
    drops = permutation_drops(model.predict, features, targets, repeats=200, seed=1)
    assert drops.shape == (3, 200)
    assert np.allclose(drops[2], 0.0, atol=1e-12), "shuffling an unused column costs nothing"
    theirs = permutation_importance(model, features, targets, n_repeats=200, random_state=1)
    # The same statistic over other shuffles: equal within sampling noise (5%).
    assert np.allclose(drops.mean(axis=1), theirs.importances_mean, rtol=0.05)
    assert np.allclose(drops.std(axis=1), theirs.importances_std, rtol=0.15)


@pytest.mark.parametrize("trials", [3, 5])  # 3 or 5 trials, of which 2 not valid: 1 or 3 valid
def test_too_few_trials_for_importance_says_so_instead_of_a_plot(trials: int) -> None:
    report = build_report(sweep(trials=trials))
    assert "importance.png" not in report.pngs
    assert "Too few trials" in report.html
    assert set(report.pngs) == {f"{name}.png" for name in SECTIONS if name != "importance"}


def test_a_sweep_without_any_score_still_reports() -> None:
    data = sweep(trials=4)
    trials = data.trials.assign(state="diverged", valid=False, val_acc=np.nan, val_loss=np.nan)
    empty = SweepData(**{**data.__dict__, "trials": trials, "best": None})
    report = build_report(empty)
    assert "no trial completed or stopped" in report.html
    assert "states.png" in report.pngs and "history.png" in report.pngs


def test_a_loss_metric_is_minimised() -> None:
    data = sweep(metric="val_loss")
    page = build_report(data).html
    assert data.best is not None
    assert data.best.scores["val_loss"] == data.trials.loc[data.trials["valid"], "val_loss"].min()
    # The sweep's best (the lowest) had the best second opinion too: it is the winner, once.
    assert data.winner is not None and data.winner.row == data.best
    assert f"winner&#x27;s val_loss</th><td>{data.best.scores['val_loss']:.4f}" in page
    assert "sweep&#x27;s best" not in page and "led the sweep" in page


def test_parallel_axes_space_categories_evenly_and_log_scale_numbers() -> None:
    positions, ticks = axis_positions(pd.Series(["sgd", "adam", "momentum", "adam"]), log=False)
    assert positions.tolist() == [1.0, 0.0, 0.5, 0.0]
    assert ticks == [(0.0, "adam"), (0.5, "momentum"), (1.0, "sgd")]
    positions, ticks = axis_positions(pd.Series([1e-4, 1e-3, 1e-2, np.nan]), log=True)
    assert positions.tolist() == pytest.approx([0.0, 0.5, 1.0, MISSING])
    assert ticks == [(0.0, "0.0001"), (0.5, "0.001"), (1.0, "0.01"), (MISSING, "n/a")]
    positions, ticks = axis_positions(pd.Series([16, 32, 64]), log=False)
    assert [label for _, label in ticks] == ["16", "32", "64"]  # each integer, none between


def test_trials_that_did_not_train_are_told_apart_from_what_to_narrow_next() -> None:
    """Half the trials used an optimizer that never learns (chance, 0.1): they are left out of
    the importance, which then finds lr among those that trained, and named apart."""
    data = sweep(trials=30)
    trials = data.trials.copy()
    # The others all learned: 0.95 to 0.97, by how far lr is from 1e-2.
    trials["val_acc"] = 0.97 - 0.01 * np.abs(np.log10(trials["lr"]) + 2).clip(upper=2)
    stuck = trials.index[::2]
    trials.loc[stuck, "optimizer"] = "gd"
    trials.loc[trials.index[1::2], "optimizer"] = "adam"
    trials.loc[stuck[trials.loc[stuck, "valid"]], "val_acc"] = 0.1
    data = replace(data, trials=trials)
    broken = broke(data)
    valid_stuck = set(trials.loc[stuck][trials.loc[stuck, "valid"]]["trial_id"])
    assert broken == valid_stuck
    assert "optimizer=gd" in " ".join(what_breaks(data))
    found = importances(data)
    assert isinstance(found, pd.DataFrame) and found.index[0] == "lr"
    assert f"Left out of it: {len(valid_stuck)} trial(s)" in build_report(data).html


def test_a_sweep_whose_trials_all_trained_leaves_none_out() -> None:
    data = sweep(trials=30)
    trials = data.trials.assign(val_acc=lambda t: 0.95 + 0.02 * (t["val_acc"] - 0.5))
    assert broke(replace(data, trials=trials)) == frozenset()
