"""Auth over the whole API: every route in the OpenAPI document but the health probes answers
401 problem+json without a valid bearer token, tokens are compared in constant time, and no
token ever reaches the logs."""

from __future__ import annotations

import hmac
import inspect
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import auth, migrate
from service.app import create_app
from worker.store.settings import Settings

SECRET = "s3cret-Token-0123456789"
OTHER = "second-token-abcdef"
OPEN = {"/healthz", "/readyz"}
BAD_HEADERS = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Basic {SECRET}"},
    {"Authorization": SECRET},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {SECRET}x"},
    {"Authorization": f"Bearer {SECRET[:-1]}"},
    {"Authorization": f"Bearer {SECRET.upper()}"},
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'camdrift.db'}",
        storage=str(tmp_path / "storage"),
        api_tokens=f"{OTHER},{SECRET}",
    )
    migrate.upgrade(settings)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def operations(client: TestClient) -> list[tuple[str, str]]:
    """(method, concrete url) for every operation of the document (path parameters filled)."""
    doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {SECRET}"}).json()
    found = []
    for path, methods in doc["paths"].items():
        url = re.sub(r"\{[^}]+\}", "0", path)
        found += [(method.upper(), url) for method in methods if method != "parameters"]
    for path in ("/openapi.json", "/docs", "/redoc", "/no/such/route"):
        found.append(("GET", path))
    return found


def assert_401(response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_every_route_but_health_needs_a_valid_token(client: TestClient, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ops = operations(client)
    assert len(ops) >= 16 and ("POST", "/drift-jobs") in ops
    assert {url for _, url in ops} >= OPEN
    for method, url in ops:
        for headers in BAD_HEADERS:
            response = client.request(method, url, headers=headers)
            if url in OPEN:
                assert response.status_code == 200, (method, url, response.text)
            else:
                assert_401(response)
        if url not in OPEN:
            # A valid token (either one, any case of the scheme) gets past auth.
            for headers in (
                {"Authorization": f"Bearer {SECRET}"},
                {"Authorization": f"bearer {OTHER}"},
            ):
                assert client.request(method, url, headers=headers).status_code != 401
    assert "status=401" in caplog.text  # the failed requests were logged ...
    assert SECRET not in caplog.text and OTHER not in caplog.text  # ... without any token
    assert SECRET.upper() not in caplog.text and SECRET[:-1] not in caplog.text


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    source = inspect.getsource(auth.token_matches)
    assert "hmac.compare_digest" in source
    assert "==" not in source and " in tokens" not in source.replace("for token in tokens", "")
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    tokens = ["first", SECRET, "third"]
    assert auth.token_matches(SECRET, tokens)
    assert len(calls) == len(tokens)  # no early exit on the match
    calls.clear()
    assert not auth.token_matches("nope", tokens)
    assert len(calls) == len(tokens)
