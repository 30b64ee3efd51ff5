"""App-wide behaviour: probes, metrics, auth, problem+json everywhere, OpenAPI, no torch."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from service.auth import token_matches
from tests.service.conftest import assert_problem
from tests.service.test_checkpoint_metadata import safetensors_bytes, with_meta

REPO = Path(__file__).resolve().parents[2]


def test_healthz_and_readyz(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "embedded"}}


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:1/none", "sqlite-in-a-file"])
def test_readyz_reports_what_is_down(make_client, tmp_path, url) -> None:
    if url == "sqlite-in-a-file":
        (tmp_path / "blocker").write_text("a file where a folder should be")
        url = f"sqlite:///{tmp_path}/blocker/db.sqlite"
    client = make_client(broker_url="redis://127.0.0.1:1/0", database_url=url)
    problem = assert_problem(client.get("/readyz"), 503)
    assert problem["checks"]["database"].startswith("down")
    assert problem["checks"]["broker"].startswith("down")
    assert client.get("/healthz").status_code == 200


def test_metrics_exposition(client, world) -> None:
    world.client.post("/drift-jobs", json=world.job_body())
    client.get("/checkpoints/nope")
    text = client.get("/metrics").text
    assert 'camdrift_jobs{status="queued"} 1.0' in text
    assert 'camdrift_jobs{status="running"} 0.0' in text
    assert (
        'camdrift_http_requests_total{method="GET",route="/checkpoints/{checkpoint_id}",'
        'status="404"} 1.0'
    ) in text
    assert (
        'camdrift_http_request_duration_seconds_bucket{le="+Inf",method="POST",'
        'route="/drift-jobs"} 1.0'
    ) in text
    assert "_created" not in text
    assert "# TYPE camdrift_http_request_duration_seconds histogram" in text
    client.get("/no/such/route")
    assert 'route="unmatched",status="404"' in client.get("/metrics").text


def test_each_app_has_its_own_registry_and_embedded_serves_the_worker(make_client) -> None:
    from worker.runtime.metrics import TASKS

    TASKS.labels("camdrift.plan_job", "ok").inc(0)  # the series exists in this process
    embedded, other = make_client(), make_client()
    embedded.get("/checkpoints/nope")
    assert 'route="/checkpoints/{checkpoint_id}"' not in other.get("/metrics").text
    text = embedded.get("/metrics").text
    assert 'route="/checkpoints/{checkpoint_id}",status="404"} 1.0' in text
    assert "camdrift_worker_tasks_total" in text  # its runner runs in this process
    queued = make_client(broker_url="redis://127.0.0.1:1/0")
    assert "camdrift_worker_tasks_total" not in queued.get("/metrics").text  # workers elsewhere


def test_the_apps_shutdown_stops_its_embedded_runner(make_settings, monkeypatch) -> None:
    """No runner thread outlives its app: a leftover one would go on sweeping a database that
    may be gone (and log into other tests). The task it runs is finished; one queued behind it
    stays undone, its job left for the next start to resume."""
    from fastapi.testclient import TestClient

    from service import dispatch
    from service.app import create_app
    from worker.runtime import jobs

    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow_plan(_ctx, job_id: str) -> None:
        started.set()
        release.wait(5)
        ran.append(job_id)

    monkeypatch.setattr(jobs, "plan_job", slow_plan)
    settings = make_settings(sweep_interval_s=0.05)
    with TestClient(create_app(settings)):
        runner = dispatch.embedded_runner(settings)
        assert dispatch.embedded_runner(settings) is runner
        runner.enqueue(jobs.PLAN, ["first"])
        runner.enqueue(jobs.PLAN, ["second"])
        assert started.wait(5)
        threading.Timer(0.3, release.set).start()  # the shutdown waits for the running task
    assert not runner._thread.is_alive()
    assert ran == ["first"]
    fresh = dispatch.embedded_runner(settings)  # a later use starts a fresh one
    assert fresh is not runner and fresh._thread.is_alive()
    dispatch.stop_embedded_runner(settings)
    assert not fresh._thread.is_alive()


def test_auth(make_client, checkpoint_files, caplog) -> None:
    secret = "s3cret-token-value"
    client = make_client(api_tokens=f"other-token,{secret}")
    caplog.set_level(logging.INFO, logger="camdrift.api")
    for method, url in (
        ("GET", "/checkpoints"),
        ("POST", "/drift-jobs"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such/route"),
    ):
        response = client.request(method, url)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = client.get("/checkpoints", headers={"Authorization": "Bearer nope"})
    assert_problem(wrong, 401)
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert_problem(client.get("/checkpoints", headers={"Authorization": secret}), 401)
    ok = {"Authorization": f"Bearer {secret}"}
    assert client.get("/checkpoints", headers=ok).status_code == 200
    assert (
        client.get("/checkpoints", headers={"Authorization": "bearer other-token"}).status_code
        == 200
    )
    with open(checkpoint_files.baseline, "rb") as fh:
        assert client.post("/checkpoints", files={"file": fh}, headers=ok).status_code == 201
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert "http_request method=GET path=/checkpoints status=401" in caplog.text
    assert secret not in caplog.text
    doc = client.get("/openapi.json", headers=ok).json()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert doc["paths"]["/checkpoints"]["get"]["security"] == [{"bearerAuth": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_token_comparison() -> None:
    assert token_matches("b", ["a", "b"]) and not token_matches("c", ["a", "b"])
    assert not token_matches("", ["a"]) and not token_matches("a", [])


def test_problem_json_for_framework_errors(client) -> None:
    assert_problem(client.get("/no/such/route"), 404)
    assert_problem(client.delete("/checkpoints"), 405)
    response = client.post(
        "/drift-jobs", content=b'{"baseline_id": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "body")
    assert_problem(client.post("/drift-jobs", json=[1, 2]), 422, "body")
    big = b'{"baseline_id": "' + b"x" * (2 << 20) + b'"}'
    response = client.post("/drift-jobs", content=big, headers={"content-type": "application/json"})
    assert_problem(response, 413)


def test_body_limit_without_content_length(client) -> None:
    """A chunked body is counted while it streams in (no Content-Length to trust)."""
    chunks = iter([b'{"baseline_id": "', *([b"x" * (256 << 10)] * 8), b'"}'])
    response = client.post(
        "/drift-jobs", content=chunks, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)


def test_openapi_is_complete(client) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    expected = {
        ("/checkpoints", "post"),
        ("/checkpoints", "get"),
        ("/checkpoints/{checkpoint_id}", "get"),
        ("/checkpoint-imports", "get"),
        ("/checkpoint-imports/{import_id}", "get"),
        ("/datasets", "post"),
        ("/datasets", "get"),
        ("/datasets/{dataset_id}", "get"),
        ("/drift-jobs", "post"),
        ("/drift-jobs", "get"),
        ("/drift-jobs/{job_id}", "get"),
        ("/drift-jobs/{job_id}/cancel", "post"),
        ("/drift-jobs/{job_id}/report", "get"),
        ("/drift-jobs/{job_id}/samples", "get"),
        ("/drift-jobs/{job_id}/samples/{index}/overlay.png", "get"),
        ("/drift-studies", "post"),
        ("/drift-studies/{study_id}", "get"),
        ("/drift-calibrations", "post"),
        ("/", "get"),
        ("/drift-studies/{study_id}/report", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    }
    assert {(p, m) for p, ops in paths.items() for m in ops} == expected
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "Problem" in schemas
    for path, ops in paths.items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                if int(code) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        path,
                        method,
                        code,
                    )
            ok = [c for c in op["responses"] if c.startswith("2")]
            assert ok, (path, method)
    upload = paths["/checkpoints"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    dataset = paths["/datasets"]["post"]["requestBody"]["content"]
    assert set(dataset) == {"multipart/form-data", "application/json"}
    assert "DatasetPathIn" in schemas
    report = paths["/drift-jobs/{job_id}/report"]["get"]["responses"]["200"]["content"]
    assert set(report) == {"application/json", "text/markdown", "text/html"}
    assert "409" in paths["/drift-jobs/{job_id}/report"]["get"]["responses"]
    assert "503" in paths["/drift-jobs"]["post"]["responses"]
    overlay = paths["/drift-jobs/{job_id}/samples/{index}/overlay.png"]["get"]["responses"]
    assert "image/png" in overlay["200"]["content"]
    job_in = schemas["JobIn"]
    assert job_in["additionalProperties"] is False
    assert set(job_in["required"]) == {"baseline_id", "candidate_id", "dataset_id"}


def test_responses_match_their_declared_models(world) -> None:
    """A light conformance check (full fuzzing comes with schemathesis)."""
    from service.schemas import CheckpointPage, DatasetOut, JobOut

    job = world.client.post("/drift-jobs", json=world.job_body()).json()
    JobOut.model_validate(job)
    CheckpointPage.model_validate(world.client.get("/checkpoints").json())
    DatasetOut.model_validate(world.client.get(f"/datasets/{world.dataset}").json())


def test_api_process_never_imports_torch(tmp_path) -> None:
    code = (
        "import service.app, sys; service.app.create_app(); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    env = {
        **os.environ,
        "CAMDRIFT_DATABASE_URL": "sqlite:///:memory:",
        "CAMDRIFT_STORAGE": str(tmp_path / "storage"),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_settings_from_environment(monkeypatch) -> None:
    from worker.store.settings import Settings

    monkeypatch.setenv("CAMDRIFT_API_TOKENS", " a , b ,")
    monkeypatch.setenv("CAMDRIFT_DATA_ROOTS", "/data/one,/data/two")
    monkeypatch.setenv("CAMDRIFT_BROKER_URL", "")
    monkeypatch.setenv("CAMDRIFT_MAX_UPLOAD_BYTES", "1234")
    settings = Settings()
    assert settings.api_tokens == ["a", "b"]
    assert settings.data_roots == ["/data/one", "/data/two"]
    assert settings.broker_url is None and settings.max_upload_bytes == 1234
    assert "api_tokens" not in repr(settings)


def test_unexpected_errors_are_problem_json_without_internals(make_settings) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(make_settings())

    def boom() -> None:
        raise RuntimeError("secret internal detail")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = assert_problem(client.get("/boom"), 500)
        assert "secret" not in body["detail"]


# --------------------------------------------------------------------------- database down

SOME_ID = "0" * 32
CLOSED_PORT_URL = "postgresql://postgres:secret-pw@127.0.0.1:1/none"


def _db_down_client(make_client, tmp_path, kind):
    if kind == "postgres on a closed port":
        return make_client(database_url=CLOSED_PORT_URL)
    (tmp_path / "blocker").write_text("a file where the database's folder should be")
    return make_client(database_url=f"sqlite:///{tmp_path}/blocker/db.sqlite")


DB_ROUTES = [
    ("GET", f"/drift-jobs/{SOME_ID}"),
    ("GET", "/drift-jobs"),
    ("GET", f"/drift-jobs/{SOME_ID}/report"),
    ("GET", f"/drift-jobs/{SOME_ID}/samples"),
    ("POST", f"/drift-jobs/{SOME_ID}/cancel"),
    ("GET", "/checkpoints"),
    ("GET", f"/checkpoints/{SOME_ID}"),
    ("GET", "/datasets"),
    ("GET", f"/datasets/{SOME_ID}"),
    ("GET", f"/drift-studies/{SOME_ID}"),
]


@pytest.mark.parametrize("kind", ["postgres on a closed port", "sqlite in a file"])
def test_database_down_is_503_with_retry_after_everywhere(make_client, tmp_path, kind) -> None:
    """``/readyz`` said 503 while every route that needs the database answered 500."""
    client = _db_down_client(make_client, tmp_path, kind)
    calls = [
        *(client.request(method, url) for method, url in DB_ROUTES),
        client.post(
            "/drift-jobs",
            json={"baseline_id": SOME_ID, "candidate_id": SOME_ID, "dataset_id": SOME_ID},
        ),
        client.post("/drift-studies", json={"name": "s", "job_ids": [SOME_ID, "1" * 32]}),
        client.post("/checkpoints", files={"file": ("c", safetensors_bytes(with_meta()))}),
    ]
    for response in calls:
        body = assert_problem(response, 503)
        assert body["type"].endswith("database-unavailable"), response.request.url
        assert int(response.headers["retry-after"]) > 0
        assert "secret-pw" not in response.text and "127.0.0.1" not in response.text
        assert "blocker" not in response.text
    store = client.app.state.store
    assert (
        list(store.tmp_dir.iterdir()) == [] and list((store.root / "checkpoints").iterdir()) == []
    )
    assert assert_problem(client.get("/readyz"), 503)["checks"]["database"].startswith("down")
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_database_lost_mid_request_is_503(client, monkeypatch) -> None:
    """A connection that drops under a query (a Postgres restart) is a DBAPI disconnect."""
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.orm import Session

    def lost(*_args, **_kwargs):
        error = DBAPIError("SELECT 1", None, Exception("server closed the connection"))
        error.connection_invalidated = True
        raise error

    monkeypatch.setattr(Session, "get", lost)
    response = client.get(f"/drift-jobs/{SOME_ID}")
    assert_problem(response, 503)
    assert "retry-after" in response.headers


def test_other_database_errors_stay_500(make_settings) -> None:
    """Only unavailability is a 503: a broken query is still a bug (500, logged)."""
    from fastapi.testclient import TestClient
    from sqlalchemy.exc import ProgrammingError

    from service.app import create_app

    app = create_app(make_settings())

    def broken() -> None:
        raise ProgrammingError("SELECT nope", None, Exception("syntax error"))

    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert_problem(client.get("/broken"), 500)


# --------------------------------------------------------------------------- offline docs


@pytest.mark.parametrize(("page", "script"), [("/docs", "swagger-ui-bundle"), ("/redoc", "redoc")])
def test_docs_load_from_this_server_only(client, page, script) -> None:
    """``/docs`` pulled Swagger UI from a CDN and was blank on an offline hospital network: the
    pages reference same-origin URLs only, and each of them is served."""
    import re

    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"https?:", html), f"an absolute URL in {page}"
    assert not re.search(r"""["'(]//""", html), f"a protocol-relative URL in {page}"
    refs = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html)
    refs += re.findall(r"""url\s*:\s*['"]([^'"]+)['"]""", html)
    assert "/openapi.json" in refs, html
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref
        asset = client.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 100, ref
    assert any(script in r and r.endswith(".js") for r in refs), refs
    if page == "/docs":
        swagger = client.get(next(r for r in refs if r.endswith("swagger-ui-bundle.js"))).text
        assert "oas31" in swagger  # Swagger UI 5: renders FastAPI's OpenAPI 3.1 (4.x cannot)
        assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
        redirect = client.get("/docs/oauth2-redirect")
        assert redirect.status_code == 200 and not re.search(r"https?://", redirect.text)
