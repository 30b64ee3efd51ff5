"""Service throughput and latency under load: 64 concurrent clients on loopback.

Against ``camdrift serve`` (SQLite + embedded runner) in a child process on 127.0.0.1 it measures
  (a) the floor: ``GET /healthz`` from the same 64 clients (no database, no work),
  (b) the mix: job creation (tiny jobs: LayerCAM on 4-8 samples), status polling and report
      fetches, while the runner works through the jobs it is given,
and prints requests/s and p50/p95/p99 latency per request kind, the ratio against the floor,
and how long the runner took to finish every created job. Bounded (about 20-30 s in all).

    python -m bench.service                       # from the repository root
    python -m bench.service --clients 64 --duration 15 --max-jobs 24 --json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

KINDS = ("create", "status", "report", "healthz")
UNFINISHED = ("queued", "running")


@dataclass
class LoadResult:
    """Latencies (seconds) per request kind, errors, jobs and timings of one load phase."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    reserved: int = 0
    final: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    drain_s: float = 0.0

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> dict[str, dict[str, float]]:
        return {kind: percentiles(values) for kind, values in sorted(self.latencies.items())}


def percentiles(values: list[float]) -> dict[str, float]:
    """Count and p50/p95/p99 in milliseconds (nearest-rank on the sorted sample)."""
    if not values:
        return {"n": 0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000

    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": rank(0.95),
        "p99_ms": rank(0.99),
    }


@dataclass(frozen=True)
class Seeded:
    baseline: str
    candidate: str
    dataset: str
    done_job: str


class ServerProcess:
    """``camdrift serve`` (embedded runner, or Celery when ``env`` names a broker) in a child
    process on a free port of 127.0.0.1, so the clients and the server do not share a GIL."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.env = {
            "CAMDRIFT_DATABASE_URL": f"sqlite:///{folder / 'camdrift.db'}",
            "CAMDRIFT_STORAGE": str(folder / "storage"),
            **(env or {}),
        }
        self.log = folder / "serve.log"

    def __enter__(self) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAMDRIFT_")}
        env.update(self.env)
        with open(self.log, "wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"camdrift serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("camdrift serve did not answer /healthz within 60 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def make_inputs(folder: Path) -> tuple[Path, Path, bytes]:
    """Two tinycnn checkpoints and a zipped 40-image phantom dataset (needs torch)."""
    import torch

    from service.client import zip_folder
    from training.checkpoints import model_metadata, save_checkpoint
    from training.phantoms import CLASSES, generate_dataset
    from training.zoo import create_model

    data = folder / "phantoms"
    generate_dataset(data, per_class=8, size=64, seed=3)
    paths = []
    for seed, phase in ((0, "tl"), (1, "ft")):
        torch.manual_seed(seed)
        model = create_model("tinycnn", len(CLASSES))
        path = folder / f"{phase}.safetensors"
        meta = model_metadata(model, list(CLASSES), phase=phase, input_size=[64, 64])
        save_checkpoint(path, model, meta)
        paths.append(path)
    buffer = io.BytesIO()
    zip_folder(data, buffer)
    return paths[0], paths[1], buffer.getvalue()


def job_body(seeded: Seeded, rng: random.Random) -> dict[str, Any]:
    return {
        "baseline_id": seeded.baseline,
        "candidate_id": seeded.candidate,
        "dataset_id": seeded.dataset,
        "methods": ["layercam"],
        "sample_filter": "all",
        "max_samples": rng.randint(4, 8),
        "noise_floor": False,
        "seed": rng.randint(0, 1000),
    }


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (status := client.get(f"/drift-jobs/{job_id}").json())["status"] in UNFINISHED:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status['status']} after {timeout} s")
        time.sleep(0.2)
    return status


def seed(base: str, baseline: Path, candidate: Path, zip_bytes: bytes) -> Seeded:
    """Upload both checkpoints and the dataset, and run one job to the end."""
    with httpx.Client(base_url=base, timeout=60) as client:
        ids = []
        for path in (baseline, candidate):
            r = client.post("/checkpoints", files={"file": (path.name, path.read_bytes())})
            r.raise_for_status()
            ids.append(r.json()["id"])
        files = {"file": ("data.zip", zip_bytes, "application/zip")}
        r = client.post("/datasets", files=files)
        r.raise_for_status()
        seeded = Seeded(ids[0], ids[1], r.json()["id"], "")
        r = client.post("/drift-jobs", json=job_body(seeded, random.Random(0)))
        r.raise_for_status()
        job = r.json()["id"]
        status = wait_job(client, job)
        if status["status"] != "succeeded":
            raise RuntimeError(f"seed job ended {status}")
        return Seeded(ids[0], ids[1], seeded.dataset, job)


async def _healthz_client(client: httpx.AsyncClient, stop: float, result: LoadResult) -> None:
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        try:
            r = await client.get("/healthz")
        except httpx.HTTPError as exc:
            result.errors.append(f"healthz: {type(exc).__name__}: {exc}")
            continue
        result.latencies["healthz"].append(time.perf_counter() - t0)
        if r.status_code != 200:
            result.errors.append(f"healthz: {r.status_code} {r.text[:200]}")


async def _mixed_client(
    client: httpx.AsyncClient,
    seeded: Seeded,
    stop: float,
    max_jobs: int,
    result: LoadResult,
    rng: random.Random,
) -> None:
    while time.monotonic() < stop:
        roll = rng.random()
        if roll < 0.15 and len(result.jobs) + result.reserved < max_jobs:
            kind, method, url = "create", "POST", "/drift-jobs"
            body: dict[str, Any] | None = job_body(seeded, rng)
            expected = {202}
        elif roll < 0.7:
            job = rng.choice(result.jobs) if result.jobs else seeded.done_job
            kind, method, url, body, expected = "status", "GET", f"/drift-jobs/{job}", None, {200}
        else:
            job = rng.choice([*result.jobs, seeded.done_job])
            # 409 is the documented answer for a job that has not finished yet.
            kind, method, url, body, expected = (
                "report",
                "GET",
                f"/drift-jobs/{job}/report",
                None,
                {200, 409},
            )
        if kind == "create":
            # Reserve the slot before awaiting so concurrent clients respect ``max_jobs``.
            result.reserved += 1
        t0 = time.perf_counter()
        try:
            r = await client.request(method, url, json=body)
        except httpx.HTTPError as exc:
            result.errors.append(f"{kind} {url}: {type(exc).__name__}: {exc}")
            if kind == "create":
                result.reserved -= 1
            continue
        result.latencies[kind].append(time.perf_counter() - t0)
        if r.status_code not in expected:
            result.errors.append(f"{kind} {url}: {r.status_code} {r.text[:300]}")
        if kind == "create":
            result.reserved -= 1
            if r.status_code == 202:
                result.jobs.append(r.json()["id"])
        await asyncio.sleep(0)


def _client(base: str, clients: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    return httpx.AsyncClient(base_url=base, timeout=30, limits=limits)


async def healthz_floor(base: str, clients: int = 64, duration: float = 3.0) -> LoadResult:
    """The trivial floor: ``clients`` concurrent clients on ``GET /healthz``."""
    result = LoadResult()
    async with _client(base, clients) as client:
        started = time.monotonic()
        stop = started + duration
        await asyncio.gather(*(_healthz_client(client, stop, result) for _ in range(clients)))
        result.elapsed_s = time.monotonic() - started
    return result


async def mixed_load(
    base: str,
    seeded: Seeded,
    clients: int = 64,
    duration: float = 10.0,
    max_jobs: int = 24,
    drain_timeout: float = 180.0,
    seed: int = 0,
) -> LoadResult:
    """``clients`` concurrent clients creating jobs, polling them and fetching reports for
    ``duration`` seconds; then waits (up to ``drain_timeout``) until every created job ends."""
    result = LoadResult()
    async with _client(base, clients) as client:
        started = time.monotonic()
        stop = started + duration
        await asyncio.gather(
            *(
                _mixed_client(client, seeded, stop, max_jobs, result, random.Random(seed + i))
                for i in range(clients)
            )
        )
        result.elapsed_s = time.monotonic() - started
        drain_started = time.monotonic()
        pending = list(result.jobs)
        while pending and time.monotonic() - drain_started < drain_timeout:
            for job in list(pending):
                status = (await client.get(f"/drift-jobs/{job}")).json()["status"]
                if status not in UNFINISHED:
                    result.final[job] = status
                    pending.remove(job)
            if pending:
                await asyncio.sleep(0.25)
        for job in pending:
            result.final[job] = "unfinished"
        result.drain_s = time.monotonic() - drain_started
    return result


def report(floor: LoadResult, mixed: LoadResult) -> dict[str, Any]:
    """The figures as one JSON-able dict."""
    floor_p50 = percentiles(floor.latencies["healthz"])["p50_ms"] or 1e-9
    kinds = mixed.summary()
    for values in kinds.values():
        values["p50_vs_healthz"] = values["p50_ms"] / floor_p50
    return {
        "healthz": {**percentiles(floor.latencies["healthz"]), "rps": floor.rps},
        "mixed": {
            "rps": mixed.rps,
            "rps_vs_healthz": mixed.rps / floor.rps if floor.rps else 0.0,
            "requests": mixed.requests,
            "kinds": kinds,
            "jobs_created": len(mixed.final),
            "jobs_succeeded": sum(s == "succeeded" for s in mixed.final.values()),
            "drain_s": mixed.drain_s,
        },
        "errors": len(floor.errors) + len(mixed.errors),
    }


def print_report(figures: dict[str, Any], clients: int, database: str = "SQLite") -> None:
    h, m = figures["healthz"], figures["mixed"]
    print(f"{clients} clients on 127.0.0.1; camdrift serve ({database} + embedded runner)")
    print(f"{'kind':<10}{'n':>7}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'p50/floor':>11}")
    print(f"{'healthz':<10}{h['n']:>7}{h['p50_ms']:>10.1f}{h['p95_ms']:>10.1f}{h['p99_ms']:>10.1f}")
    for kind, v in m["kinds"].items():
        print(
            f"{kind:<10}{v['n']:>7}{v['p50_ms']:>10.1f}{v['p95_ms']:>10.1f}{v['p99_ms']:>10.1f}"
            f"{v['p50_vs_healthz']:>10.1f}x"
        )
    print(
        f"healthz floor {h['rps']:.0f} req/s; mixed {m['rps']:.0f} req/s "
        f"({m['rps_vs_healthz']:.2f}x the floor); {m['jobs_succeeded']}/{m['jobs_created']} "
        f"jobs succeeded, last one {m['drain_s']:.1f} s after the load stopped; "
        f"errors {figures['errors']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--floor-duration", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--max-jobs", type=int, default=24)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        baseline, candidate, zip_bytes = make_inputs(folder / "inputs")
        with ServerProcess(folder / "service") as base:
            seeded = seed(base, baseline, candidate, zip_bytes)
            floor = asyncio.run(healthz_floor(base, args.clients, args.floor_duration))
            mixed = asyncio.run(
                mixed_load(base, seeded, args.clients, args.duration, args.max_jobs)
            )
    figures = report(floor, mixed)
    print_report(figures, args.clients)
    for error in (floor.errors + mixed.errors)[:10]:
        print("error:", error)
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
