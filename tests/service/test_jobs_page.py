"""``GET /``: the jobs page lists jobs and studies with status, verdict, models, dataset,
progress and working links, filters by status and verdict, pages, and shows a failed job's
error; it renders in headless Chromium."""

from __future__ import annotations

import re

from sqlalchemy import update

from tests.ci import skip_or_fail
from tests.results.test_study import make_entry
from tests.service.test_studies_api import _job, client  # noqa: F401  (the fixture)
from worker.store.models import Job


def _jobs(world, db) -> dict[str, str]:
    ids = {
        "passed": _job(world, db, make_entry("A"), world.candidate),
        "failed-gate": _job(world, db, make_entry("B"), world.candidate),
        "broken": _job(world, db, None, world.candidate, status="failed"),
        "waiting": _job(world, db, None, world.candidate, status="queued"),
    }
    verdicts = {"passed": "pass", "failed-gate": "fail"}
    for key, verdict in verdicts.items():
        db.execute(update(Job).where(Job.id == ids[key]).values(verdict={"verdict": verdict}))
    db.execute(
        update(Job)
        .where(Job.id == ids["broken"])
        .values(error="checkpoint checkpoint:abc: <not> a safetensors file")
    )
    db.execute(
        update(Job).where(Job.id == ids["waiting"]).values(progress_done=3, progress_total=9)
    )
    db.commit()
    return ids


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr class="job s-(\w+)"><td><a class="mono" href="/drift-jobs/(\w+)"', page)


def test_lists_jobs_with_links_that_resolve(world, db) -> None:
    ids = _jobs(world, db)
    study = world.client.post(
        "/drift-studies", json={"name": "two archs", "job_ids": [ids["passed"], ids["failed-gate"]]}
    ).json()
    response = world.client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    listed = {job_id for _, job_id in _rows(page)}
    assert listed == set(ids.values())
    assert "4 jobs" in page and "two archs" in page
    assert (
        '<span class="pill ok">pass</span>' in page and '<span class="pill bad">fail</span>' in page
    )
    assert "3 / 9" in page  # the queued job's progress
    # the failed job's error, escaped
    assert "&lt;not&gt; a safetensors file" in page and "<not>" not in page
    for link in set(re.findall(r'href="(/[^"]*)"', page)):
        link = link.replace("&amp;", "&")
        if link.startswith("/?") or link == "/docs":
            continue
        got = world.client.get(link)
        assert got.status_code == 200, (link, got.status_code, got.text[:200])
    assert f'href="/drift-studies/{study["id"]}/report?format=md"' in page


def test_filters_and_pages(world, db) -> None:
    ids = _jobs(world, db)
    failed = world.client.get("/", params={"status": "failed"}).text
    assert [job_id for _, job_id in _rows(failed)] == [ids["broken"]]
    assert "1 job (status failed)" in failed
    gated = world.client.get("/", params={"verdict": "fail"}).text
    assert [job_id for _, job_id in _rows(gated)] == [ids["failed-gate"]]
    ungated = world.client.get("/", params={"verdict": "none"}).text
    assert {job_id for _, job_id in _rows(ungated)} == {ids["broken"], ids["waiting"]}
    first = world.client.get("/", params={"limit": 3}).text
    second = world.client.get("/", params={"limit": 3, "offset": 3}).text
    assert len(_rows(first)) == 3 and len(_rows(second)) == 1
    assert {j for _, j in _rows(first)} | {j for _, j in _rows(second)} == set(ids.values())
    assert 'rel="next" href="/?limit=3&amp;offset=3"' in first and 'rel="prev"' in second
    bad = world.client.get("/", params={"verdict": "maybe"})
    assert bad.status_code == 422 and "query.verdict" in bad.text


def test_the_page_renders_in_headless_chromium(world, db, tmp_path) -> None:
    from tests.render.test_html_report import _chromium, _headless

    browser = _chromium()
    if browser is None:
        skip_or_fail("chromium is not installed")
    _jobs(world, db)
    page = tmp_path / "jobs.html"
    page.write_text(world.client.get("/").text)
    dom = _headless(browser, page, tmp_path / "profile", "--dump-dom")
    assert dom.count('<tr class="job ') == 4 and 'id="studies"' in dom
