"""Checked as a person sees it, in headless Chromium: the report as a mail attachment, the MLflow UI, the Prefect UI.

Screenshots land in reports/screenshots/ (git-ignored) for a reader to look at.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.browser import chromium, needs_chromium
from tests.helpers import ROOT, declared_stages, env
from tests.mlflow_server import free_port, stop, wait_http

SCREENSHOTS = ROOT / "reports" / "screenshots"
pytestmark = [needs_chromium, pytest.mark.slow]
ALL_IMAGES_LOADED = "Array.from(document.images).every(i => i.complete)"


def metrics_json(project: Path, name: str) -> dict:
    return json.loads((project / "reports/metrics" / f"{name}.json").read_text())


def report_images(project: Path) -> int:
    return (project / "reports/report.md").read_text().count("](figures/")


# ---------------------------------------------------------------------------- the report as an attachment
def test_report_html_opens_alone_with_every_figure_and_fetches_nothing(tracked_dag, tmp_path):
    """report.html copied alone into an empty folder, as a mail client saves an attachment."""
    attachment = tmp_path / "mail" / "report.html"
    attachment.parent.mkdir()
    shutil.copy(tracked_dag.project / "reports/report.html", attachment)
    with chromium(tmp_path / "profile") as page:
        page.goto(attachment.as_uri())
        page.wait_for(ALL_IMAGES_LOADED)
        images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight])")
        assert len(images) == report_images(tracked_dag.project) and all(w > 0 and h > 0 for _, w, h in images)
        assert "denoising trajectory" in [alt for alt, _, _ in images]
        headers = page.evaluate("Array.from(document.querySelectorAll('table'))"
                                ".map(t => t.rows[0].cells[0].textContent)")
        assert "metric" in headers
        fid_row = page.evaluate("Array.from(document.querySelectorAll('tr')).map(r => r.innerText)"
                                ".find(t => t.startsWith('FID'))")
        domain_fid = metrics_json(tracked_dag.project, "evaluate")["domain"]["fid"]
        assert f"{domain_fid:.4g}" in fid_row
        fetching = page.evaluate("Array.from(document.querySelectorAll('[src], link[href]'))"
                                 ".map(e => e.getAttribute('src') || e.getAttribute('href'))"
                                 ".filter(u => !u.startsWith('data:'))")
        assert fetching == []
        requested = page.requested_urls()
        assert attachment.as_uri() in requested  # the network log saw the page itself
        assert [u for u in requested if not u.startswith(("file:", "data:"))] == []
        shot = page.screenshot(SCREENSHOTS / "report.png")
    assert shot.stat().st_size > 50_000


# ---------------------------------------------------------------------------- the MLflow UI
def test_mlflow_ui_shows_the_run_its_sample_grid_report_and_aliases(tracked_dag, tmp_path):
    from PIL import Image

    project, uri = tracked_dag.project, tracked_dag.server.uri
    registry = metrics_json(project, "registry")
    run_page = f"{uri}/#/experiments/{registry['experiment_id']}/runs/{registry['run_id']}"
    with chromium(tmp_path / "profile") as page:
        page.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        page.goto(run_page)
        page.wait_for("document.body.innerText.includes('domain.fid\\n')")
        lines = page.text().splitlines()
        shown = float(lines[lines.index("domain.fid") + 1])
        assert shown == pytest.approx(metrics_json(project, "evaluate")["domain"]["fid"], rel=1e-9)
        page.evaluate("Array.from(document.querySelectorAll('*')).find(e => e.textContent === 'domain.fid')"
                      ".scrollIntoView({block: 'center'})")
        page.screenshot(SCREENSHOTS / "mlflow_run.png", full_page=False)

        # the sample grid, as the artifact view shows it: the PNG's own width, so the file itself loaded
        width = Image.open(project / "reports/figures/samples.png").size[0]
        page.goto("about:blank")  # a fresh page: the UI keeps its artifact selection across hash changes
        page.goto(f"{run_page}/artifacts/figures/samples.png")
        page.wait_for(f"Array.from(document.images).some(i => i.src.startsWith('blob:') && i.naturalWidth === {width})")
        page.screenshot(SCREENSHOTS / "mlflow_sample_grid.png", full_page=False)

        # the report in the artifact view: a sandboxed frame, in which every embedded figure loads
        page.goto("about:blank")
        page.goto(f"{run_page}/artifacts/report.html")
        images = report_images(project)
        page.wait_for(f"document.images.length === {images} && {ALL_IMAGES_LOADED}", frame="blob:")
        assert page.evaluate_in_frame("blob:", "Array.from(document.images).every(i => i.naturalWidth > 0)")
        assert page.evaluate_in_frame("blob:", "document.querySelector('h1').textContent") == "DDPM run report"
        page.screenshot(SCREENSHOTS / "mlflow_report_artifact.png", full_page=False)

        page.goto("about:blank")
        page.goto(f"{uri}/#/models/{registry['model']}")
        page.wait_for("/@\\s*champion/.test(document.body.innerText)")  # "@ champion", with a no-break space
        text = page.text()
        assert re.search(r"@\s*candidate", text) and f"Version {registry['champion']}" in text
        page.screenshot(SCREENSHOTS / "mlflow_model.png", full_page=False)


# ---------------------------------------------------------------------------- the Prefect UI
@pytest.fixture(scope="module")
def prefect_ui(tmp_path_factory):
    """`prefect server start` with its UI on a free port, a throwaway PREFECT_HOME; yields (API URL, home)."""
    from tests.test_flows import FASTAPI_COMPAT, fastapi_rejects_min_items

    root = tmp_path_factory.mktemp("prefect-ui")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = env()
    server_env.update(PREFECT_HOME=str(root / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                      PREFECT_UI_API_URL=api)  # else the UI asks the default port, 4200
    if fastapi_rejects_min_items():
        (root / "site").mkdir()
        (root / "site" / "sitecustomize.py").write_text(FASTAPI_COMPAT)
        server_env["PYTHONPATH"] = os.pathsep.join([str(root / "site"), server_env["PYTHONPATH"]])
    log = root / "server.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=root, env=server_env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"{api}/health", proc, log)
        yield api, root / "home"
    finally:
        stop(proc)


def api_post(url: str, body: dict) -> list:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def green_pixels(png: bytes) -> int:
    """Pixels in Prefect's colour of a completed task: the graph's nodes once it has drawn them."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((g > 120) & (g > r + 50) & (g > b + 50)).sum())


def test_prefect_flow_run_page_draws_the_task_graph(tracked_dag, prefect_ui, tmp_path, monkeypatch):
    import base64

    api, home = prefect_ui
    monkeypatch.setenv("PREFECT_API_URL", api)
    monkeypatch.setenv("PREFECT_HOME", str(home))
    # --force report: the report is drawn again after register, so that it shows the stage times the other
    # tests compare it with
    flow = [sys.executable, "-m", "pipeline.flows.retrain", "--project", str(tracked_dag.project), "--force", "report"]
    tracked_dag.run(flow)
    [flow_run] = api_post(f"{api}/flow_runs/filter", {})
    tasks = api_post(f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    stages = declared_stages(tracked_dag.project)
    assert sorted(t["name"] for t in tasks) == sorted(stages) and flow_run["state_type"] == "COMPLETED"
    with chromium(tmp_path / "profile") as page:
        page.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        page.goto(f"{api.removesuffix('/api')}/runs/flow-run/{flow_run['id']}")
        page.wait_for(f"document.body.innerText.includes('{len(stages)} Task runs')")
        box = page.wait_for("(() => { const g = document.querySelector('.flow-run-graph canvas');"
                            " if (!g) return null; const r = g.getBoundingClientRect();"
                            # without the timeline strip along its bottom edge, which is green too
                            " return r.width > 0 ? {x: r.x, y: r.y, width: r.width, height: r.height - 24, scale: 1}"
                            " : null })()")
        for _ in range(60):  # the graph lays its nodes out after the page has loaded
            shot = base64.b64decode(page.call("Page.captureScreenshot", format="png", clip=box)["data"])
            if green_pixels(shot) > 5000:
                break
            page.evaluate("new Promise(done => setTimeout(done, 500))")
        assert green_pixels(shot) > 5000, "the task graph drew no completed-task nodes"
        page.screenshot(SCREENSHOTS / "prefect_flow_run.png", full_page=False)
