"""The README's main job, end to end on phantoms: the whole product in one command.

phantoms (source + target task) -> offline pretraining -> two-phase TL/FT training -> the
embedded service on a local port -> upload both checkpoints and the zipped dataset -> POST a
drift job -> poll its progress -> print the report summary.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from rich.console import Console


def run_demo(
    workdir: Path, *, per_class: int, size: int, seed: int, arch: str, console: Console
) -> dict[str, Any]:
    from service.cli import print_report, print_training
    from training.phantoms import generate_dataset
    from training.protocol import PhaseConfig, TrainConfig, pretrain, train_two_phase

    started = time.perf_counter()
    data, runs = workdir / "data", workdir / "runs"
    console.rule("1/5 phantom chest X-rays")
    source = generate_dataset(data / "source", per_class, size, seed + 1000, task="source")
    target = generate_dataset(data / "phantoms", per_class, size, seed)
    console.print(f"source task: {source}\ntarget task: {target}")

    console.rule("2/5 offline pretraining on the source task (stand-in for ImageNet)")
    pre_cfg = TrainConfig(
        arch=arch,
        input_size=(size, size),
        seed=seed,
        ft=PhaseConfig(epochs=12, lr=3e-3, patience=12),
    )
    weights = runs / "pretrained.safetensors"
    pre = pretrain(source.parent, weights, pre_cfg)
    console.print(f"source-task test macro AUC {pre['test']['macro_auc']:.3f} -> {weights}")

    console.rule("3/5 two-phase training: TL (frozen backbone), then FT")
    cfg = TrainConfig(arch=arch, pretrained=str(weights), input_size=(size, size), seed=seed)
    result = train_two_phase(target.parent, runs / "clean", cfg)
    print_training(result)

    console.rule("4/5 the embedded service: upload, POST /drift-jobs, poll")
    with EmbeddedServer(workdir / "service") as base:
        console.print(f"camdrift service at {base} (SQLite + in-process runner)")
        report = submit_and_wait(
            base,
            runs / "clean" / "tl.safetensors",
            runs / "clean" / "ft.safetensors",
            target.parent,
            {"seed": seed},
            console,
        )
    console.rule("5/5 report: TL -> FT attribution drift (LayerCAM, Grad-CAM++)")
    print_report(report)
    console.print(f"done in {time.perf_counter() - started:.0f} s")
    return report


class EmbeddedServer:
    """``camdrift serve`` on a free local port in a background thread, for the demo."""

    def __init__(self, folder: Path) -> None:
        from worker.store import Settings

        folder.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(
            database_url=f"sqlite:///{folder / 'camdrift.db'}",
            storage=str(folder / "storage"),
            broker_url=None,
        )

    def __enter__(self) -> str:
        import uvicorn

        from service.app import create_app
        from service.migrate import upgrade

        upgrade(self.settings)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.settings), host="127.0.0.1", port=port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the embedded service did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder).as_posix())
    return buffer.getvalue()


def submit_and_wait(
    base: str, baseline: Path, candidate: Path, data: Path, job: dict[str, Any], console: Console
) -> dict[str, Any]:
    """Upload, create the job, follow its progress, return the report."""
    import httpx
    from tqdm.auto import tqdm

    with httpx.Client(base_url=base, timeout=120) as client:
        ids = []
        for path in (baseline, candidate):
            with open(path, "rb") as fh:
                r = client.post("/checkpoints", files={"file": (path.name, fh)})
            r.raise_for_status()
            ids.append(r.json()["id"])
        r = client.post(
            "/datasets", files={"file": ("data.zip", zip_folder(data), "application/zip")}
        )
        r.raise_for_status()
        body = {"baseline_id": ids[0], "candidate_id": ids[1], "dataset_id": r.json()["id"], **job}
        r = client.post("/drift-jobs", json=body)
        r.raise_for_status()
        location = r.headers["location"]
        console.print(f"POST /drift-jobs -> {r.status_code}, Location: {location}")
        with tqdm(desc="drift job", unit="img") as bar:
            while True:
                status = client.get(location).json()
                bar.total = status["progress"]["total"]
                bar.update((status["progress"]["done"] or 0) - bar.n)
                if status["status"] not in ("queued", "running"):
                    break
                time.sleep(0.5)
        if status["status"] != "succeeded":
            raise RuntimeError(f"job {status['id']} ended {status['status']}: {status['error']}")
        console.print(f"GET {location}/report")
        return client.get(f"{location}/report").json()
