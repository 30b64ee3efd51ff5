"""Real processes for end-to-end tests: phantom data, checkpoints, API and Celery workers."""

from __future__ import annotations

import io
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.client import zip_folder
from training.checkpoints import model_metadata, save_checkpoint
from training.phantoms import CLASSES, generate_dataset
from training.zoo import create_model

# The audit every end-to-end test runs (service job body; "with_replica" adds the replica,
# "with_trajectory" the replica's checkpoint as an intermediate step between TL and FT).
JOB: dict[str, Any] = {
    "methods": ["layercam", "gradcam++"],
    "sample_filter": "all",
    "split": None,
    "seed": 0,
    "noise_floor": True,
    "ceiling": "head",
}


def local_audit(
    inputs: Inputs,
    out: Path,
    replica: bool = False,
    trajectory: bool = False,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The same audit as ``JOB``, run locally by ``camdrift drift``'s code path (with the
    workers' ``batch_size`` where a test compares bits that batching may flip, such as the
    argmax behind peak_displacement)."""
    from worker.engine.audit import AuditConfig
    from worker.runtime.local_run import run_audit

    batching = {"batch_size": batch_size} if batch_size is not None else {}
    cfg = AuditConfig(
        methods=JOB["methods"],
        sample_filter="all",
        split=None,
        seed=0,
        noise_floor=True,
        ceiling=JOB["ceiling"],
        **batching,
    )
    return run_audit(
        inputs.baseline,
        inputs.candidate,
        inputs.data,
        cfg,
        out,
        replica=inputs.replica if replica else None,
        trajectory=[inputs.replica] if trajectory else [],
    )


# Keys that legitimately differ between a local run and a service job of the same audit.
# batch_size is recorded in the report's config (results differ in the last float bits with
# it, which the float tolerance below absorbs); a worker's batch size may differ from a local run's
VOLATILE = {"created_at", "source", "location", "batch_size"}


@dataclass(frozen=True)
class Inputs:
    data: Path
    baseline: Path
    candidate: Path
    zip_bytes: bytes
    replica: Path


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """A small phantom dataset and two tinycnn checkpoints of different weights."""
    import torch

    root = tmp_path_factory.mktemp("e2e")
    data = root / "phantoms"
    generate_dataset(data, per_class=8, size=64, seed=3)
    paths = []
    for seed, phase in ((0, "tl"), (1, "ft"), (2, "tl-replica")):
        torch.manual_seed(seed)
        model = create_model("tinycnn", len(CLASSES))
        path = root / f"{phase}.safetensors"
        save_checkpoint(
            path, model, model_metadata(model, list(CLASSES), phase=phase, input_size=[64, 64])
        )
        paths.append(path)
    buffer = io.BytesIO()
    zip_folder(data, buffer)
    return Inputs(data, paths[0], paths[1], buffer.getvalue(), paths[2])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Child processes with logs in files; all killed at the end of the test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.children: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        with open(log, "wb") as sink:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                args,
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children.append((proc, log))
        return proc

    def api(self, env: dict[str, str], ready: str = "/healthz") -> str:
        """The API under uvicorn (the compose ``api`` service's server); its base URL."""
        port = free_port()
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.app:create_app",
            "--port",
            str(port),
        ]
        proc = self.start("api", args, env)
        wait_http(f"http://127.0.0.1:{port}{ready}", proc)
        return f"http://127.0.0.1:{port}"

    def celery_worker(self, name: str, env: dict[str, str]) -> subprocess.Popen:
        """One Celery worker as ``camdrift fleet`` starts it per GPU (``--pool solo``,
        prefetch 1): the compose ``worker`` service's processes."""
        from worker.runtime.fleet import worker_argv

        args = list(worker_argv(f"{name}@%h"))
        return self.start(name, args, env)

    def log(self, proc: subprocess.Popen) -> str:
        path = next(p for c, p in self.children if c is proc)
        return path.read_text(errors="replace")

    def stop_all(self) -> None:
        for proc, _ in self.children:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self.children:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


def camdrift_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before serving {url}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def upload_inputs(client: httpx.Client, inputs: Inputs, replica: bool = False) -> dict[str, str]:
    """Upload both checkpoints (and the replica) and the zipped dataset: the job body's ids."""
    paths = (inputs.baseline, inputs.candidate, *([inputs.replica] if replica else []))
    ids = []
    for path in paths:
        with open(path, "rb") as fh:
            r = client.post("/checkpoints", files={"file": (path.name, fh)})
        assert r.status_code in (200, 201), r.text
        ids.append(r.json()["id"])
    r = client.post("/datasets", files={"file": ("data.zip", inputs.zip_bytes, "application/zip")})
    assert r.status_code == 201, r.text
    out = {"baseline_id": ids[0], "candidate_id": ids[1], "dataset_id": r.json()["id"]}
    if replica:
        out["replica_id"] = ids[2]
    return out


def run_job_over_http(
    base: str, inputs: Inputs, body: dict[str, Any], timeout: float = 240.0
) -> tuple[httpx.Client, dict[str, Any]]:
    """Upload both checkpoints and the zipped dataset, create a job, poll it to the end."""
    client = httpx.Client(base_url=base, timeout=60)
    body = dict(body)
    with_replica = body.pop("with_replica", False)
    with_trajectory = body.pop("with_trajectory", False)
    ids = upload_inputs(client, inputs, with_replica or with_trajectory)
    replica = ids.pop("replica_id", None)
    job_body = {**ids, **body}
    if with_replica:
        job_body["baseline_replica_id"] = replica
    if with_trajectory:
        job_body["trajectory_ids"] = [replica]
    r = client.post("/drift-jobs", json=job_body)
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(location).json()
        if status["status"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert status["status"] == "succeeded", status
    return client, status


def assert_reports_equal(a: Any, b: Any, path: str = "report") -> None:
    """Equal up to float noise (batching may change the last bits), volatile keys aside."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for key in a:
            if key not in VOLATILE:
                assert_reports_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_reports_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        # a ceiling position is a ratio (drift - floor) / (ceiling - floor): where the span is
        # small it multiplies its inputs' float noise (those are compared at 1e-5 above it)
        rel = 1e-3 if path.endswith(".position") else 1e-5
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-6), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
