"""``/drift-studies``: create from succeeded jobs, read, and the report built from stored rows.

Every test runs on a migrated SQLite file and on a fresh, migrated Postgres database (the
``postgres`` cases skip when Postgres is away, and fail under CI: ``require_service``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from scipy import stats as sps
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service import migrate
from service.app import create_app
from tests.results.test_study import METHODS, METRICS, make_entry, scipy_means
from tests.service.conftest import assert_problem, fresh_postgres_database, upload_checkpoint
from worker.results.study import stability_direction, study_report
from worker.store.models import (
    Job,
    JobSample,
    Report,
    SampleMetric,
    SampleSeries,
)
from worker.store.rows import records_from_row
from worker.store.settings import Settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def client(
    request: pytest.FixtureRequest,
    make_client: Callable[..., TestClient],
    make_settings: Callable[..., Settings],
    submitted: list[str],
) -> Iterator[TestClient]:
    """The API on a migrated SQLite copy, or on a new Postgres database migrated by Alembic
    (dropped afterwards). Overrides the conftest ``client`` for this module, so ``world`` and
    ``db`` follow it."""
    if request.param == "sqlite":
        yield make_client()
        return
    with fresh_postgres_database("camdrift_studies") as (url, _, _conn):
        settings = make_settings(database_url=url)
        assert settings.database_url.startswith("postgresql")
        migrate.upgrade(settings)
        with TestClient(create_app(settings)) as pg_client:
            yield pg_client


def _full_row(row: dict) -> dict:
    """A synthetic study row completed into an audit row that SQL can store."""
    label = row["label"]
    return {
        **row,
        "path": f"c{label}/img{row['index']}.png",
        "pred_baseline": label,
        "pred_candidate": label if row["included"] else (label + 1) % 5,
        "probs_baseline": [0.2] * 5,
        "probs_candidate": [0.2] * 5,
        "target_baseline": label,
        "target_candidate": label,
        "degenerate": {m: [False, False] for m in row["metrics"]},
    }


def _job(world, db, entry: dict | None, candidate: str, *, status: str = "succeeded") -> str:
    """A job created through the API whose 'worker' stored ``entry``'s rows and report."""
    body = world.job_body(candidate_id=candidate, metrics=METRICS)
    response = world.client.post("/drift-jobs", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    if entry is not None:
        for row in entry["rows"]:
            db.add_all(records_from_row(job_id, _full_row(row)))
        db.add(Report(job_id=job_id, document=entry["report"]))
    db.execute(update(Job).where(Job.id == job_id).values(status=status))
    db.commit()
    return job_id


@pytest.fixture
def jobs(world, db) -> tuple[list[str], list[dict]]:
    replica = upload_checkpoint(world.client, world.files.replica).json()["id"]
    entries = [make_entry(name) for name in "ABC"]
    candidates = [world.candidate, replica, world.candidate]  # two share a checkpoint name
    ids = [_job(world, db, e, c) for e, c in zip(entries, candidates, strict=True)]
    return ids, entries


def test_create_get_and_report_equal_study_report_on_the_rows(world, jobs) -> None:
    ids, entries = jobs
    response = world.client.post("/drift-studies", json={"name": "archs", "job_ids": ids})
    assert response.status_code == 201, response.text
    study = response.json()
    assert study["name"] == "archs" and study["job_ids"] == ids
    assert response.headers["location"] == f"/drift-studies/{study['id']}"
    assert study["links"]["report"] == f"/drift-studies/{study['id']}/report"
    assert world.client.get(f"/drift-studies/{study['id']}").json() == study

    got = world.client.get(f"/drift-studies/{study['id']}/report", params={"n_boot": 300})
    assert got.status_code == 200, got.text
    report = got.json()
    names = [e["name"] for e in report["entries"]]
    assert len(set(names)) == 3 and [e["job_id"] for e in report["entries"]] == ids
    expected_entries = [
        {**e, "name": name, "job_id": job_id}
        for e, name, job_id in zip(entries, names, ids, strict=True)
    ]
    expected = study_report(expected_entries, n_boot=300, seed=0)
    assert report == {**expected, "study_id": study["id"], "name": "archs"}
    assert report["kendall_tau"]["pearson"][0]["tau"] == pytest.approx(-1.0)
    assert any(r["confident"] for r in report["reversals"])
    again = world.client.get(f"/drift-studies/{study['id']}/report", params={"n_boot": 300})
    assert again.json() == report


def test_study_report_as_markdown(world, jobs) -> None:
    """?format=md: the markdown summary of the same study report the JSON form returns."""
    ids, _ = jobs
    study = world.client.post("/drift-studies", json={"name": "archs", "job_ids": ids}).json()
    url = f"/drift-studies/{study['id']}/report"
    md = world.client.get(url, params={"n_boot": 200, "format": "md"})
    assert md.status_code == 200, md.text
    assert md.headers["content-type"].startswith("text/markdown")
    document = world.client.get(url, params={"n_boot": 200}).json()
    text = md.text
    assert text.startswith(f"## camdrift study — archs (`{study['id']}`)\n")
    for entry in document["entries"]:
        assert f"| {entry['name']} | {entry['arch']} |" in text
    ranking = document["rankings"]["layercam"]["pearson"]
    shown = " > ".join(f"{n} ({ranking['means'][n]:.3f})" for n in ranking["ranking"])
    assert f"| pearson | higher mean | {shown} |" in text
    assert "| pearson | layercam vs gradcam++ | -1.000 |" in text
    assert sum(r["confident"] for r in document["reversals"]) == text.count("| **1.00** |")
    assert_problem(world.client.get(url, params={"format": "pdf"}), 422, "query.format")


def _stored_entries(db: Session, ids: list[str]) -> list[dict]:
    """Per job, the rows as the database holds them, read back with plain SQL (not through
    the code under test): ``included`` per sample and the drift values per method."""
    entries = []
    for job_id in ids:
        samples = db.scalars(
            select(JobSample).where(JobSample.job_id == job_id).order_by(JobSample.index)
        ).all()
        metrics: dict[int, dict[str, dict]] = {}
        for record in db.scalars(select(SampleMetric).where(SampleMetric.job_id == job_id)):
            metrics.setdefault(record.index, {})[record.method] = dict.fromkeys(METRICS)
        for stored in db.scalars(
            select(SampleSeries).where(
                SampleSeries.job_id == job_id, SampleSeries.series == "drift"
            )
        ):
            for metric, value in stored.metric_values.items():
                if metric in METRICS:
                    metrics[stored.index][stored.method][metric] = value
        rows = [
            {"index": s.index, "included": s.included, "metrics": metrics.get(s.index, {})}
            for s in samples
        ]
        entries.append({"rows": rows})
    return entries


def test_rankings_and_tau_equal_a_scipy_computation_on_stored_rows(world, db, jobs) -> None:
    ids, entries = jobs
    stored = _stored_entries(db, ids)
    assert [len(e["rows"]) for e in stored] == [len(e["rows"]) for e in entries]
    study = world.client.post("/drift-studies", json={"name": "sql", "job_ids": ids}).json()
    got = world.client.get(f"/drift-studies/{study['id']}/report", params={"n_boot": 200})
    assert got.status_code == 200, got.text
    report = got.json()
    names = [e["name"] for e in report["entries"]]
    for metric in METRICS:
        for method in METHODS:
            means = scipy_means(stored, method, metric)
            ranking = report["rankings"][method][metric]
            assert [ranking["means"][n] for n in names] == pytest.approx(means, abs=1e-12)
            stable = means if stability_direction(metric) == "higher" else -means
            assert [ranking["ranks"][n] for n in names] == list(sps.rankdata(-stable))
        tau = sps.kendalltau(
            scipy_means(stored, METHODS[0], metric), scipy_means(stored, METHODS[1], metric)
        )
        assert report["kendall_tau"][metric] == [
            {
                "methods": METHODS,
                "tau": pytest.approx(tau.statistic),
                "p_value": pytest.approx(tau.pvalue),
            }
        ]
    assert report["kendall_tau"]["pearson"][0]["tau"] == pytest.approx(-1.0)


def test_create_validation(world, db, jobs) -> None:
    ids, _ = jobs
    url = "/drift-studies"
    assert_problem(
        world.client.post(url, json={"name": "x", "job_ids": ids[:1]}), 422, "body.job_ids"
    )
    assert_problem(world.client.post(url, json={"job_ids": ids}), 422, "body.name")
    missing = "0" * 32
    assert_problem(
        world.client.post(url, json={"name": "x", "job_ids": [ids[0], missing]}),
        422,
        "body.job_ids[1]",
    )
    assert_problem(
        world.client.post(url, json={"name": "x", "job_ids": [ids[0], "nope"]}),
        422,
        "body.job_ids[1]",
    )
    assert_problem(
        world.client.post(url, json={"name": "x", "job_ids": [ids[0], ids[1], ids[0]]}),
        422,
        "body.job_ids[2]",
    )
    queued = _job(world, db, None, world.candidate, status="queued")
    problem = assert_problem(
        world.client.post(url, json={"name": "x", "job_ids": [queued, ids[0]]}),
        422,
        "body.job_ids[0]",
    )
    assert "queued" in problem["detail"]
    other = _job(world, db, make_entry("A", fingerprint="0" * 64), world.candidate)
    problem = assert_problem(
        world.client.post(url, json={"name": "x", "job_ids": [ids[0], ids[1], other]}),
        422,
        "body.job_ids[2]",
    )
    assert "another dataset" in problem["detail"]
    fewer = _job(world, db, make_entry("A", n=50), world.candidate)
    problem = assert_problem(
        world.client.post(url, json={"name": "x", "job_ids": [ids[0], fewer]}),
        422,
        "body.job_ids[1]",
    )
    assert "another sample set" in problem["detail"]


def test_not_found_and_409_when_a_job_is_no_longer_succeeded(world, db, jobs) -> None:
    ids, _ = jobs
    assert_problem(world.client.get("/drift-studies/nope"), 404)
    assert_problem(world.client.get(f"/drift-studies/{'0' * 32}/report"), 404)
    study = world.client.post("/drift-studies", json={"name": "s", "job_ids": ids}).json()
    db.execute(update(Job).where(Job.id == ids[1]).values(status="failed"))
    db.commit()
    problem = assert_problem(world.client.get(f"/drift-studies/{study['id']}/report"), 409)
    assert problem["job_id"] == ids[1] and problem["job_status"] == "failed"
    assert_problem(
        world.client.get(f"/drift-studies/{study['id']}/report", params={"n_boot": 0}),
        422,
        "query.n_boot",
    )


def test_openapi_documents_the_study_routes(world) -> None:
    doc = world.client.get("/openapi.json").json()
    assert {"/drift-studies", "/drift-studies/{study_id}", "/drift-studies/{study_id}/report"} <= (
        set(doc["paths"])
    )
    post = doc["paths"]["/drift-studies"]["post"]
    assert "201" in post["responses"] and "422" in post["responses"]
    report = doc["paths"]["/drift-studies/{study_id}/report"]["get"]["responses"]
    assert "application/problem+json" in report["409"]["content"]
    assert "StudyReport" in doc["components"]["schemas"]
    assert "text/markdown" in report["200"]["content"]
    formats = {
        p["name"]: p for p in doc["paths"]["/drift-studies/{study_id}/report"]["get"]["parameters"]
    }
    assert formats["format"]["schema"]["enum"] == ["json", "md"]
