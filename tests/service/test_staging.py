"""Staged uploads left in store/tmp by an API killed mid-upload are removed (issue 15, item 4).

The reproduction is real: a uvicorn process receives half an upload, is killed with SIGKILL, and
its staged file stays; the next API process removes it at start-up. The sweep's rules are then
checked one by one: an entry of a gone owner goes at once, a live owner's stays however old,
an untagged one goes by age, and the periodic sweep runs while the app serves.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import migrate
from service.app import create_app
from service.staging import StagingOwner, sweep_staging
from worker.store.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HOUR = 3600.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _staged(tmp_dir: Path) -> list[Path]:
    return sorted(tmp_dir.iterdir()) if tmp_dir.is_dir() else []


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_api_killed_mid_upload_leaves_nothing_after_a_restart(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/db.sqlite", storage=str(tmp_path / "store")
    )
    migrate.upgrade(settings)
    port = _free_port()
    env = {
        **os.environ,
        "CAMDRIFT_DATABASE_URL": settings.database_url,
        "CAMDRIFT_STORAGE": settings.storage,
    }
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    tmp_dir = Path(settings.storage) / "tmp"
    try:

        def ready() -> bool:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return True
            except OSError:
                return False

        _wait(ready, 90, "the API to start")
        upload = socket.create_connection(("127.0.0.1", port))
        boundary = "kill-test-boundary"
        head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="big.safetensors"\r\n\r\n'
        ).encode()
        upload.sendall(
            (
                "POST /checkpoints HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {50 << 20}\r\n\r\n"
            ).encode()
            + head
            + b"\0" * (256 << 10)
        )
        _wait(
            lambda: any(p.is_file() and p.stat().st_size > 0 for p in _staged(tmp_dir)),
            30,
            "the upload to be staged",
        )
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        upload.close()
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    left = _staged(tmp_dir)
    assert len(left) == 1 and left[0].stat().st_size >= 200 << 10  # what the audit found

    with TestClient(create_app(settings)) as client:  # the restarted API
        assert _staged(tmp_dir) == []
        assert client.get("/checkpoints").json()["total"] == 0


def _entry(tmp_dir: Path, name: str, age_s: float = 0.0, folder: bool = False) -> Path:
    path = tmp_dir / name
    if folder:
        (path / "data" / "normal").mkdir(parents=True)
        (path / "data" / "normal" / "a.png").write_bytes(b"x")
        paths = [path / "data" / "normal" / "a.png", path / "data" / "normal", path / "data"]
    else:
        path.write_bytes(b"partial upload")
        paths = []
    stamp = time.time() - age_s
    for item in [*paths, path]:
        os.utime(item, (stamp, stamp))
    return path


def test_the_sweep_rules(tmp_path: Path) -> None:
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    alive = StagingOwner(tmp_dir)
    gone = StagingOwner(tmp_dir)
    gone.release()  # a clean stop removes its lock file ...
    crashed = StagingOwner(tmp_dir)
    crashed_lock = crashed.path
    os.close(crashed._fd)  # ... a crash leaves it, unlocked
    crashed._fd = None
    expected_removed = {
        _entry(tmp_dir, f"tmpaaaa{gone.suffix('.upload')}").name,
        _entry(tmp_dir, f"tmpbbbb{crashed.suffix('.zip')}").name,
        _entry(tmp_dir, crashed.prefix("dataset-") + "x1", folder=True).name,
        _entry(tmp_dir, "tmpcccc.upload", age_s=2 * HOUR).name,
        _entry(tmp_dir, "dataset-old", age_s=2 * HOUR, folder=True).name,
    }
    kept = {
        _entry(tmp_dir, f"tmpdddd{alive.suffix('.upload')}", age_s=5 * HOUR).name,
        _entry(tmp_dir, alive.prefix("dataset-") + "x2", age_s=5 * HOUR, folder=True).name,
        _entry(tmp_dir, "tmpeeee.upload", age_s=HOUR / 2).name,
    }
    # an untagged folder whose newest file is fresh is in use, however old the folder is
    fresh_inside = _entry(tmp_dir, "dataset-filling", age_s=2 * HOUR, folder=True)
    (fresh_inside / "data" / "normal" / "new.png").write_bytes(b"y")
    kept.add(fresh_inside.name)

    assert set(sweep_staging(tmp_dir, max_age_s=HOUR)) == expected_removed
    assert {p.name for p in _staged(tmp_dir)} == kept
    assert not crashed_lock.exists() and alive.path.exists()
    assert sweep_staging(tmp_dir, max_age_s=HOUR) == []
    alive.release()
    assert set(sweep_staging(tmp_dir, max_age_s=HOUR)) == kept - {
        "tmpeeee.upload",
        fresh_inside.name,
    }


def test_the_app_sweeps_while_it_serves(make_client) -> None:
    client = make_client(tmp_max_age_s=0.4)
    tmp_dir = client.app.state.store.tmp_dir
    stale = _entry(tmp_dir, "tmpffff.upload", age_s=10)
    _wait(lambda: not stale.exists(), 10, "the periodic sweep")
    assert client.get("/healthz").status_code == 200


def test_uploads_stage_under_the_apps_token(client, monkeypatch) -> None:
    """The routes name staged files with the owner's token (what the sweep relies on)."""
    from service.api.routes import checkpoints

    seen: list[str] = []
    original = checkpoints._register

    def spy(upload, *args):
        seen.append(upload.path.name)
        return original(upload, *args)

    monkeypatch.setattr(checkpoints, "_register", spy)
    client.post("/checkpoints", files={"file": ("c", b"not a checkpoint")})
    token = client.app.state.staging.token
    assert len(seen) == 1 and token in seen[0]
    assert _staged(client.app.state.store.tmp_dir) == []


@pytest.mark.skipif(sys.platform == "win32", reason="advisory locks are POSIX")
def test_two_apps_on_one_store_keep_each_others_uploads(make_settings) -> None:
    settings = make_settings()
    with TestClient(create_app(settings)) as first:
        tmp_dir = first.app.state.store.tmp_dir
        busy = _entry(tmp_dir, f"tmpgggg{first.app.state.staging.suffix('.upload')}")
        with TestClient(create_app(settings)):  # a second process starting on the same store
            assert busy.exists()
    with TestClient(create_app(settings)):
        assert not busy.exists()  # its owner stopped: now it is an orphan
