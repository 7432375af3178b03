"""End to end: each lesson, opened in JupyterLab in headless Chromium, runs without an error.

nbval proves that the kernel can execute a lesson; this proves what a learner who runs
`make lab` sees: JupyterLab starts with token auth on 127.0.0.1, the lesson opens, the kernel
"Python 3 (mindtrans)" can be chosen in the Change Kernel dialog, Run -> Run All Cells
finishes (in fast mode), no cell shows an error, and the figures render. A full-length
screenshot of each finished lesson goes to artifacts/screenshots/ (or $MINDTRANS_SCREENSHOTS).

Run with `make test` (which installs Chromium and Playwright first) or
`scripts/install_browser_deps.sh && .venv/bin/python -m pytest tests/browser`.
Where Chromium or Playwright is missing or cannot start, the tests are skipped with the reason.
"""
import json
import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LESSONS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
LESSON_TIMEOUT = float(os.environ.get("MINDTRANS_LESSON_TIMEOUT", "600"))
UI_TIMEOUT_MS = 60_000
SCREENSHOT_DIR = Path(os.environ.get("MINDTRANS_SCREENSHOTS", ROOT / "artifacts" / "screenshots"))
MAX_SCREENSHOT_HEIGHT = 32_000  # px; longer lessons are cut at the bottom
PLOTS = re.compile(r"\bplt\.|\.imshow\(|\.savefig\(|\bmatplotlib\b")

# The notebook panel on show (with ?reset it is the only one).
PANEL = "document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)')"

# Done: the kernel is idle, no cell is queued or running ([*]), and the first code cell has
# an execution count (so Run All has started: outputs were cleared before it). Over early:
# a dialog (e.g. "Kernel Restarting" after the kernel died) or a dead/restarting kernel; a
# kernel status "unknown" (connection lost) only once it has lasted 15 s.
RUN_FINISHED_JS = f"""() => {{
    const panel = {PANEL};
    if (!panel) return false;
    const dialog = document.querySelector('.jp-Dialog .jp-Dialog-header');
    if (dialog) return `interrupted by the dialog "${{dialog.textContent.trim()}}"`;
    const status = panel.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status;
    if (['dead', 'autorestarting', 'restarting', 'terminating'].includes(status)) return `kernel ${{status}}`;
    if (status === 'unknown' || status === 'starting') {{
        window.__mindtransOddSince = window.__mindtransOddSince || Date.now();
        return Date.now() - window.__mindtransOddSince > 15000 && `kernel status "${{status}}" for 15 s`;
    }}
    window.__mindtransOddSince = null;
    const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent);
    return status === 'idle' && prompts.length > 0 && /\\[\\d+\\]/.test(prompts[0])
        && !prompts.some(p => p.includes('*')) && 'finished';
}}"""

# What the learner sees, read from the DOM: prompts, error-looking stderr, images.
PAGE_STATE_JS = f"""() => {{
    const panel = {PANEL};
    const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell')];
    const code = cells.filter(c => c.classList.contains('jp-CodeCell'));
    const text = (sel) => [...panel.querySelectorAll(sel)].map(e => e.textContent);
    return {{
        codeCells: code.length,
        prompts: code.map(c => c.querySelector('.jp-InputArea-prompt')?.textContent.trim() ?? ''),
        stderr: text('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'),
        stdout: text('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]'),
        images: [...panel.querySelectorAll('.jp-RenderedImage img')].map(
            i => ({{complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}})),
        svgs: panel.querySelectorAll('.jp-RenderedSVG svg').length,
        kernelName: panel.querySelector('.jp-Toolbar-kernelName')?.textContent.trim(),
        status: panel.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status,
        statusBar: document.querySelector('#jp-main-statusbar')?.textContent ?? '',
    }};
}}"""

# The notebook model (window.jupyterapp exists because the server runs with
# --LabApp.expose_app_in_browser): error outputs are certain here, not guessed from text; and
# each cell's execution time (recordTiming is on in the test's settings).
MODEL_STATE_JS = """() => {
    const model = window.jupyterapp.shell.currentWidget.content.model;
    const errors = [], timings = [];
    for (let i = 0; i < model.cells.length; i++) {
        const cell = model.cells.get(i).toJSON();
        if (cell.cell_type !== 'code') continue;
        const source = (Array.isArray(cell.source) ? cell.source.join('') : cell.source);
        for (const out of cell.outputs || []) {
            if (out.output_type === 'error')
                errors.push({cell: i, count: cell.execution_count, ename: out.ename, evalue: out.evalue,
                             source: source.slice(0, 300)});
        }
        const t = (cell.metadata || {}).execution || {};
        const start = Date.parse(t['iopub.execute_input']), end = Date.parse(t['shell.execute_reply']);
        if (!isNaN(start) && !isNaN(end))
            timings.push({cell: i, seconds: (end - start) / 1000, line: source.split('\\n')[0].slice(0, 60)});
    }
    return {errors, timings};
}"""

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^-{20,}\s*\n\s*\w+(Error|Exception)\b", re.M)


def lesson_id(path):
    return path.stem


def code_cells(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            for cell in notebook["cells"] if cell["cell_type"] == "code"]


def click_menu(page, menu, item):
    """Menu bar -> item; a string item matches exactly ("Run All Cells", not "Restart Kernel
    and Run All Cells…"), a regex as it is."""
    page.get_by_role("menuitem", name=menu, exact=True).click()
    page.get_by_role("menuitem", name=item, exact=isinstance(item, str)).click()


def wait_kernel_ready(page):
    page.wait_for_function(f"() => {PANEL}?.querySelector('.jp-Notebook-ExecutionIndicator')"
                           "?.dataset.status === 'idle'", timeout=UI_TIMEOUT_MS)


def select_project_kernel(page, display_name):
    """Choose "Python 3 (mindtrans)" in JupyterLab's kernel dialog, as a learner does.

    The lessons' kernelspec is `python3`, which exists, so the lesson opens with it and the
    dialog comes from Kernel -> Change Kernel…; where no kernel matched, JupyterLab shows the
    same dialog by itself on opening.
    """
    dialog = page.locator(".jp-Dialog")
    page.wait_for_function(f"() => document.querySelector('.jp-Dialog') || {PANEL}?.querySelector("
                           "'.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'", timeout=UI_TIMEOUT_MS)
    if not dialog.is_visible():
        click_menu(page, "Kernel", re.compile(r"^Change Kernel"))
    dialog.locator("select").wait_for(timeout=UI_TIMEOUT_MS)
    dialog.locator("select").select_option(label=display_name)
    dialog.locator("button.jp-mod-accept").click()
    dialog.wait_for(state="detached", timeout=UI_TIMEOUT_MS)
    page.wait_for_function(f"() => {PANEL}?.querySelector('.jp-Toolbar-kernelName')?.textContent.trim()"
                           f" === {json.dumps(display_name)}", timeout=UI_TIMEOUT_MS)
    wait_kernel_ready(page)


def full_length_screenshot(page, path):
    """The whole notebook in one PNG: the left sidebar folded, the viewport as tall as the notebook."""
    page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); window.jupyterapp.shell.collapseRight(); }")
    height = 900
    for _ in range(3):  # the notebook reflows when the viewport changes: measure again
        extra = page.evaluate(f"""() => {{
            const outer = {PANEL}.querySelector('.jp-WindowedPanel-outer');
            return outer.scrollHeight - outer.clientHeight;
        }}""")
        if extra <= 1 or height >= MAX_SCREENSHOT_HEIGHT:
            break
        height = min(MAX_SCREENSHOT_HEIGHT, height + extra)
        page.set_viewport_size({"width": 1280, "height": height})
        page.wait_for_timeout(300)
    page.evaluate(f"() => {{ {PANEL}.querySelector('.jp-WindowedPanel-outer').scrollTop = 0; }}")
    page.wait_for_timeout(500)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True, timeout=120_000)


@pytest.mark.parametrize("lesson", LESSONS, ids=lesson_id)
def test_lesson_runs_in_jupyterlab(lesson, browser, lab_server, screenshots):
    sources = code_cells(lesson)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    page_errors = []
    page.on("pageerror", lambda err: page_errors.append(str(err).splitlines()[0] if str(err) else repr(err)))
    screenshot = SCREENSHOT_DIR / f"{lesson.stem}.png"
    elapsed, slowest = None, []
    try:
        page.goto(lab_server.lab_url(lesson.name), wait_until="domcontentloaded", timeout=UI_TIMEOUT_MS)
        page.locator(".jp-NotebookPanel .jp-Notebook").first.wait_for(timeout=UI_TIMEOUT_MS)

        select_project_kernel(page, lab_server.kernel_display_name)
        sessions = [s for s in lab_server.api("/api/sessions") if s["path"].endswith(lesson.name)]
        assert [s["kernel"]["name"] for s in sessions] == [lab_server.kernel_name], sessions
        state = page.evaluate(PAGE_STATE_JS)
        assert state["kernelName"] == lab_server.kernel_display_name
        assert lab_server.kernel_display_name in state["statusBar"], state["statusBar"]
        assert state["codeCells"] == len(sources), (
            f"{state['codeCells']} code cells in the page, {len(sources)} in {lesson.name}")

        # Outputs cleared first: whatever shows afterwards (figures included) comes from this run.
        click_menu(page, "Edit", "Clear Outputs of All Cells")
        page.wait_for_function(f"() => {PANEL}.querySelectorAll('.jp-OutputArea-output').length === 0")

        started = time.monotonic()
        click_menu(page, "Run", "Run All Cells")
        try:
            outcome = page.wait_for_function(RUN_FINISHED_JS, timeout=LESSON_TIMEOUT * 1000,
                                             polling=500).json_value()
        except Exception as err:  # playwright's TimeoutError
            outcome = f"not finished after {LESSON_TIMEOUT:.0f} s ({type(err).__name__})"
        elapsed = time.monotonic() - started
        model = page.evaluate(MODEL_STATE_JS)
        slowest = sorted(model["timings"], key=lambda t: -t["seconds"])[:3]
        page.wait_for_function(f"() => [...{PANEL}.querySelectorAll('.jp-RenderedImage img')]"
                               ".every(i => i.complete)", timeout=30_000)
        state = page.evaluate(PAGE_STATE_JS)
        model_errors = model["errors"]
    finally:
        try:
            full_length_screenshot(page, screenshot)
            note = "" if elapsed is None else f"Run All Cells {elapsed:.0f} s; slowest cells: " + ", ".join(
                f"cell {t['cell']} ({t['seconds']:.0f} s, {t['line']!r})" for t in slowest)
            screenshots.append((lesson.stem, screenshot, note))
        except Exception as err:  # a screenshot is a by-product: report it, keep the real failure
            print(f"screenshot of {lesson.name} failed: {err}")
        context.close()
        lab_server.shutdown_kernels()

    context_note = f"(screenshot: {screenshot}; JavaScript errors: {page_errors[:5]})"
    assert outcome == "finished", f"{lesson.name}: Run All Cells {outcome}; prompts {state['prompts']} {context_note}"
    assert not model_errors, f"{lesson.name}: cells raised errors:\n" + "\n".join(
        f"  cell {e['cell']} [{e['count']}]: {e['ename']}: {e['evalue']}\n    {e['source'][:200]!r}"
        for e in model_errors) + f"\n{context_note}"
    tracebacks = [text[:800] for text in state["stderr"] if TRACEBACK.search(text)]
    assert not tracebacks, f"{lesson.name}: tracebacks shown on stderr:\n" + "\n---\n".join(tracebacks)
    not_run = [i for i, p in enumerate(state["prompts"]) if not re.fullmatch(r"\[\d+\]:", p)]
    assert not not_run, f"{lesson.name}: code cells without an execution count: {not_run} {state['prompts']}"
    if os.environ.get("MINDTRANS_FAST", "1") == "1":
        assert not any(re.search(r"fast mode:\s*False", t) for t in state["stdout"]), \
            "MINDTRANS_FAST=1 did not reach the kernel (the lesson printed 'fast mode: False')"

    broken = [img for img in state["images"] if not (img["width"] > 0 and img["height"] > 0)]
    assert not broken, f"{lesson.name}: images that did not render: {broken}"
    if any(PLOTS.search(source) for source in sources):
        assert len(state["images"]) + state["svgs"] >= 1, \
            f"{lesson.name} plots with matplotlib but no figure rendered {context_note}"
