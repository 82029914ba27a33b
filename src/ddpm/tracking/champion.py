"""The champion gate's rule: whether a candidate model version replaces the champion, and why.

Pure: the measurements arrive as dicts; ddpm.tracking.mlflow_client reads and moves the aliases.
"""

from __future__ import annotations

import math
from typing import Any

from ddpm.config.groups import CHAMPION_METRICS


def gate(candidate: str, measurement: dict[str, Any], champion: str | None,
         champion_measurement: dict[str, Any] | None) -> dict[str, Any]:
    """Whether model version `candidate` replaces `champion` as the champion, and why.

    A measurement is {"metric": "<space>.<name>", "value": float, "under": {...}}: "under" holds
    what makes two values comparable (feature space, its weights, N, the held-out split). The
    candidate wins only when it is strictly better on the same metric under the same conditions.
    """
    metric, value = measurement["metric"], measurement["value"]
    direction = CHAMPION_METRICS[metric.partition(".")[2]]
    out = {"metric": metric, "direction": f"{direction} is better",
           "candidate": {"version": candidate, **measurement},
           "champion_before": {"version": champion, **(champion_measurement or {})} if champion else None}

    def verdict(decision: str, new_champion: str | None, reason: str) -> dict[str, Any]:
        return {**out, "decision": decision, "champion": new_champion, "reason": reason}

    if champion is None:
        return verdict("promoted", candidate, "there was no champion yet")
    if champion == candidate:
        return verdict("already champion", champion, f"version {candidate} already holds the champion alias")
    if not champion_measurement:
        return verdict("kept", champion, f"champion version {champion} has no recorded measurement to compare "
                                         "with: move the alias by hand if the candidate should replace it")
    if champion_measurement["metric"] != metric:
        return verdict("kept", champion, f"champion version {champion} was measured on "
                                         f"{champion_measurement['metric']}, not {metric}")
    theirs, ours = champion_measurement["under"], measurement["under"]
    differ = [f"{k} ({theirs.get(k)} vs {ours.get(k)})" for k in sorted(set(theirs) | set(ours))
              if theirs.get(k) != ours.get(k)]
    if differ:
        return verdict("kept", champion, f"not comparable with champion version {champion}: "
                                         f"{', '.join(differ)} differ (champion vs candidate)")
    best = champion_measurement["value"]
    better = (value < best if direction == "lower" else value > best) and math.isfinite(value)
    sign = ("<" if value < best else ">=") if direction == "lower" else (">" if value > best else "<=")
    where = f"{ours.get('space')} space, N={ours.get('n_samples')}"
    if better:
        return verdict("promoted", candidate, f"{metric} {value:.4g} {sign} {best:.4g} of champion version "
                                              f"{champion} ({where}; {direction} is better)")
    return verdict("kept", champion, f"{metric} {value:.4g} {sign} {best:.4g} of champion version {champion} "
                                     f"({where}; {direction} is better)")


def rightful_champion(champion: str, measurement: dict[str, Any], winners: dict[str, dict[str, Any]]) -> str:
    """The version that should hold the champion alias: `champion` (holding it with `measurement`), unless a
    version that won the alias once (`winners`: version -> the measurement it won with) is strictly better on
    the same metric under the same conditions (of equals, the one holding it stays).

    Sequential promotions never leave a better winner behind (each beat the one before); racing ones can.
    """
    direction = CHAMPION_METRICS[measurement["metric"].partition(".")[2]]
    best, best_value = champion, measurement["value"]
    for version, theirs in sorted(winners.items(), key=lambda item: int(item[0])):
        if theirs.get("metric") != measurement["metric"] or theirs.get("under") != measurement["under"]:
            continue
        value = theirs["value"]
        if math.isfinite(value) and (value < best_value if direction == "lower" else value > best_value):
            best, best_value = version, value
    return best


def gate_note(decision: dict[str, Any]) -> str:
    """One markdown paragraph for the run's description in the MLflow UI."""
    cand = decision["candidate"]
    return (f"Candidate **{decision['model']} v{cand['version']}**: {decision['metric']} = {cand['value']:.4g} "
            f"(N = {cand['under'].get('n_samples')}). Champion gate: **{decision['decision']}**; champion is "
            f"v{decision['champion']}. {decision['reason'][:1].upper()}{decision['reason'][1:]}.")
