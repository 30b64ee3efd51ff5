"""Map consistency (issue 13, item 3a) wired through both entry points: ``camdrift drift``'s
code path and a sharded service job (SQLite, shards and finalisation driven step by step) give
the same per-sample values, the same ``consistency`` section and the same verdict of a rule on
``consistency_change``; the job stores the values (sortable samples page), idempotently.

The oracle is a brute-force numpy computation over the stored raw maps: every pair's Pearson r
by ``np.corrcoef``, averaged over the other maps of the class (no leave-one-out algebra)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service import migrate
from service.app import create_app
from tests.integration.conftest import JOB, assert_reports_equal
from training.checkpoint_format import sha256_file
from training.datasets import discover
from training.phantoms import CLASSES
from worker.catalog import AUDIT_METRICS
from worker.results.gate import Policy, evaluate_policy
from worker.results.gate.policy import PolicyError, parse_policy
from worker.runtime import jobs
from worker.store import Settings, session_scope
from worker.store.models import Checkpoint, Dataset, Job, SampleSeries

pytestmark = pytest.mark.slow
METHODS = JOB["methods"]
BATCH = 1  # shards and the local run batch alike: the same float32 bits, the same float16 maps


def _policy(threshold: float) -> dict[str, Any]:
    """Two rules on consistency_change: one passes (the observed mean + 0.05 as the bound) and
    one fails (the same mean - 0.05), so the verdict is ``fail`` with one check of each."""
    return {
        "min_samples": 1,
        "rule": [
            {
                "name": "no collapse",
                "method": "layercam",
                "metric": "consistency_change",
                "stat": "mean",
                "op": "<=",
                "value": threshold + 0.05,
            },
            {
                "name": "strict",
                "method": "layercam",
                "metric": "consistency_change",
                "stat": "mean",
                "op": "<=",
                "value": threshold - 0.05,
            },
        ],
    }


def _local(inputs, out: Path, policy: dict[str, Any] | None = None) -> dict[str, Any]:
    from worker.engine.audit import AuditConfig
    from worker.runtime.local_run import run_audit

    cfg = AuditConfig(
        methods=METHODS,
        sample_filter="all",
        split=None,
        seed=0,
        noise_floor=True,
        ceiling=JOB["ceiling"],
        batch_size=BATCH,
    )
    return run_audit(
        inputs.baseline,
        inputs.candidate,
        inputs.data,
        cfg,
        out,
        policy=Policy.model_validate(policy) if policy else None,
    )


def _rows(out: Path) -> list[dict[str, Any]]:
    path = out.with_name(out.stem + ".samples.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


class _Recorder:
    """An enqueue that keeps the messages, so the test plays the broker."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[Any]]] = []

    def __call__(self, name: str, args: list[Any]) -> None:
        self.messages.append((name, list(args)))

    def take(self, name: str) -> list[list[Any]]:
        picked = [a for n, a in self.messages if n == name]
        self.messages = [(n, a) for n, a in self.messages if n != name]
        return picked


def _make_job(ctx: jobs.WorkerContext, inputs, policy: dict[str, Any]) -> str:
    with session_scope(ctx.sessions) as s:
        ids = []
        for path in (inputs.baseline, inputs.candidate):
            record = Checkpoint(
                sha256=sha256_file(path),
                name=path.name,
                arch="tinycnn",
                num_classes=len(CLASSES),
                class_names=list(CLASSES),
                phase=None,
                input_size=[64, 64],
                meta={},
                size_bytes=path.stat().st_size,
                storage_path=str(path),
            )
            s.add(record)
            s.flush()
            ids.append(record.id)
        index = discover(inputs.data)
        data = Dataset(
            name="phantoms",
            source="path",
            root_path=str(inputs.data),
            num_samples=len(index.samples),
            class_names=index.class_names,
            class_counts=index.counts(),
            fingerprint=index.fingerprint(),
            skipped=[],
        )
        s.add(data)
        s.flush()
        body = {k: v for k, v in JOB.items() if not k.startswith("with_")}
        job = Job(
            baseline_id=ids[0],
            candidate_id=ids[1],
            dataset_id=data.id,
            config={**body, "policy": policy},
            request_hash="x",
        )
        s.add(job)
        s.flush()
        return job.id


def _run_job(ctx: jobs.WorkerContext, job_id: str) -> None:
    jobs.plan_job(ctx, job_id)
    for job, no in reversed(ctx.enqueue.take(jobs.SHARD)):  # shard order does not matter
        jobs.run_shard(ctx, job, no)
    assert ctx.enqueue.take(jobs.FINALIZE) == [[job_id]]
    jobs.finalize_job(ctx, job_id)


def _stored(ctx: jobs.WorkerContext, job_id: str) -> dict[tuple[int, str, str], float | None]:
    with session_scope(ctx.sessions) as s:
        records = s.execute(
            select(SampleSeries.index, SampleSeries.method, SampleSeries.metric_values).where(
                SampleSeries.job_id == job_id, SampleSeries.stage == "audit"
            )
        ).all()
    return {
        (i, m, name): v
        for i, m, values in records
        for name, v in values.items()
        if name in AUDIT_METRICS
    }


def _values(rows: list[dict[str, Any]], method: str, name: str) -> dict[int, float | None]:
    return {r["index"]: r["metrics"][method][name] for r in rows if r["included"]}


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


def _oracle(maps_dir: Path, rows: list[dict[str, Any]], role: str, method: str) -> dict:
    """Brute force: each included sample's mean r with every other valid map of its class."""
    maps: dict[int, np.ndarray] = {}
    for path in sorted(maps_dir.glob("rows-*.npz")):
        with np.load(path) as data:
            for k, row in enumerate(data["rows"].tolist()):
                maps.setdefault(int(row), data[f"{role}__{method}"][k].astype(np.float64).ravel())
    label = {r["index"]: r["label"] for r in rows if r["included"]}
    assert set(maps) == set(label), "every included sample has stored maps, no other does"
    valid = {i: m for i, m in maps.items() if np.ptp(m) > 0}
    out: dict[int, float | None] = {}
    for i in label:
        others = [j for j in valid if label[j] == label[i] and j != i]
        if i not in valid or not others:
            out[i] = None
            continue
        out[i] = float(np.mean([np.corrcoef(valid[i], valid[j])[0, 1] for j in others]))
    return out


@pytest.fixture(scope="module")
def audits(inputs, tmp_path_factory) -> dict[str, Any]:
    """One local run and one service job of the same audit and policy."""
    root = tmp_path_factory.mktemp("consistency")
    probe = _local(inputs, root / "probe.json")
    observed = probe["summaries"]["layercam"]["consistency_change"]["overall"]["mean"]
    policy = _policy(observed)
    out = root / "local.json"
    local = _local(inputs, out, policy)
    settings = Settings(
        database_url=f"sqlite:///{root}/db.sqlite", storage=str(root / "store"), shard_size=10
    )
    migrate.upgrade(settings)
    ctx = jobs.WorkerContext.create(settings, _Recorder(), device="cpu", batch_size=BATCH)
    job_id = _make_job(ctx, inputs, policy)
    _run_job(ctx, job_id)
    with session_scope(ctx.sessions) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
    client = TestClient(create_app(settings))
    report = client.get(f"/drift-jobs/{job_id}/report").json()
    return {
        "local": local,
        "local_rows": _rows(out),
        "local_maps": root / "local.maps",
        "ctx": ctx,
        "job_id": job_id,
        "client": client,
        "report": report,
    }


def test_local_and_service_rows_carry_the_same_values_as_the_oracle(audits) -> None:
    ctx, job_id = audits["ctx"], audits["job_id"]
    stored = _stored(ctx, job_id)
    local = audits["local_rows"]
    included = [r for r in local if r["included"]]
    assert len(included) == 40
    assert len(stored) == len(included) * len(METHODS) * 3
    for method in METHODS:
        for role, name in (("baseline", "consistency_tl"), ("candidate", "consistency_ft")):
            mine = _values(local, method, name)
            want = _oracle(audits["local_maps"], local, role, method)
            service = _oracle(ctx.store.maps_dir(job_id), local, role, method)
            assert sum(v is not None for v in want.values()) >= 30
            for i, value in mine.items():
                assert _close(value, want[i]), (method, name, i, value, want[i])
                assert _close(want[i], service[i]), "the job's maps are the local run's"
                assert _close(stored[i, method, name], value), (method, name, i)
        change = _values(local, method, "consistency_change")
        tl, ft = _values(local, method, "consistency_tl"), _values(local, method, "consistency_ft")
        for i, value in change.items():
            expected = None if tl[i] is None or ft[i] is None else ft[i] - tl[i]
            assert _close(value, expected) and _close(
                stored[i, method, "consistency_change"], value
            )
    # not computed per pair, so never beside a floor
    assert all(not set(r["floor"][m]) & set(AUDIT_METRICS) for r in included for m in METHODS)


def test_reports_and_verdicts_are_equal(audits) -> None:
    local, report = audits["local"], audits["report"]
    assert_reports_equal(local, report)
    assert set(AUDIT_METRICS) <= set(report["config"]["metrics"])
    rows = audits["local_rows"]
    for method in METHODS:
        section = report["consistency"][method]
        tl = _values(rows, method, "consistency_tl")
        ft = _values(rows, method, "consistency_ft")
        both = [i for i in tl if tl[i] is not None and ft[i] is not None]
        assert section["overall"]["n"] == len(both) >= 30
        assert section["overall"]["tl"] == pytest.approx(np.mean([tl[i] for i in both]))
        assert section["overall"]["change"] == pytest.approx(np.mean([ft[i] - tl[i] for i in both]))
        labels = {r["index"]: r["label"] for r in rows}
        for k, name in enumerate(CLASSES):
            mine = [ft[i] for i in both if labels[i] == k]
            assert section["classes"][name]["ft"] == pytest.approx(np.mean(mine) if mine else None)
        summary = report["summaries"][method]["consistency_change"]["overall"]
        defined = [v for v in _values(rows, method, "consistency_change").values() if v is not None]
        assert summary["n"] == len(defined) and summary["mean"] == pytest.approx(np.mean(defined))
        assert "consistency_change" not in (report["noise_floor"] or {}).get(method, {})
    verdict = report["verdict"]
    assert verdict["verdict"] == "fail"
    assert {c["name"]: c["passed"] for c in verdict["rules"]} == {
        "no collapse": True,
        "strict": False,
    }
    observed = report["summaries"]["layercam"]["consistency_change"]["overall"]["mean"]
    assert all(c["observed"] == pytest.approx(observed) for c in verdict["rules"])


def test_the_samples_page_sorts_by_consistency_change(audits) -> None:
    client, job_id = audits["client"], audits["job_id"]
    page = client.get(
        f"/drift-jobs/{job_id}/samples",
        params={"method": "gradcam++", "sort": "consistency_change", "order": "desc", "limit": 50},
    )
    assert page.status_code == 200, page.text
    items = page.json()["items"]
    values = _values(audits["local_rows"], "gradcam++", "consistency_change")
    defined = sorted((v for v in values.values() if v is not None), reverse=True)
    got = [item["metrics"]["consistency_change"] for item in items if item["included"]]
    assert [v for v in got if v is not None] == pytest.approx(defined)
    assert got[: len(defined)] == pytest.approx(defined), "NULLs last"


def test_finalising_twice_stores_the_same_values(audits) -> None:
    ctx, job_id = audits["ctx"], audits["job_id"]
    before = _stored(ctx, job_id)
    jobs.finalize_job(ctx, job_id)  # a redelivered message: the report exists, nothing moves
    assert _stored(ctx, job_id) == before
    from worker.engine.audit import AuditConfig
    from worker.store import rows as stored_rows

    config = AuditConfig(methods=METHODS, metrics=list(AUDIT_METRICS))
    for _ in range(2):  # a finalisation that ran again before its report was written
        with session_scope(ctx.sessions) as s:
            table = stored_rows.load_table(s, job_id, list(AUDIT_METRICS))
            _, values = jobs.consistency_values(ctx, job_id, table, config)
            jobs.store_consistency_values(s, job_id, values, config)
        assert _stored(ctx, job_id) == before


def test_a_local_run_ignores_the_maps_an_earlier_run_left(inputs, audits, tmp_path) -> None:
    """A stale maps file of other models for the same rows must not mix in (it would conflict,
    or bias the values); the run clears its maps folder first."""
    out = tmp_path / "again.json"
    maps = tmp_path / "again.maps"
    maps.mkdir()
    rng = np.random.default_rng(0)
    grid = np.load(sorted(audits["local_maps"].glob("rows-*.npz"))[0])["baseline__layercam"]
    stale = {"rows": np.arange(4, dtype=np.int64)}
    for role in ("baseline", "candidate"):
        for method in METHODS:
            stale[f"{role}__{method}"] = rng.random((4, *grid.shape[1:])).astype(np.float16)
    np.savez(maps / "rows-000000-000003.npz", **stale)
    (maps / "notes.txt").write_text("not a maps file: kept")
    _local(inputs, out)
    assert (maps / "notes.txt").exists()
    for method in METHODS:
        for name in AUDIT_METRICS:
            again = _values(_rows(out), method, name)
            first = _values(audits["local_rows"], method, name)
            assert all(_close(again[i], first[i]) for i in first), (method, name)


@pytest.mark.parametrize("metric", AUDIT_METRICS)
def test_beyond_floor_on_an_audit_stage_metric_is_refused(metric: str) -> None:
    text = (
        f'[[rule]]\nmethod = "layercam"\nmetric = "{metric}"\nstat = "beyond_floor"\n'
        'op = "<="\nvalue = 0.1\n'
    )
    with pytest.raises(
        PolicyError,
        match=f"line 1: rule 1: stat 'beyond_floor' cannot apply to '{metric}'.*no noise floor",
    ):
        parse_policy(text, "gate.toml")
    with pytest.raises(ValueError, match="no noise floor"):
        Policy.model_validate(
            _policy(0.0)
            | {"rule": [{**_policy(0.0)["rule"][0], "metric": metric, "stat": "beyond_floor"}]}
        )
    assert parse_policy(text.replace("beyond_floor", "q95"), "gate.toml").rule[0].metric == metric
    assert parse_policy(text.replace(metric, "pearson"), "gate.toml").rule[0].stat == "beyond_floor"


def test_a_rule_on_consistency_change_evaluates_on_a_report(audits) -> None:
    """A policy read from TOML, applied to the service report: the check reads the summary."""
    observed = audits["report"]["summaries"]["gradcam++"]["consistency_change"]["overall"]
    text = (
        'min_samples = 1\n[[rule]]\nmethod = "gradcam++"\nmetric = "consistency_change"\n'
        f'stat = "ci95_high"\nop = "<"\nvalue = {observed["ci95_high"] + 1e-3}\n'
    )
    verdict = evaluate_policy(audits["report"], parse_policy(text, "gate.toml"))
    assert verdict["verdict"] == "pass"
    assert verdict["rules"][0]["observed"] == pytest.approx(observed["ci95_high"])
    failing = text.replace(f"{observed['ci95_high'] + 1e-3}", f"{observed['ci95_high'] - 1e-3}")
    assert (
        evaluate_policy(audits["report"], parse_policy(failing, "gate.toml"))["verdict"] == "fail"
    )
