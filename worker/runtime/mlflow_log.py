"""The gate's outcome in MLflow (``camdrift gate --mlflow``, or a job's ``mlflow`` option,
logged by the worker that finalises it; extra ``camdrift[mlflow]``).

Logs to the run named by ``run_id``, else the active run (``MLFLOW_RUN_ID`` in a training
pipeline), else a new run in ``experiment``: the verdict as a tag and a metric (1 pass, 0 fail,
-1 inconclusive), every rule check's observed value as a metric
(``camdrift.<method>.<metric>.<class>.<stat>``), the models and data as tags, and the files
the gate wrote (report, HTML page, JUnit, markdown) as artifacts under ``camdrift/``. The
tracking server comes from ``MLFLOW_TRACKING_URI`` as MLflow reads it. MLflow is imported here
only, and only when asked for.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

VERDICT_VALUE = {"pass": 1.0, "fail": 0.0, "inconclusive": -1.0}
ARTIFACT_DIR = "camdrift"
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")  # what MLflow accepts in a metric name


def metric_key(*parts: Any) -> str:
    """An MLflow metric name from the parts (other characters become ``_``)."""
    return ".".join(_KEY_CHARS.sub("_", str(p)) for p in parts if p not in (None, ""))


def check_metrics(verdict: Mapping[str, Any]) -> dict[str, float]:
    """Every decided check's observed value, by a name that says which check it is."""
    out: dict[str, float] = {}
    for check in verdict.get("rules") or []:
        observed = check.get("observed")
        if observed is None or check.get("metric") is None:
            continue
        key = metric_key(
            "camdrift", check.get("method"), check["metric"], check.get("class"), check.get("stat")
        )
        out[key] = float(observed)
    return out


def log_gate(
    report: Mapping[str, Any],
    verdict: Mapping[str, Any],
    files: Mapping[str, Path | None],
    *,
    run_id: str | None = None,
    experiment: str | None = None,
) -> str:
    """Log the gate's verdict, checks and files; the run id."""
    import json

    try:
        import mlflow
    except ImportError:
        raise RuntimeError(
            "--mlflow needs MLflow: pip install 'camdrift[mlflow]' (or mlflow-skinny)"
        ) from None
    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        context: Any = contextlib.nullcontext(active)  # a training script's run: log into it
    else:
        if experiment is not None and run_id is None:
            mlflow.set_experiment(experiment)
        context = mlflow.start_run(run_id=run_id, nested=active is not None)
    models = report.get("models") or {}
    state = str(verdict.get("verdict"))
    with context as run:
        tags = {
            "camdrift.verdict": state,
            "camdrift.baseline.sha256": (models.get("baseline") or {}).get("sha256"),
            "camdrift.candidate.sha256": (models.get("candidate") or {}).get("sha256"),
            "camdrift.candidate.arch": (models.get("candidate") or {}).get("arch"),
            "camdrift.dataset.fingerprint": (report.get("dataset") or {}).get("fingerprint"),
        }
        mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})
        metrics = check_metrics(verdict)
        if state in VERDICT_VALUE:  # a job without a policy has no verdict to count
            metrics["camdrift.gate"] = VERDICT_VALUE[state]
        if metrics:
            mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as folder:
            stored = dict(files)
            if stored.get("report") is None:  # the report always goes with the verdict
                path = Path(folder) / "report.json"
                path.write_text(json.dumps(report, indent=2) + "\n")
                stored["report"] = path
            for path in stored.values():
                if path is not None and Path(path).is_file():
                    mlflow.log_artifact(str(path), artifact_path=ARTIFACT_DIR)
        return run.info.run_id
