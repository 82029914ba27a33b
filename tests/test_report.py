"""The report: a self-contained HTML page, and every number traced to reports/metrics/*.json on the tiny DAG
run against a real MLflow server."""

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddpm.errors import DataError
from ddpm.report.html import render_html
from ddpm.report.render import current_champion
from tests.report_tables import numbers_outside_code, report_tables


# ---------------------------------------------------------------------------- the HTML page
def test_html_embeds_every_image_as_a_data_uri(tmp_path):
    (tmp_path / "figures").mkdir()
    pixels = {"a.png": b"\x89PNG-a", "b.png": b"\x89PNG-b"}
    for name, data in pixels.items():
        (tmp_path / "figures" / name).write_bytes(data)
    page = render_html("# r\n\n![first](figures/a.png)\n\n| x |\n|---|\n| ![second](figures/b.png) |\n", tmp_path)
    sources = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', page)
    assert len(sources) == 2
    assert [base64.b64decode(s.split(",", 1)[1]) for s in sources] == list(pixels.values())
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<(script|link|iframe)\b|@import|url\(", page)


def test_the_title_is_escaped(tmp_path):
    page = render_html("# r\n", tmp_path, title="</title><script>alert(1)</script>")
    assert "<script>" not in page and "&lt;/title&gt;&lt;script&gt;" in page


def test_a_missing_figure_is_one_line_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"report image 'figures/gone.png' is not a file under") as info:
        render_html("![x](figures/gone.png)", tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="http://example.com/x.png"):
        render_html("![x](http://example.com/x.png)", tmp_path)


def measured(version, value):
    return {"version": version, "metric": "domain.fid", "value": value, "under": {"n_samples": 24}}


@pytest.mark.parametrize("decision, champion, expected", [
    ({"candidate": measured("2", 1.0), "champion_before": measured("1", 2.0), "champion": "2"}, "2", 1.0),
    ({"candidate": measured("2", 3.0), "champion_before": measured("1", 2.0), "champion": "1"}, "1", 2.0),
    ({"candidate": measured("1", 3.0), "champion_before": None, "champion": "1"}, "1", 3.0),
])
def test_the_champion_column_holds_the_champion_after_the_gate(decision, champion, expected):
    held = current_champion(decision)
    assert (held["version"], held["value"]) == (champion, expected)
    kept_unmeasured = {"candidate": measured("2", 3.0), "champion_before": {"version": "1"}, "champion": "1"}
    assert current_champion(kept_unmeasured) is None


def test_quality_during_training_is_optional_and_a_bad_file_is_one_line(tmp_path, monkeypatch):
    from pipeline.stage import read_train_eval

    monkeypatch.chdir(tmp_path)
    assert read_train_eval() is None  # absent: the report says it was not measured
    table = tmp_path / "reports/plots/train_eval.csv"
    table.parent.mkdir(parents=True)
    table.write_text("step,fid,confident\n")
    assert read_train_eval() == []  # train.eval_every = 0: a header only
    table.write_text("step,fid,confident\n200,5.5,0.25\n400,3.0,0.5\n")
    assert read_train_eval() == [{"step": 200.0, "fid": 5.5, "confident": 0.25},
                                 {"step": 400.0, "fid": 3.0, "confident": 0.5}]
    table.write_text("step,fid\n200,5.5\n")
    with pytest.raises(DataError, match=r"lacks the column\(s\) confident: re-run the train stage") as info:
        read_train_eval()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- the tiny DAG's report
def read(project: Path, rel: str):
    text = (project / rel).read_text()
    return json.loads(text) if rel.endswith(".json") else text


def metric_sources(project: Path) -> list:
    """Every value a number in the report may come from: the metrics, the parameters, the data's
    description, the registered version and the stage timings."""
    files = [*sorted((project / "reports/metrics").glob("*.json")),
             *sorted((project / "reports/timing").glob("*.json")),
             project / "data/prepared/meta.json", project / "models/registered.json"]
    trees = [json.loads(f.read_text()) for f in files] + [yaml.safe_load((project / "params.yaml").read_text())]
    leaves: list = []

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            leaves.append(float(node))
        elif isinstance(node, str) and re.fullmatch(r"-?\d+(\.\d+)?", node):  # versions are strings
            leaves.append(float(node))

    for tree in trees:
        walk(tree)
    return leaves


def shown_as(value: float, text: str) -> bool:
    """`text` is `value` as the report prints it: rounded to the decimals shown, or to the significant digits
    shown (4 for most, `:.4g`; exponent notation always counts significant digits)."""
    mantissa = text.lstrip("-").split("e")[0]
    if "e" not in text:
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        if round(value, decimals) == float(text):
            return True
    significant = len(mantissa.replace(".", "").lstrip("0")) or 1
    return float(f"{value:.{significant}g}") == float(text)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["reports/report.md", "reports/report.html"])
def test_every_number_in_the_report_is_one_in_the_metrics(tracked_dag, page):
    project = tracked_dag.project
    body = read(project, page)
    body = body.split("## Parameters")[0].split("<h2>Parameters</h2>")[0]  # the parameters block is params.yaml itself
    sources = metric_sources(project)
    numbers = numbers_outside_code(body, html=page.endswith(".html"))
    assert len(numbers) > 60
    unexplained = [n for n in numbers if not any(shown_as(v, n) for v in sources)]
    assert unexplained == []


@pytest.mark.slow
@pytest.mark.parametrize("page", ["reports/report.md", "reports/report.html"])
def test_report_cells_are_the_metrics_they_name(tracked_dag, page):
    project = tracked_dag.project
    tables = report_tables(read(project, page), html=page.endswith(".html"))
    evaluate, sweep = read(project, "reports/metrics/evaluate.json"), read(project, "reports/metrics/sweep.json")
    registry, train = read(project, "reports/metrics/registry.json"), read(project, "reports/metrics/train.json")
    domain = evaluate["domain"]
    metrics = {row[0]: row for row in tables["metric"] if row[1] == "domain"}
    assert set(metrics) == {"FID ↓", "KID ↓", "precision ↑", "recall ↑"}
    for label, key in [("FID ↓", "fid"), ("KID ↓", "kid_mean"), ("precision ↑", "precision"), ("recall ↑", "recall")]:
        row = metrics[label]
        assert row[2] == f"{domain['n_samples']} vs {domain['n_reference']}"
        assert shown_as(domain[key], row[3].split(" ± ")[0])
        assert row[4] == f"{domain['floor'][key]:.4g} (N={domain['floor']['n_samples']})"
    champion = registry["candidate"]  # the first version: promoted
    assert registry["decision"] == "promoted"
    held = f"v{champion['version']}: {champion['value']:.4g} (N={champion['under']['n_samples']})"
    assert metrics["FID ↓"][5] == held
    assert {metrics[k][5] for k in ("KID ↓", "precision ↑", "recall ↑")} == {"—"}
    rows = {(r[0], r[1]): r for r in tables["sampler"]}
    assert set(rows) == {(r["sampler"], str(r["steps"])) for r in sweep["sweep"].values()}
    for r in sweep["sweep"].values():
        row = rows[(r["sampler"], str(r["steps"]))]
        assert (row[2], row[3], row[5]) == (f"{r['fid']:.4g}", f"{r['fid_floor']:.4g}", str(r["n_samples"]))
        speed = json.loads((project / "reports/timing/sweep.json").read_text())
        assert shown_as(speed[f"{r['sampler']}_{r['steps']}_samples_per_s"], row[6])
    shares = {r[0]: r for r in tables["class"]}
    for name, share in evaluate["coverage"]["per_class"].items():
        assert shares[name][1:] == [f"{share['samples']:.3f}", f"{share['data']:.3f}"]
    [trained] = tables["steps"]
    assert trained[:4] == [str(train["train"][k]) for k in ("steps", "parameters", "device", "precision")]
    timings = {r[0]: r for r in tables["stage"]}
    for path in (project / "reports/timing").glob("*.json"):
        t = json.loads(path.read_text())
        if t["stage"] != "report":  # its own time is written after the report
            assert timings[t["stage"]][1:3] == [f"{t['wall_s']:.4g}", f"`{t['finished']}`"]
            extra = {k: v for k, v in t.items() if k not in ("stage", "wall_s", "finished")}
            assert timings[t["stage"]][3] == (", ".join(f"{k} {v:.4g}" for k, v in extra.items()) or "—")


@pytest.mark.slow
def test_provenance_names_commit_data_model_and_run(tracked_dag):
    project = tracked_dag.project
    prov = {r[0]: r[1] for r in report_tables(read(project, "reports/report.md"), html=False)["what"]}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert prov["git commit"].startswith(f"`{head}` (uncommitted changes: ")
    meta, registered = read(project, "data/prepared/meta.json"), read(project, "models/registered.json")
    assert f"`{meta['sha256']['train']}`" in prov["data"] and f"`{meta['sha256']['test']}`" in prov["data"]
    assert prov["model"].startswith(f"{registered['model']} version {registered['version']}, aliases `candidate`, "
                                    "`champion`")
    registry = read(project, "reports/metrics/registry.json")
    url = f"{tracked_dag.server.uri}/#/experiments/{registry['experiment_id']}/runs/{registry['run_id']}"
    assert prov["MLflow run"] == f"[`{registry['run_id']}`]({url}) on `{tracked_dag.server.uri}`"
    train = read(project, "reports/metrics/train.json")["train"]
    assert prov["training device"] == f"{train['device']}, precision {train['precision']}"
    html = read(project, "reports/report.html")
    assert f'<a href="{url}">' in html


@pytest.mark.slow
def test_report_html_is_one_self_contained_file(tracked_dag):
    project = tracked_dag.project
    html, md = read(project, "reports/report.html"), read(project, "reports/report.md")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert images == ["figures/samples.png", "figures/trajectory.png", "figures/loss.png",
                      "figures/training_quality.png", "figures/coverage.png", "figures/sampler_sweep.png"]
    sources = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', html)
    assert [base64.b64decode(s.split(",", 1)[1]) for s in sources] == [
        (project / "reports" / p).read_bytes() for p in images]
    assert not re.search(r"<(script|link|iframe)\b|@import|url\(", html)


@pytest.mark.slow
def test_report_figures_are_the_same_bytes_when_redrawn(tracked_dag):
    project = tracked_dag.project
    figures = sorted((project / "reports/figures").glob("*.png"))
    before = {p.name: p.read_bytes() for p in figures}
    tracked_dag.run([sys.executable, "-m", "pipeline.report"])
    assert {p.name: p.read_bytes() for p in figures} == before
    assert {"trajectory.png", "sampler_sweep.png", "coverage.png", "loss.png", "samples.png"} <= set(before)


@pytest.mark.slow
def test_dvc_plots_draw_every_declared_figure(tracked_dag):
    shown = json.loads(tracked_dag.run([sys.executable, "-m", "dvc", "plots", "show", "--json"]).stdout)["data"]
    declared = {"reports/plots/loss.csv", "reports/plots/train_eval.csv", "reports/plots/sampler_sweep.csv",
                "reports/plots/class_coverage.csv",
                "reports/figures/samples.png", "reports/figures/trajectory.png", "reports/figures/loss.png",
                "reports/figures/sampler_sweep.png", "reports/figures/coverage.png"}
    assert declared <= set(shown), set(shown)
    [sweep] = shown["reports/plots/sampler_sweep.csv"]
    layers = sweep["content"]["layer"]
    assert layers[0]["encoding"]["color"]["field"] == "sampler"  # one line per sampler
    assert layers[1]["encoding"]["y"]["field"] == "fid_floor" and layers[1]["mark"]["strokeDash"]
    samplers = {row["sampler"] for row in sweep["content"]["data"]["values"]}
    assert samplers == {r["sampler"] for r in read(tracked_dag.project, "reports/metrics/sweep.json")["sweep"].values()}
    [coverage] = shown["reports/plots/class_coverage.csv"]
    assert {row["class"] for row in coverage["content"]["data"]["values"]} == set(
        read(tracked_dag.project, "reports/metrics/evaluate.json")["coverage"]["per_class"])
    diff = tracked_dag.run([sys.executable, "-m", "dvc", "metrics", "diff", "HEAD", "--json"]).stdout
    assert "domain.fid" in json.dumps(json.loads(diff))


def test_the_inception_rows_show_sfid_with_its_floor_and_say_why_is_is_missing():
    from ddpm.report.render import _metric_rows

    floor = {"fid": 1.0, "sfid": 2.0, "kid_mean": 0.01, "precision": 0.7, "recall": 0.6, "inception_score": None,
             "inception_score_std": None, "n_samples": 100}
    inception = {**floor, "fid": 5.0, "sfid": 7.5, "kid_std": 0.001, "n_samples": 100, "n_reference": 200,
                 "inception_score_unavailable": "not available: no classifier layer", "floor": floor}
    rows = _metric_rows({"inception": inception}, {})
    assert "| sFID ↓ | inception | 100 vs 200 | 7.5 | 2 (N=100) | — |" in rows
    assert "| Inception Score ↑ | inception | — | not available: no classifier layer | — | — |" in rows
    with_is = {**inception, "inception_score": 3.25, "inception_score_std": 0.125,
               "floor": {**floor, "inception_score": 9.5}}
    assert "| Inception Score ↑ | inception | 100 vs 200 | 3.25 ± 0.12 | 9.5 (N=100) | — |" in _metric_rows(
        {"inception": with_is}, {})
