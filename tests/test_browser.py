"""What a quant sees: the MLflow UI of README's own `mlflow ui` line, in a real browser.

Headless Chromium from Debian's package (`apt-get install chromium`; .ci/run installs it), driven by Playwright
with executable_path set to it: no browser is downloaded. The browser runs in New York (UTC-5/-4), where a
daily bar stored at midnight UTC would show the day before. Screenshots of each check are written to
$BROWSER_SCREENSHOTS (default: the module's temporary folder, `browser*/shots`) for a person to look at.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from harness import DATA, require_tool, run_script

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
]  # the inner loop (-m "not server and not slow") skips them
TIMEOUT_MS = 120_000  # one page or element: the UI is slow on a busy 2-core machine


@pytest.fixture(scope="module")
def ui(mlflow_ui, tmp_path_factory):
    """README's `mlflow ui` serving the local store of a project folder (the session's, tests/conftest.py),
    with an experiment made by create_experiment and the example backtest logged by log_backtest, both
    through that UI server's tracking API so that they print their links."""
    folder = tmp_path_factory.mktemp("browser")
    started = time.monotonic()
    env = {"MLFLOW_TRACKING_URI": mlflow_ui.url}
    created = run_script("create_experiment", "--name", "sp500-momentum", env=env, cwd=folder)
    assert created.returncode == 0, created.stderr
    logged = run_script(
        "log_backtest", "--returns", str(DATA / "example_returns.csv"), "--experiment", "sp500-momentum",
        "--run-name", "sp500-example", env=env, cwd=folder,
    )  # fmt: skip
    assert logged.returncode == 0, logged.stderr
    print(f"experiment and backtest logged after {time.monotonic() - started:.0f} s")
    shots = Path(os.environ.get("BROWSER_SCREENSHOTS") or folder / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    return {"experiment": created.json(), "run": logged.json(), "shots": shots}


@pytest.fixture(scope="module")
def browser():
    chromium = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(timezone_id="America/New_York", viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def test_printed_experiment_link_shows_the_runs_table(ui, page):
    """create_experiment's `url` opens the experiment's runs (MLflow 3.17 opens in GenAI mode otherwise:
    a traces dashboard without runs)."""
    link = ui["experiment"]["url"]
    assert link.endswith("?workflowType=machine_learning"), link
    page.goto(link)
    page.get_by_text("sp500-example", exact=True).first.wait_for()  # the logged run, a row of the table
    page.screenshot(path=ui["shots"] / "experiment.png")
    assert page.get_by_role("link", name="sp500-example").first.is_visible()
    assert page.get_by_text(re.compile(r"^\d+ matching runs?$")).first.is_visible()
    assert page.get_by_role("link", name="Evaluation runs").count() == 0  # GenAI mode's side bar


def test_run_page_collapsed_description_shows_sharpe_and_max_drawdown(ui, page):
    """The run's printed `url` opens it under Runs (not Evaluations); before "Show more" is clicked the
    description already shows the headline numbers, at points of the page where they are painted."""
    run = ui["run"]
    page.goto(run["url"])
    show_more = page.get_by_text("Show more", exact=True).first
    show_more.wait_for()
    headline = page.get_by_text(re.compile(r"^Sharpe .* MaxDD .*")).first
    settled(page, headline)  # the overview's sections load one by one and push the description down
    headline.scroll_into_view_if_needed()
    page.screenshot(path=ui["shots"] / "run-description.png")
    text = headline.inner_text()
    metrics = run["metrics"]
    assert f"Sharpe {metrics['sharpe']:.2f}" in text
    assert f"MaxDD \N{MINUS SIGN}{abs(metrics['max_drawdown']) * 100:.2f} %" in text
    assert painted(page, headline), "the headline is hidden in the collapsed description"
    hidden = page.get_by_text(re.compile(r"^profit_factor: ")).first  # the last key metric of the list
    assert not painted(page, hidden), "the description is not collapsed: this check proves nothing"
    breadcrumb = page.get_by_role("link", name="Runs", exact=True).first  # GenAI mode says "Evaluations"
    assert breadcrumb.is_visible() and page.get_by_role("link", name="Evaluations", exact=True).count() == 0


def settled(page, locator) -> dict | None:
    """The element's box once the page stops moving it (the same box twice, 250 ms apart)."""
    box = locator.bounding_box()
    for _ in range(40):
        page.wait_for_timeout(250)
        now = locator.bounding_box()
        if now == box:
            break
        box = now
    return box


def painted(page, locator) -> bool:
    """Whether the element is what the browser draws at its own centre (not clipped away or covered), once
    the page has stopped moving it: a box measured while sections still load can be off the screen."""
    box = settled(page, locator)
    if box is None:
        return False
    x, y = box["x"] + min(box["width"] / 2, 20), box["y"] + box["height"] / 2
    return locator.evaluate(
        "(el, [x, y]) => { const top = document.elementFromPoint(x, y); "
        "return !!top && (el === top || el.contains(top)); }",
        [x, y],
    )


def opacity(locator) -> float:
    """The element's opacity as drawn: its own times every ancestor's."""
    return locator.evaluate(
        "el => { let o = 1; for (let e = el; e; e = e.parentElement) o *= +getComputedStyle(e).opacity; "
        "return o; }"
    )


def test_equity_tooltip_shows_the_bars_date_in_new_york(ui, page):
    """README's steps: Model metrics, type `equity` in the chart search, gear -> X-axis -> Time (wall). The
    tooltip of a hovered point carries the date of the bar whose equity it shows, in a UTC-5 browser."""
    page.goto(ui["run"]["url"])
    page.get_by_text("Model metrics", exact=True).first.click()
    page.get_by_placeholder("Search metric charts").fill("equity")
    page.get_by_label("Configure charts").click()
    page.get_by_text("X-axis", exact=True).first.hover()
    page.get_by_text("Time (wall)", exact=True).first.click()
    page.keyboard.press("Escape")
    plot = page.locator(".nsewdrag").first  # the plotly chart's drawing area
    plot.wait_for()
    box = plot.bounding_box()
    returns = pd.read_csv(DATA / "example_returns.csv", parse_dates=["date"])
    equity = np.cumprod(1 + returns["returns"].to_numpy())
    seen = []
    for fraction in (0.25, 0.5, 0.75):
        x, y = box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2
        page.mouse.move(x - 3, y)  # a hand moves the mouse in small steps: the chart answers the last one
        page.mouse.move(x, y)
        tooltip = page.get_by_text(re.compile(r"^Time \d{4}-\d\d-\d\d")).first
        tooltip.wait_for()
        shown_before = None
        for _ in range(50):  # it fades in and follows the mouse: read it once it is whole and settled
            page.wait_for_timeout(200)
            now = tooltip.inner_text()
            if now == shown_before and opacity(tooltip) > 0.99:
                break
            shown_before = now
        assert opacity(tooltip) > 0.99, "the tooltip never showed"
        tip = tooltip.bounding_box()  # (it lets the mouse through: elementFromPoint cannot see it)
        assert tip and tip["x"] >= 0 and tip["x"] + tip["width"] <= 1400, tip
        page.screenshot(path=ui["shots"] / f"equity-tooltip-{fraction}.png")
        shown = re.search(r"(\d{4}-\d\d-\d\d)", tooltip.inner_text()).group(1)
        card = page.locator("body").inner_text()
        value = float(re.search(r"sp500-example\s+(\d+\.\d+)", card).group(1))
        bar = int(np.argmin(np.abs(equity - value)))
        assert abs(equity[bar] - value) < 1e-9, (value, equity[bar])
        assert shown == returns["date"].iloc[bar].strftime("%Y-%m-%d"), (shown, bar, value)
        seen.append(shown)
    assert seen == sorted(set(seen)), seen  # three bars, left to right: each tooltip is the hovered one


def test_tearsheet_renders_in_the_artifact_preview(ui, page):
    run = ui["run"]
    page.goto(run["url"])
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("tearsheet.html", exact=True).first.click()
    frame = page.frame_locator("iframe").first
    frame.get_by_text("CAGR%", exact=True).wait_for()
    page.screenshot(path=ui["shots"] / "tearsheet.png")
    assert frame.locator("h1").first.inner_text().startswith("sp500-example")
    assert frame.locator("th", has_text="sp500-example").count() >= 1  # the metrics table's column
    assert frame.locator("svg").count() >= 5  # the charts are drawn
    cagr = frame.get_by_text("CAGR%", exact=True).first.locator("xpath=following-sibling::td[1]")
    assert cagr.inner_text() == f"{run['metrics']['cagr'] * 100:.2f}%"
