"""06_visualize in a real browser: JupyterLab 4 + headless Chromium (Playwright) run every cell, move each
of the viewer's three sliders, and check that the panel the slider drives is redrawn.

Needs Debian's ``chromium`` on PATH and the ``playwright`` Python package (Playwright cannot download its
own browsers here: the Debian binary is passed as ``executable_path``). Where either is missing the test
is skipped with the reason, except in CI (``CI=true``), where it fails instead.

The server runs with the test's environment (``TUMORLIB_PRESET=ci``). Its ``TUMORLIB_HOME`` is the one
the test session was started with (``make test`` sets ``.tumorlib/test``, shared with the notebooks'
nbval run, so a ci run trained there is reused), else a temporary folder; the notebook trains the ci run
itself when it is missing (about a minute on 2 cores).

Screenshots go to the test's tmp folder and, when ``TUMORLIB_SCREENSHOT_DIR`` is set, there too.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab_server import start_lab, stop_lab  # noqa: E402

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "06_visualize.ipynb"
#: TUMORLIB_HOME as the session started (read at import, before the autouse fixture replaces it).
SESSION_HOME = os.environ.get("TUMORLIB_HOME")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
RUN_ALL_TIMEOUT_S = 420
PLANES = ("axial", "coronal", "sagittal")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _require_browser() -> str:
    """Path of chromium; skips (fails in CI) when chromium or playwright is missing."""
    problems = []
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        problems.append("no `chromium` on PATH (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the `playwright` package is not installed (pip install playwright)")
    if problems:
        reason = "browser test needs " + " and ".join(problems)
        if _in_ci():
            pytest.fail(reason + " -- required in CI (CI=true)")
        pytest.skip(reason)
    assert chromium is not None
    return chromium


@pytest.fixture
def chromium() -> str:
    """Path of Debian's chromium (skip, or fail in CI, when it or playwright is missing)."""
    return _require_browser()


@pytest.fixture
def lab(chromium, tmp_path):
    """A JupyterLab server serving a copy of 06_visualize.ipynb; stopped by pid even if the test fails."""
    root = tmp_path / "lab_root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    env = dict(os.environ)
    env["TUMORLIB_PRESET"] = "ci"
    if SESSION_HOME:
        env["TUMORLIB_HOME"] = SESSION_HOME
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    server = start_lab(root, tmp_path / "lab_work", env=env)
    try:
        yield server
    finally:
        stop_lab(server)


def _save_screenshot(data: bytes, name: str, tmp_path: Path) -> list[Path]:
    paths = [tmp_path / name]
    extra = os.environ.get("TUMORLIB_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        paths.append(Path(extra) / name)
    for p in paths:
        p.write_bytes(data)
    return paths


def _wait_run_all_done(page, timeout_s: float) -> None:
    """Wait until no cell shows ``[*]`` and the kernel is idle twice in a row, 1 s apart."""
    deadline = time.monotonic() + timeout_s
    calm = 0
    while time.monotonic() < deadline:
        busy = page.evaluate(
            """() => {
                const prompts = [...document.querySelectorAll('.jp-InputArea-prompt')].map(p => p.textContent);
                const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
                const status = indicator ? indicator.getAttribute('data-status') : 'unknown';
                return prompts.some(t => t.includes('*')) || status !== 'idle';
            }"""
        )
        calm = 0 if busy else calm + 1
        if calm >= 2:
            return
        time.sleep(1.0)
    raise AssertionError(f"the notebook was still running after {timeout_s:.0f} s")


def _cell_errors(page) -> list[str]:
    return page.evaluate(
        """() => [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
                 .map(e => e.textContent).filter(t => /Error|Traceback/.test(t))"""
    )


def _move_through_uncertainty_overlay(page, console: list[str]) -> None:
    """The viewer whose overlay dropdown shows "uncertainty": its axial slider moves and its panel redraws,
    and the readout gives the entropy under the crosshair."""
    viewers = page.locator(".tumorlib-viewer")
    found = [i for i in range(viewers.count())
             if "uncertainty" in viewers.nth(i).locator("select").nth(1).evaluate(
                 "el => el.options[el.selectedIndex] ? el.options[el.selectedIndex].text : ''")]
    assert found, "no viewer shows the uncertainty overlay"
    viewer = viewers.nth(found[0])
    viewer.scroll_into_view_if_needed()
    assert viewer.locator(".widget-html", has_text="entropy 0").count() == 1  # the heat-scale legend
    slider, panel = viewer.locator(".widget-slider").first, viewer.locator(".tumorlib-panel img").first
    readout = slider.locator(".widget-readout")
    before, shot = int(readout.text_content().strip()), panel.screenshot()
    handle = slider.locator(".noUi-handle")
    handle.focus()
    for _ in range(3):
        handle.press("ArrowLeft")
    assert int(readout.text_content().strip()) != before, "uncertainty viewer's axial slider did not move"
    deadline = time.monotonic() + 15
    while panel.screenshot() == shot:
        assert time.monotonic() < deadline, f"uncertainty panel not redrawn; console errors: {console[:5]}"
        time.sleep(0.25)
    assert "entropy = " in (viewer.locator(".widget-html").last.text_content() or "")


def test_viewer_sliders_redraw_in_jupyterlab(chromium, lab, tmp_path):
    from playwright.sync_api import sync_playwright

    console: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
            page.goto(lab.url(f"lab/tree/{NOTEBOOK.name}"))
            # the execution indicator reads idle before the kernel exists: wait for cells and "| Idle"
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
                ".some(e => /\\|\\s*Idle/.test(e.textContent))", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)

            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
            viewer = page.locator(".tumorlib-viewer").first
            viewer.wait_for(state="attached", timeout=RUN_ALL_TIMEOUT_S * 1000)
            _wait_run_all_done(page, RUN_ALL_TIMEOUT_S)
            errors = _cell_errors(page)
            assert not errors, f"cells failed: {errors[:2]}\nserver log:\n{lab.log_tail()}"

            viewer.scroll_into_view_if_needed()
            sliders = viewer.locator(".widget-slider")
            panels = viewer.locator(".tumorlib-panel img")
            assert panels.count() == 3
            for i, plane in enumerate(PLANES):
                slider, panel = sliders.nth(i), panels.nth(i)
                label = slider.locator(".widget-label").first.text_content() or ""
                assert plane in label, f"slider {i} is {label!r}, expected the {plane} slider"
                readout = slider.locator(".widget-readout")
                value_before = int(readout.text_content().strip())
                shot_before = panel.screenshot()
                handle = slider.locator(".noUi-handle")
                handle.focus()
                key = "ArrowRight"
                for _ in range(3):
                    handle.press(key)
                if int(readout.text_content().strip()) == value_before:  # at the end of its range
                    key = "ArrowLeft"
                    for _ in range(6):
                        handle.press(key)
                value_after = int(readout.text_content().strip())
                assert value_after != value_before, f"{plane} slider did not move from {value_before}"
                deadline = time.monotonic() + 15
                while panel.screenshot() == shot_before:
                    assert time.monotonic() < deadline, (
                        f"{plane} panel not redrawn after its slider moved {value_before} -> {value_after}; "
                        f"console errors: {console[:5]}")
                    time.sleep(0.25)
                # the readout is its own widget message, which may arrive after the panel's image
                deadline = time.monotonic() + 15
                while str(value_after) not in (readout_text := viewer.locator(".widget-html").last.text_content() or ""):
                    assert time.monotonic() < deadline, f"position readout {readout_text!r} lacks {value_after}"
                    time.sleep(0.25)

            _move_through_uncertainty_overlay(page, console)

            viewer.scroll_into_view_if_needed()
            time.sleep(0.3)
            saved = _save_screenshot(viewer.screenshot(), "06_visualize_viewer.png", tmp_path)
            _save_screenshot(page.screenshot(), "06_visualize_page.png", tmp_path)
            assert saved[0].stat().st_size > 10_000
            widget_errors = [c for c in console if "widget" in c.lower()]
            assert not widget_errors, f"widget errors in the browser console: {widget_errors[:5]}"
        finally:
            browser.close()
