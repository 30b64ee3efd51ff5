"""``camdrift worker`` without a broker and ``camdrift serve``'s first lines, as a new user
sees them (issue 15): one line and exit code 2, and the address to open."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from service.cli import app
from worker.store import get_settings


@pytest.fixture
def environment(tmp_path, monkeypatch):
    """A private database and store; no broker; fresh settings before and after."""
    monkeypatch.setenv("CAMDRIFT_DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite")
    monkeypatch.setenv("CAMDRIFT_STORAGE", str(tmp_path / "store"))
    monkeypatch.delenv("CAMDRIFT_BROKER_URL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_worker_without_a_broker_says_so_in_one_line(environment) -> None:
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert text.startswith("error: CAMDRIFT_BROKER_URL is not set"), text


def test_serve_prints_where_it_listens(environment, monkeypatch) -> None:
    import uvicorn

    served: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda api, **kw: served.update(kw))
    result = CliRunner().invoke(app, ["serve", "--host", "127.0.0.1", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert served["host"] == "127.0.0.1" and served["port"] == 8123
    assert "camdrift API on http://127.0.0.1:8123" in result.output, result.output


@pytest.mark.parametrize(
    ("host", "url"),
    [("0.0.0.0", "http://0.0.0.0:80"), ("::1", "http://[::1]:80"), ("[::]", "http://[::]:80")],
)
def test_the_address_as_a_browser_takes_it(host: str, url: str) -> None:
    from service.cli.serve import listen_url

    assert listen_url(host, 80) == url
