"""The report as markdown (ddpm.report.html makes the HTML page of it).

Every value from outside this module goes into the markdown through ddpm.report.escape (md_text, md_code,
md_link) or as a number formatted here: a string from the registry or the data shows as text.
"""

from __future__ import annotations

import json
from typing import Any

from ddpm.report.escape import md_code, md_link, md_text


def _fmt(v: Any) -> str:
    """A number to 4 significant digits (an int whole); anything else (a string a registry user wrote where a
    number belongs) as text."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return "—" if v is None else md_text(v)


def current_champion(registry: dict) -> dict | None:
    """The champion after the gate, with the measurement it holds the alias by (or None without one)."""
    for side in (registry.get("candidate"), registry.get("champion_before")):
        if side and side.get("version") == registry.get("champion") and "value" in side:
            return side
    return None


# train.json's summary as the training table shows it, in this order, where the run recorded it
_TRAINING_COLUMNS = {"steps": "steps", "parameters": "parameters", "device": "device", "precision": "precision",
                     "processes": "processes", "images_per_s": "images/s", "final_loss": "final loss"}


def _training_table(train: dict) -> list[str]:
    keys = [k for k in _TRAINING_COLUMNS if k in train]
    return [f"| {' | '.join(_TRAINING_COLUMNS[k] for k in keys)} |", f"|{'---|' * len(keys)}",
            f"| {' | '.join(_fmt(train[k]) for k in keys)} |", ""]


def _metric_rows(evaluation: dict, registry: dict) -> list[str]:
    champion = current_champion(registry) if registry else None
    rows = []
    for space in ("inception", "domain"):
        m = evaluation.get(space)
        if not m:
            continue
        floor = m["floor"]
        for key, label in (("fid", "FID ↓"), ("sfid", "sFID ↓"), ("kid_mean", "KID ↓"), ("precision", "precision ↑"),
                           ("recall", "recall ↑"), ("inception_score", "Inception Score ↑")):
            if key not in m:  # sFID and IS: the inception space only
                continue
            if m[key] is None:  # IS without the network's classifier (the offline weights have none)
                rows.append(f"| {label} | {space} | — | {md_text(m.get(f'{key}_unavailable', 'not available'))} | — "
                            "| — |")
                continue
            spread = {"kid_mean": "kid_std", "inception_score": "inception_score_std"}.get(key)
            value = f"{m[key]:.4g}" + (f" ± {m[spread]:.2g}" if spread else "")
            held = "—"
            if champion and champion["metric"] == f"{space}.{key}":
                # champion_before is the champion version's tag, which any registry user can write
                held = (f"v{_fmt(champion['version'])}: {_fmt(champion['value'])} "
                        f"(N={_fmt(champion['under']['n_samples'])})")
            rows.append(f"| {label} | {space} | {m['n_samples']} vs {m['n_reference']} | {value} | "
                        f"{floor[key]:.4g} (N={floor['n_samples']}) | {held} |")
    return rows


def _train_protocol_lines(evaluation: dict) -> list[str]:
    """evaluate.train_statistics: FID (and sFID) against the training set, as the papers report them."""
    lines = []
    for space in ("inception", "domain"):
        m = evaluation.get(space, {}).get("train")
        if m:
            sfid = f", sFID {m['sfid']:.4g}" if "sfid" in m else ""
            lines.append(f"Against the {m['n_reference']} training images' statistics ({space}, the papers' "
                         f"protocol): FID {m['fid']:.4g}{sfid} with N = {m['n_samples']} samples.")
    return [*lines, ""] if lines else []


def _likelihood_lines(nll: dict, timesteps: int) -> list[str]:
    """The NLL bound of evaluate.json, with its parts and how it was estimated."""
    if not nll:
        return ["Likelihood: not computed in this run (evaluate.nll_images: 0).", ""]
    given = "p(x | y), each image with its own class" if nll["conditional"] else "p(x)"
    estimate = ("every KL term" if nll["terms"] >= timesteps - 1 else
                f"{nll['terms']} stratified KL terms per image, an unbiased estimate of the sum over the "
                f"T = {timesteps} chain")
    return [
        "## Likelihood", "",
        (f"NLL bound **{nll['bits_per_dim']:.4f} ± {nll['standard_error']:.2g} bits/dim** (± one standard error) of "
         f"{given} on {nll['n']} held-out images: prior L_T {nll['prior']:.3g}, KL terms {nll['kl']:.4g}, "
         f"decoder L_0 {nll['decoder']:.4g}; {estimate}, reverse variance {md_text(nll['variance'])}."), "",
    ]


def _sweep_rows(sweep: dict, speed: dict) -> list[str]:
    """One row per sampler setting; samples/s from the sweep stage's timing (wall clock is not a metric)."""
    return [f"| {md_text(r['sampler'])} | {r['steps']} | {r['fid']:.4g} | {r['fid_floor']:.4g} | "
            f"{md_text(r['space'])} | {r['n_samples']} | {_fmt(speed.get(f'{key}_samples_per_s', '—'))} |"
            for key, r in sweep.items()]


def _conditional_lines(conditional: dict, guided: dict, sample: dict) -> list[str]:
    """A class-conditional model: evaluate's conditional accuracy per class, and the sweep against w."""
    lines = ["## Class-conditional samples", ""]
    if conditional:
        lines += [
            (f"Conditional accuracy: {_fmt(conditional['accuracy'])} of {conditional['n_samples']} samples "
             f"(classifier-free guidance w = {sample['guidance']:g}, autoguidance w = {sample['autoguidance']:g}) are "
             "classified by the domain classifier as the class they were "
             f"drawn for, against {_fmt(conditional.get('accuracy_real'))} of {_fmt(conditional.get('n_real'))} real "
             "images it never saw (its own errors count against the samples too)."), "",
            ("| class | samples classified as their class | real images | FID against the held-out images of the "
             "class |"), "|---|---|---|---|",
            *[f"| {md_text(name)} | {_fmt(v['samples'])} | {_fmt(v.get('real'))} | {_fmt(v.get('fid'))} |"
              for name, v in conditional["per_class"].items()], "",
            (f"Per-class FID is in the domain space, and left out (—) for a class with fewer than "
             f"{conditional.get('fid_min_n')} samples or held-out images."), "",
        ]
    if guided:
        rows = list(guided.values())
        lines += [
            (f"Classifier-free guidance against w (the sweep stage: {rows[0]['n_samples']} samples each, the sample "
             f"stage's sampler and steps): higher w trades diversity (FID) for fidelity to the class (accuracy)."), "",
            "| guidance w | FID | data floor | feature space | conditional accuracy |", "|---|---|---|---|---|",
            *[f"| {r['guidance']:g} | {r['fid']:.4g} | {r['fid_floor']:.4g} | {md_text(r['space'])} | "
              f"{_fmt(r['accuracy'])} |"
              for r in rows], "",
        ]
    return lines


def _registry_lines(registry: dict) -> list[str]:
    """The champion gate's decision (reports/metrics/registry.json, written by the promote stage). Every field
    may come from the registry: the reason quotes the champion's tags, and a run's recorded decision is a tag."""
    cand, before = registry["candidate"], registry.get("champion_before")
    was = f" (was version {md_text(before['version'])})" if before and before["version"] != registry["champion"] else ""
    return [
        "## Model registry (MLflow)", "",
        (f"Candidate: **{md_text(registry['model'])}** version {md_text(cand['version'])} (run "
         f"{md_code(registry['run_id'])}), {md_text(registry['metric'])} = {_fmt(cand['value'])} "
         f"({md_text(cand['under'].get('space'))} space, N = {_fmt(cand['under'].get('n_samples'))}; "
         f"{md_text(registry['direction'])})."), "",
        (f"Champion gate: **{md_text(registry['decision'])}**. The `champion` alias is on version "
         f"{md_text(registry['champion'])}{was}. Reason: {md_text(registry['reason'])}."), "",
    ]


_TIMING_KEYS = ("stage", "wall_s", "finished")  # what pipeline.stage.run writes for every stage


def _provenance_lines(*, git: dict, data_meta: dict, registered: dict, registry: dict, train: dict,
                      timings: list[dict], run_url: str | None) -> list[str]:
    """Where this report's numbers come from: code, data, model, MLflow run, hardware, stage times."""
    aliases = ["candidate"] + (["champion"] if registry.get("champion") == registered.get("version") else [])
    run_id = registry.get("run_id")
    run = md_link(md_code(run_id), run_url)  # the URL holds the run id, which the registry can write
    where = f" on {md_code(registry['tracking_uri'])}" if registry.get("tracking_uri") else ""
    sha = data_meta.get("sha256", {})
    lines = [
        "## Provenance", "",
        "| what | value |", "|---|---|",
        f"| git commit | {md_code(git['commit'])} (uncommitted changes: {md_text(git['dirty'])}) |",
        (f"| data | {md_text(data_meta['source'])}; sha256 training split {md_code(sha.get('train'))}, held-out split "
         f"{md_code(sha.get('test'))} (data/prepared/meta.json) |"),
        (f"| model | {md_text(registered.get('model'))} version {md_text(registered.get('version'))}, aliases "
         f"{', '.join(md_code(a) for a in aliases)}; checkpoint sha256 "
         f"{md_code(registered.get('checkpoint_sha256'))} |"),
        f"| MLflow run | {run}{where} |",
        f"| training device | {md_text(train.get('device'))}, precision {md_text(train.get('precision'))} |", "",
    ]
    if timings:
        lines += [("Wall time per stage (reports/timing/, the last run of each stage on this machine; this stage's "
                   "own time is written after the report):"), "",
                  "| stage | wall time (s) | finished | the stage's own figures |", "|---|---|---|---|",
                  *[f"| {md_text(t['stage'])} | {_fmt(t['wall_s'])} | {md_code(t['finished'])} | "
                    f"{', '.join(f'{md_text(k)} {_fmt(v)}' for k, v in t.items() if k not in _TIMING_KEYS) or '—'} |"
                    for t in timings], ""]
    else:
        lines += [("Wall time per stage: none recorded here (reports/timing/ is written when a stage runs on this "
                   "machine; outputs restored by DVC from its cache bring none)."), ""]
    return lines


def render_markdown(*, params: dict, data_meta: dict, metrics: dict[str, dict], registered: dict, git: dict,
                    timings: list[dict], figures: dict[str, str], run_url: str | None) -> str:
    """The report. `metrics`: the JSON of reports/metrics/ by file stem; `figures`: image paths relative to the
    report by name (samples, trajectory, loss, sampler_sweep, coverage, and training_quality when measured);
    `run_url`: the MLflow run's web page, when the tracking server has one."""
    train = metrics.get("train", {}).get("train", {})
    sample = metrics.get("sample", {}).get("sample", {})
    evaluation = metrics.get("evaluate", {})
    coverage = evaluation.get("coverage", {})
    sweep = metrics.get("sweep", {}).get("sweep", {})
    clf = metrics.get("classifier", {}).get("classifier", {})
    registry = metrics.get("registry", {})
    spaces = {s: evaluation[s]["weights"] for s in ("inception", "domain") if s in evaluation}
    sp = params["sample"]
    lines = [
        "# DDPM run report", "",
        (f"Data: **{md_text(data_meta['source'])}**, {_fmt(data_meta['counts']['train'])} training and "
         f"{_fmt(data_meta['counts']['test'])} held-out images of shape {md_text(tuple(data_meta['shape']))}."), "",
        (f"## Samples ({_fmt(sample.get('n'))} drawn with {md_text(sample.get('sampler'))}, "
         f"{_fmt(sample.get('steps'))} steps, EMA weights)"), "", f"![samples]({figures['samples']})", "",
        "## Denoising trajectory", "", f"![denoising trajectory]({figures['trajectory']})", "",
        ("Top: the forward process x_t ~ q(x_t | x_0) on held-out images (one noise draw per image), t rising through "
         f"the timesteps the sampler visits (T = {params['diffusion']['timesteps']}). Bottom: the reverse process "
         f"with the sample stage's settings ({md_text(sp['sampler'])}, {sp['steps']} steps, seed {sp['seed']}, EMA "
         "weights), from pure noise to the sample: each step's input x_t above the model's prediction x̂_0 of the "
         "clean image. Columns are the sampler's steps spread evenly from the first to the last."), "",
        "## Training", "", f"![loss curve]({figures['loss']})", "",
        *_training_table(train),
    ]
    if "training_quality" in figures:
        lines += [("Quality during training (reports/plots/train_eval.csv): FID of samples drawn at each evaluated "
                   "step, and the share the domain classifier labels confidently."), "",
                  f"![quality during training]({figures['training_quality']})", ""]
    else:
        lines += [("Quality during training: not measured in this run (reports/plots/train_eval.csv is absent or "
                   "empty; train.eval_every = 0 turns it off)."), ""]
    lines += [
        "## Metrics (samples against the held-out split)", "",
        "| metric | feature space | N (samples vs held-out) | value | data floor | champion |",
        "|---|---|---|---|---|---|",
        *_metric_rows(evaluation, registry), "",
        *_train_protocol_lines(evaluation),
        "Feature spaces: " + "; ".join(f"**{k}** = {md_text(v)}" for k, v in spaces.items()) + ". "
        f"The domain classifier scores {_fmt(clf.get('test_accuracy'))} accuracy on the {_fmt(clf.get('n_test'))} "
        "held-out images. The data floor is the same metric between real training images and the held-out "
        "images at the same N: the best any generator can expect. FID and KID fall as samples improve; "
        f"precision and recall (k = {params['evaluate']['pr_k']}) rise towards the floor's. The champion column "
        "holds the current champion's value of the metric the champion gate compares (the registry records that "
        "one measurement).", "",
        *_likelihood_lines(evaluation.get("nll", {}), params["diffusion"]["timesteps"]),
    ]
    if coverage:
        lines += [
            "## Class coverage (domain classifier)", "", f"![class coverage]({figures['coverage']})", "",
            (f"{_fmt(coverage.get('confident_share'))} of {_fmt(coverage.get('n_samples'))} samples are confidently "
             f"classified (p ≥ {params['evaluate']['confidence']}), against "
             f"{_fmt(coverage.get('confident_share_real'))} "
             f"of {_fmt(coverage.get('n_real'))} real images the classifier never saw; class-share total variation "
             f"{_fmt(coverage.get('class_share_tv'))} (0 = the data's shares). Missing classes: "
             f"{', '.join(md_text(name) for name in coverage.get('missing_classes', [])) or 'none'}."), "",
            "| class | share of samples | share of data |", "|---|---|---|",
            *[f"| {md_text(k)} | {v['samples']:.3f} | {v['data']:.3f} |"
              for k, v in coverage.get("per_class", {}).items()],
            "",
        ]
    if sweep:
        speed = next((t for t in timings if t["stage"] == "sweep"), {})
        ddpm = ("DDPM with all T steps is in the table." if params["sweep"]["ddpm"] else
                "DDPM with all T steps (T network calls per sample) is not in this profile's sweep "
                "(sweep.ddpm: false): `dvc exp run -S sweep.ddpm=true` adds it.")
        lines += [
            "## FID against the sampler", "", f"![FID against sampler steps]({figures['sampler_sweep']})", "",
            "| sampler | steps | FID | data floor | feature space | N | samples/s |", "|---|---|---|---|---|---|---|",
            *_sweep_rows(sweep, speed), "", ddpm, "",
        ]
    if evaluation.get("conditional") or metrics.get("sweep", {}).get("guidance"):
        lines += _conditional_lines(evaluation.get("conditional", {}), metrics.get("sweep", {}).get("guidance", {}),
                                    sp)
    if registry:
        lines += _registry_lines(registry)
    lines += _provenance_lines(git=git, data_meta=data_meta, registered=registered, registry=registry, train=train,
                               timings=timings, run_url=run_url)
    # json.dumps writes a line break in a string as \n, so every line of the block starts with a brace or spaces:
    # no parameter's value can close the fence, and a fence shows its content as text
    lines += ["## Parameters", "", "```json", json.dumps(params, indent=2), "```", ""]
    return "\n".join(lines)
