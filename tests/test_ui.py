"""The MLflow UI in a real browser (Debian's headless Chromium, a fresh profile) over a store
holding a smoke sweep and its promoted model: a plain experiment URL opens on its runs table
(not MLflow's GenAI overview, no assistant panel) with the trials nested under the sweep's run,
and stays there after a click into a run; a user's own choice of view is kept; sorting by
best_val_acc ranks the registered trial among the candidates given a second opinion; the
winner's run page links the version it became, and the model page shows its `champion` alias.
Screenshots are kept as test artifacts."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from mlflow.tracking import MlflowClient

from pipeline.core.decisions import CANDIDATES
from tests.conftest import (
    SmokeStore,
    background,
    cli_env,
    descendants,
    free_port,
    one_worker,
    wait_until,
)

pytestmark = [pytest.mark.slow, one_worker("ui")]
# Debian's packages (`make install-browser`): nothing here may download a browser or a driver.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MODEL = "smoke-digits-mlp"
PAGE_TIMEOUT_S = 60  # a first page load compiles MLflow's JS bundle on two busy cores
# MLflow 3.17.2's GenAI / Model-training switch, as the browser keeps it (pipeline.tracking.ui_page)
WORKFLOW = "mlflow.workflowType_v1"
# The runs table's URL state (its JS bundle's searchFacets: orderByKey, orderByAsc, ...).
BY_BEST_VAL_ACC = "orderByKey=metrics.%60best_val_acc%60&orderByAsc=false"
RUN_NAME_CELL = "[col-id='attributes.`Run Name`']"
BEST_CELL = "[col-id='metrics.`best_val_acc`']"
T = TypeVar("T")


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    """Skip where Debian's chromium is not installed, before the sweep; fail instead under
    REQUIRE_BROWSER=1 (CI, which installs it)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = f"no {' or '.join(missing)} (make install-browser)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


@dataclass(frozen=True)
class Store:
    """A store holding one smoke sweep and its promoted model, as the UI will show them."""

    folder: Path
    tracking_uri: str
    client: MlflowClient
    experiment_id: str
    parent_id: str  # the sweep's run
    children: frozenset[str]  # the runs nested under it: trials and the retrain
    trials: frozenset[str]
    winner: str  # the trial run whose configuration the champion was retrained from


@pytest.fixture(scope="module")
def store(smoke_store: SmokeStore) -> Store:
    """The run's smoke store: a sweep of smoke.yaml, its model promoted."""
    folder, tracking_uri = smoke_store.folder, smoke_store.tracking_uri
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = {r.data.tags["trial_id"]: r.info.run_id for r in children if "trial_id" in r.data.tags}
    # The champion's source run is the retrain run; it names the trial it retrained.
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id is not None
    trial_id = client.get_run(champion.run_id).data.tags["source_trial_id"]
    assert champion.tags["trial_id"] == trial_id
    return Store(
        folder,
        tracking_uri,
        client,
        experiment.experiment_id,
        parent.info.run_id,
        frozenset(r.info.run_id for r in children),
        frozenset(trials.values()),
        trials[trial_id],
    )


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class Ui:
    url: str
    pid: int  # `python -m pipeline ui`, which became MLflow's server


@pytest.fixture(scope="module")
def ui(store: Store) -> Iterator[Ui]:
    """`python -m pipeline ui` over the store, as `make ui` starts it."""
    port = free_port()
    log = store.folder / "ui.log"
    command = [sys.executable, "-m", "pipeline", "ui", "--port", str(port)]
    env = cli_env(MLFLOW_TRACKING_URI=store.tracking_uri)
    with background(command, env, store.folder, log) as server:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/health"), 120, "MLflow UI", log, server)
        yield Ui(url, server.pid)


class Browser:
    """One headless Chromium session for every page; each page is screenshotted."""

    def __init__(self, screenshots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        # Root in CI: no sandbox; /dev/shm may be small in a container.
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
            options.add_argument(argument)
        options.add_argument("--window-size=1600,1000")
        # The driver's path given: Selenium Manager (which downloads) is not run.
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.screenshots = screenshots

    def open(self, url: str, ready: Callable[[], T]) -> T:
        """Load `url` and wait until `ready` returns something truthy; return it."""
        self.driver.get(url)
        return self.wait(ready)

    def wait(self, ready: Callable[[], T]) -> T:
        from selenium.webdriver.support.wait import WebDriverWait

        return WebDriverWait(self.driver, PAGE_TIMEOUT_S).until(lambda _: ready())

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def shot(self, name: str) -> Path:
        """A screenshot under the test's folder, copied to $UI_SCREENSHOTS when set."""
        path = self.screenshots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        if copy_to := os.environ.get("UI_SCREENSHOTS"):
            Path(copy_to).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(copy_to) / path.name)
        return path

    def rows(self) -> list[str]:
        """The run ids of the runs table's rows, top to bottom."""
        from selenium.webdriver.common.by import By

        rows = self.driver.find_elements(By.CSS_SELECTOR, ".ag-pinned-left-cols-container [row-id]")
        ordered = sorted(rows, key=lambda row: int(row.get_attribute("row-index") or 0))
        return [str(row.get_attribute("row-id")) for row in ordered]

    def column(self, cell: str) -> dict[str, str]:
        """The text of one column of the runs table, by run id."""
        from selenium.webdriver.common.by import By

        values = {}
        for row in self.driver.find_elements(By.CSS_SELECTOR, ".ag-center-cols-container [row-id]"):
            found = row.find_elements(By.CSS_SELECTOR, cell)
            values[str(row.get_attribute("row-id"))] = found[0].text if found else ""
        return values


def scored(cells: dict[str, str]) -> dict[str, str]:
    """The cells of a score column that hold a score (MLflow shows "-" for none)."""
    return {run: text for run, text in cells.items() if text and text != "-"}


@pytest.fixture(scope="module")
def browser(ui: Ui, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    browser = Browser(tmp_path_factory.mktemp("screenshots"))  # a fresh profile: nothing chosen
    try:
        yield browser
    finally:
        browser.driver.quit()


def test_the_ui_runs_one_web_worker_and_no_job_consumers(ui: Ui) -> None:
    processes = descendants(ui.pid)
    # MLflow's server has one child: uvicorn serving in its own process (no worker processes,
    # no huey consumers of MLflow's job execution).
    assert len(processes) == 1, processes
    assert "-m uvicorn" in processes[0] and "--workers 1" in processes[0], processes


def test_the_experiment_opens_on_its_runs_table_with_the_trials_nested_under_the_sweep(
    store: Store, ui: Ui, browser: Browser
) -> None:
    from selenium.webdriver.common.by import By

    # Set by the pipeline; MLflow versions and hosts that read the tag open the runs table too.
    tags = store.client.get_experiment(store.experiment_id).tags
    assert tags.get("mlflow.experimentKind") == "custom_model_development"
    runs_page = f"/experiments/{store.experiment_id}/runs"
    # The plain URL `tune` prints, in a browser that never chose a view.
    browser.open(
        f"{ui.url}/#/experiments/{store.experiment_id}",
        lambda: runs_page in browser.driver.current_url and browser.rows(),
    )
    assert "overview" not in browser.driver.current_url
    assert browser.driver.execute_script(f"return localStorage['{WORKFLOW}']") == (
        '"machine_learning"'
    )
    # Collapsed, the sweep's run is the one row; its trials and retrain run open beneath it.
    assert browser.rows() == [store.parent_id]
    browser.shot("experiment-collapsed")
    parent = f"[row-id='{store.parent_id}'] {RUN_NAME_CELL} button"
    browser.driver.find_element(By.CSS_SELECTOR, parent).click()
    browser.wait(lambda: len(browser.rows()) > len(store.children))
    rows = browser.rows()
    browser.shot("experiment-runs")
    assert rows[0] == store.parent_id
    assert set(rows[1:]) == store.children
    assert f"{len(store.children) + 1} matching runs" in browser.text()
    # Each trial's best score and best epoch beside its name, none of them chosen by hand.
    scores = scored(browser.column(BEST_CELL))
    assert set(scores) == store.trials, scores
    epochs = scored(browser.column("[col-id='metrics.`best_epoch`']"))
    assert set(epochs) == store.trials, epochs
    # Into a run and back by the breadcrumb: still the runs table, nothing labelled "Eval".
    name = store.client.get_run(store.winner).info.run_name
    browser.driver.find_element(By.LINK_TEXT, name).click()
    browser.wait(lambda: f"/runs/{store.winner}" in browser.driver.current_url)
    browser.wait(lambda: name in browser.text())
    assert "Evaluations" not in browser.text()
    browser.driver.find_element(By.LINK_TEXT, "Runs").click()
    browser.wait(lambda: browser.driver.current_url.split("?")[0].endswith(runs_page))
    browser.wait(lambda: browser.rows())
    browser.shot("experiment-after-a-run")
    assert "Evaluations" not in browser.text() and "Eval\n" not in browser.text()


def test_a_view_the_user_chose_is_kept(store: Store, ui: Ui, browser: Browser) -> None:
    browser.driver.execute_script(f"localStorage['{WORKFLOW}'] = JSON.stringify('genai')")
    browser.driver.get("about:blank")  # then a new page load: the preference script runs again
    browser.open(
        f"{ui.url}/#/experiments/{store.experiment_id}",
        lambda: "/overview" in browser.driver.current_url,
    )
    assert browser.driver.execute_script(f"return localStorage['{WORKFLOW}']") == '"genai"'
    browser.shot("genai-kept")
    browser.driver.execute_script(f"localStorage.removeItem('{WORKFLOW}')")  # chosen no more
    browser.driver.get("about:blank")  # the next page loads afresh, with no choice held


def test_sorting_by_best_val_acc_ranks_the_registered_trial_among_the_candidates(
    store: Store, ui: Ui, browser: Browser
) -> None:
    browser.open(
        f"{ui.url}/#/experiments/{store.experiment_id}/runs?{BY_BEST_VAL_ACC}",
        lambda: len(browser.rows()) > 1,
    )
    assert "Sort: best_val_acc" in browser.text()
    # The score is beside the names already (the page's default layout, tracking/ui_page.py);
    # the sweep's run has none of its trials' metrics, so it does not rank among them.
    scores = browser.wait(lambda: scored(browser.column(BEST_CELL)))
    browser.shot("runs-by-best-val-acc")
    assert store.parent_id not in scores
    assert "Training runs" not in browser.text()  # GenAI's name for this page: not its view
    ranked = [run for run in browser.rows() if run in store.trials]
    assert set(ranked) == store.trials
    assert browser.rows().index(store.parent_id) > max(browser.rows().index(r) for r in ranked)
    values = [float(scores[run]) for run in ranked]
    assert values == sorted(values, reverse=True)
    # The registered trial is one of the CANDIDATES best, which got a second opinion (the best
    # second opinion wins, not necessarily the best sweep score); a trial tied with the last of
    # them may rank above it (the pipeline breaks ties on val_loss, which one sort key cannot show).
    cutoff = values[min(CANDIDATES, len(values)) - 1]
    contenders = [run for run, value in zip(ranked, values, strict=True) if value >= cutoff]
    assert store.winner in contenders, (store.winner, ranked, values)


def test_the_registered_trials_run_page_shows_its_scores_and_its_sweep(
    store: Store, ui: Ui, browser: Browser
) -> None:
    from selenium.webdriver.common.by import By

    winner = store.client.get_run(store.winner)
    parent = store.client.get_run(store.parent_id)
    page = f"{ui.url}/#/experiments/{store.experiment_id}/runs/{store.winner}"
    browser.open(page, lambda: "best_val_acc" in browser.text())
    text = browser.text()
    browser.shot("winner-run")
    assert winner.info.run_name in text
    assert f"Parent run\n{parent.info.run_name}" in text
    assert f"best_val_acc\n{winner.data.metrics['best_val_acc']}" in text
    assert winner.data.tags["trial_id"] in text
    # Its description links the version it became: one click away.
    assert f"Registered as {MODEL} version 1" in text
    driver = browser.driver
    here = driver.current_window_handle
    driver.find_element(By.LINK_TEXT, f"{MODEL} version 1").click()  # MLflow: a new tab
    tab = browser.wait(lambda: next((h for h in driver.window_handles if h != here), None))
    driver.switch_to.window(tab)
    try:
        browser.wait(lambda: f"/models/{MODEL}/versions/1" in driver.current_url)
        browser.wait(lambda: "Version 1" in browser.text())
        browser.shot("winner-version")
        # ... and back: the version's description links the trial's run.
        back = driver.find_element(By.LINK_TEXT, winner.info.run_name)
        assert str(back.get_attribute("href")).endswith(f"/runs/{store.winner}")
    finally:
        driver.close()
        driver.switch_to.window(here)


def test_the_default_columns_are_the_scores_the_pipeline_reports() -> None:
    """The page script spells the catalogue's scores out (the server image has no pipeline)."""
    from pipeline.config.metrics import SCORES
    from pipeline.tracking.ui_page import TRIAL_COLUMNS

    expected = {f"metrics.`best_val_{name}`" for name in SCORES}
    assert {c for c in TRIAL_COLUMNS if c.startswith("metrics.`best_val_")} == expected


def test_the_model_page_shows_the_champion_alias(store: Store, ui: Ui, browser: Browser) -> None:
    browser.open(f"{ui.url}/#/models/{MODEL}", lambda: "@ champion" in browser.text())
    text = browser.text()
    browser.shot("registered-model")
    assert MODEL in text
    assert "Version 1" in text
