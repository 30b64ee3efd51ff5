"""A large job through the real service vs the engine alone on the same images.

It builds a phantom dataset (``--images``, small images) and two tinycnn checkpoints, then
  (a) the floor: the engine alone, ``Audit.compute`` over the images split across
      ``--workers`` processes started together (no database, no broker, no report), run
      before and after the service; their mean is the floor,
  (b) the service: ``camdrift db upgrade`` on a fresh PostgreSQL database, ``--workers`` real
      Celery workers (the fleet's solo-pool command) on Redis, the API under uvicorn, the
      dataset registered by server path, then ``POST /drift-jobs`` and polling to the end
      (planning, shards, row COPY, map writes, finalisation and the report build),
and prints the service's throughput as a share of the engine's (goal >= 0.8), the loader's
share of each side's time (from the audits' own clocks and the workers' ``shard done``
lines), and each worker's peak RSS after a job of ``--images / 4`` and after the full job
(flat memory: the second close to the first). Both sides get the same processes and
``cores / workers`` torch threads each.

    python -m bench.service_scale                         # 20,000 images, 2 workers
    python -m bench.service_scale --images 4000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

POSTGRES = os.environ.get("CAMDRIFT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("CAMDRIFT_TEST_REDIS", "redis://127.0.0.1:6379/0")
JOB = {"methods": ["layercam", "gradcam++"], "sample_filter": "all", "split": None, "seed": 0}


def build_inputs(root: Path, images: int, size: int) -> None:
    import torch

    from training.checkpoints import model_metadata, save_checkpoint
    from training.phantoms import CLASSES, generate_dataset
    from training.zoo import create_model

    generate_dataset(root / "data", per_class=images // len(CLASSES), size=size, seed=0)
    for seed, phase in ((0, "tl"), (1, "ft")):
        torch.manual_seed(seed)
        model = create_model("tinycnn", len(CLASSES))
        meta = model_metadata(model, list(CLASSES), phase=phase, input_size=[size, size])
        save_checkpoint(root / f"{phase}.safetensors", model, meta)


def engine_part(root: Path, part: int, parts: int, batch: int) -> dict[str, Any]:
    """One process of the floor: the audit of every ``parts``-th block of the images."""
    from worker.engine.audit import Audit, AuditConfig

    began = time.perf_counter()
    cfg = AuditConfig(**JOB, batch_size=batch)
    audit = Audit(root / "tl.safetensors", root / "ft.safetensors", root / "data", cfg)
    share = (audit.total + parts - 1) // parts
    rows = audit.compute(range(part * share, min(audit.total, (part + 1) * share)))
    return {
        "rows": len(rows),
        "wall_s": time.perf_counter() - began,
        **audit.timing,
        "peak_rss_mb": _peak_rss_mb(os.getpid()),
    }


PART = (sys.executable, "-m", "bench.service_scale", "--engine-part")


def run_engine(root: Path, workers: int, batch: int, env: dict[str, str]) -> dict[str, Any]:
    procs = [
        subprocess.Popen(
            [*PART, f"{i}/{workers}", "--root", str(root), "--batch", str(batch)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    parts = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    # from each process's start of work (imports done, as in a warm worker) to the last end
    wall = max(p["wall_s"] for p in parts)
    load = sum(p["load_s"] for p in parts)
    return {
        "wall_s": wall,
        "rows": sum(p["rows"] for p in parts),
        "loader_share": load / max(load + sum(p["compute_s"] for p in parts), 1e-9),
        "peak_rss_mb": [p["peak_rss_mb"] for p in parts],
    }


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A fresh database, the workers and the API; everything stopped and dropped on exit (the
    database is kept with ``CAMDRIFT_SCALE_KEEP``)."""

    def __init__(self, root: Path, workers: int, env: dict[str, str], shard: int) -> None:
        import psycopg2
        from sqlalchemy.engine import make_url

        self.admin_url = make_url(POSTGRES)
        self.db = f"camdrift_scale_{uuid.uuid4().hex[:10]}"
        self.admin = psycopg2.connect(self.admin_url.render_as_string(hide_password=False))
        self.admin.autocommit = True
        with self.admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.db}"')
        db_url = self.admin_url.set(database=self.db).render_as_string(hide_password=False)
        broker = REDIS.rsplit("/", 1)[0] + "/9"
        subprocess.run(["redis-cli", "-u", broker, "flushdb"], capture_output=True, check=False)
        self.env = {
            **env,
            "CAMDRIFT_DATABASE_URL": db_url,
            "CAMDRIFT_BROKER_URL": broker,
            "CAMDRIFT_STORAGE": str(root / "storage"),
            "CAMDRIFT_DATA_ROOTS": str(root),
            "CAMDRIFT_SHARD_SIZE": str(shard),
        }
        self.root = root
        self.children: list[tuple[subprocess.Popen, Path]] = []
        upgrade = [sys.executable, "-m", "service.cli", "db", "upgrade"]
        subprocess.run(upgrade, env=self.env, check=True, capture_output=True)
        from worker.runtime.fleet import worker_argv

        self.workers = [self._start(f"w{i}", list(worker_argv(f"w{i}@%h"))) for i in range(workers)]
        port = _free_port()
        api = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app"]
        self.api = self._start("api", [*api, "--port", str(port)])
        self.base = f"http://127.0.0.1:{port}"
        self._wait_ready()

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(
                argv, env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.children.append((proc, log))
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return next(p for c, p in self.children if c is proc).read_text(errors="replace")

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                api_up = httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                api_up = False
            if api_up and all("ready." in self.log(w) for w in self.workers):
                return
            time.sleep(0.5)
        raise RuntimeError("the service did not come up; logs in " + str(self.root))

    def job(self, client: httpx.Client, dataset_path: Path) -> dict[str, Any]:
        ids = []
        for phase in ("tl", "ft"):
            with open(self.root / f"{phase}.safetensors", "rb") as fh:
                r = client.post("/checkpoints", files={"file": (f"{phase}.safetensors", fh)})
            r.raise_for_status()
            ids.append(r.json()["id"])
        r = client.post("/datasets", json={"path": str(dataset_path)})
        r.raise_for_status()
        body = {"baseline_id": ids[0], "candidate_id": ids[1], "dataset_id": r.json()["id"], **JOB}
        marks = [self._timing_lines(w) for w in self.workers]
        began = time.perf_counter()
        r = client.post("/drift-jobs", json=body)
        r.raise_for_status()
        location = r.headers["location"]
        while True:
            status = client.get(location).json()
            if status["status"] not in ("queued", "running"):
                break
            time.sleep(0.25)
        wall = time.perf_counter() - began
        if status["status"] != "succeeded":
            raise RuntimeError(f"job ended {status['status']}: {status.get('error')}")
        report = client.get(f"{location}/report")
        report.raise_for_status()
        load = compute = store = 0.0
        for w, seen in zip(self.workers, marks, strict=True):
            for line in self._timing_lines(w)[len(seen) :]:
                fields = dict(re.findall(r"(\w+)=([\d.]+)", line))
                load += float(fields["load_s"])
                compute += float(fields["compute_s"])
                store += float(fields["store_s"])
        return {
            "wall_s": wall,
            "rows": status["progress"]["total"],
            "loader_share": load / max(load + compute, 1e-9),
            "store_share": store / max(load + compute + store, 1e-9),
            "peak_rss_mb": [_peak_rss_mb(w.pid) for w in self.workers],
        }

    def _timing_lines(self, worker: subprocess.Popen) -> list[str]:
        lines = self.log(worker).splitlines()
        return [line for line in lines if "shard done" in line and "load_s=" in line]

    def close(self) -> None:
        for proc, _ in self.children:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self.children:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if os.environ.get("CAMDRIFT_SCALE_KEEP"):  # kept with the logs, for profiling
            print(f"database kept: {self.db}", file=sys.stderr)
        else:
            with self.admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        self.admin.close()


def subset(root: Path, name: str, fraction: int) -> Path:
    """Every ``fraction``-th manifest row (files hard-linked): a smaller job over the same
    kind of images, for the memory comparison."""
    src, dst = root / "data", root / name
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True)
    lines = (src / "manifest.csv").read_text().splitlines()
    kept = [lines[0], *lines[1::fraction]]
    (dst / "manifest.csv").unlink()
    (dst / "manifest.csv").write_text("\n".join(kept) + "\n")
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shard", type=int, default=1000, help="samples per shard (task)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--engine-part", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_part:
        part, parts = (int(x) for x in args.engine_part.split("/"))
        print(json.dumps(engine_part(Path(args.root), part, parts, args.batch)))
        return
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CAMDRIFT_BATCH_SIZE": str(args.batch)}
    with tempfile.TemporaryDirectory(prefix="camdrift-scale-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        build_inputs(root, args.images, args.size)
        small = subset(root, "data_small", 4)
        print(
            f"{args.images} phantom images at {args.size} px, tinycnn x2, layercam + gradcam++, "
            f"{args.workers} processes x {threads} threads (built in "
            f"{time.perf_counter() - began:.0f} s)"
        )
        before = run_engine(root, args.workers, args.batch, env)
        service = Service(root, args.workers, env, args.shard)
        try:
            with httpx.Client(base_url=service.base, timeout=600) as client:
                first = service.job(client, small)
                full = service.job(client, root / "data")
        finally:
            if os.environ.get("CAMDRIFT_SCALE_KEEP"):
                subprocess.run(["cp", "-r", str(root), "/tmp/scale-keep"], check=False)
            service.close()
        after = run_engine(root, args.workers, args.batch, env)
    # the floor before and after the service: a machine whose speed drifts meanwhile (a
    # shared host) shows in their ratio, and their mean is what the service is held to
    engine = {**before, "wall_s": (before["wall_s"] + after["wall_s"]) / 2}
    ratio = engine["wall_s"] / full["wall_s"]
    print(f"{'':<28}{'images':>8}{'wall s':>9}{'img/s':>9}{'loader':>8}{'peak RSS MB':>22}")
    for name, r in (
        ("engine alone, before", before),
        ("engine alone, after", after),
        ("service, 1/4 job", first),
        ("service", full),
    ):
        rss = " / ".join(f"{x:.0f}" for x in r["peak_rss_mb"])
        rows = r["rows"] or 0
        print(
            f"{name:<28}{rows:>8}{r['wall_s']:>9.1f}{rows / r['wall_s']:>9.1f}"
            f"{r['loader_share']:>8.1%}{rss:>22}"
        )
    print(
        f"service throughput / engine throughput: {ratio:.2f} (goal >= 0.8; floor after / "
        f"before: {after['wall_s'] / before['wall_s']:.2f}, 1 = the machine kept its speed)"
    )
    print(f"row store (COPY) share of the workers' time: {full['store_share']:.1%}")
    growth = max(full["peak_rss_mb"]) / max(first["peak_rss_mb"])
    print(f"worker peak RSS, full job / 1/4 job: {growth:.2f} (flat: near 1)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "args": vars(args),
                    "engine": engine,
                    "engine_before": before,
                    "engine_after": after,
                    "small": first,
                    "full": full,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
