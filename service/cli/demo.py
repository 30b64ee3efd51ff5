"""``camdrift demo``, the README's main job, end to end on phantoms: the whole product in one
command.

phantoms (source task, clean task, the same task with a shortcut marker) -> offline
pretraining -> two-phase TL/FT training -> a second fine-tune of the same TL on the shortcut
data -> the embedded service on a local port -> both fine-tunes gated through the REST API
with the default policy -> the two verdicts, with the ground truth to judge them by.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from service.cli.options import (
    ARCH_DEFAULT,
    IMAGE_SIZE_DEFAULT,
    PER_CLASS_DEFAULT,
    TRAIN_SEED_DEFAULT,
    Arch,
    ImageSize,
    PerClass,
    TrainSeed,
)
from service.cli.output import console as stdout_console
from service.cli.output import print_report, print_training, print_verdict, say, user_errors

SHORTCUT_CLASS = "normal"
SHORTCUT_CONFOUND = 0.5


@user_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where data, runs and reports go")] = Path(
        "var/demo"
    ),
    per_class: PerClass = PER_CLASS_DEFAULT,
    size: ImageSize = IMAGE_SIZE_DEFAULT,
    seed: TrainSeed = TRAIN_SEED_DEFAULT,
    arch: Arch = ARCH_DEFAULT,
) -> None:
    """The README's main job: phantoms -> pretrain -> TL/FT and a shortcut FT -> both gated
    through the embedded service (clean passes, shortcut fails)."""
    run_demo(workdir, per_class=per_class, size=size, seed=seed, arch=arch, console=stdout_console)


def run_demo(
    workdir: Path, *, per_class: int, size: int, seed: int, arch: str, console: Console
) -> dict[str, dict[str, Any]]:
    from service.cli.gate import audit_on_server
    from service.client import Client
    from training.phantoms import generate_dataset
    from training.protocol import PhaseConfig, TrainConfig, finetune, pretrain, train_two_phase
    from worker.results.gate import default_policy

    started = time.perf_counter()
    data, runs, reports = workdir / "data", workdir / "runs", workdir / "reports"
    console.rule("1/6 phantom chest X-rays")
    source = generate_dataset(data / "source", per_class, size, seed + 1000, task="source")
    clean = generate_dataset(data / "clean", per_class, size, seed)
    shortcut = generate_dataset(
        data / "shortcut",
        per_class,
        size,
        seed,
        shortcut=SHORTCUT_CLASS,
        shortcut_confound=SHORTCUT_CONFOUND,
    )
    console.print(
        f"source task {source.parent}\nclean task {clean.parent}\nshortcut task "
        f"{shortcut.parent}: a corner marker on every '{SHORTCUT_CLASS}' image, and in training "
        f"{SHORTCUT_CONFOUND:.0%} of them also show another class's finding"
    )

    console.rule("2/6 offline pretraining on the source task (stand-in for ImageNet)")
    pre_cfg = TrainConfig(
        arch=arch,
        input_size=(size, size),
        seed=seed,
        ft=PhaseConfig(epochs=12, lr=3e-3, patience=12),
    )
    weights = runs / "pretrained.safetensors"
    pre = pretrain(source.parent, weights, pre_cfg)
    console.print(f"source-task test macro AUC {pre['test']['macro_auc']:.3f} -> {weights}")

    console.rule("3/6 two-phase training on the clean task: TL (frozen backbone), then FT")
    cfg = TrainConfig(arch=arch, pretrained=str(weights), input_size=(size, size), seed=seed)
    print_training(train_two_phase(clean.parent, runs / "clean", cfg))
    tl = runs / "clean" / "tl.safetensors"

    console.rule("4/6 the same TL fine-tuned on the shortcut task")
    short = finetune(
        shortcut.parent,
        tl,
        runs / "shortcut",
        TrainConfig(arch=arch, input_size=(size, size), seed=seed),
    )
    console.print(f"shortcut FT: test macro AUC {short['ft']['test']['macro_auc']:.3f}")

    console.rule("5/6 camdrift gate through the embedded service (default policy)")
    policy = default_policy()
    options = {"sample_filter": "all", "seed": seed, "noise_floor": True}
    results: dict[str, dict[str, Any]] = {}
    reports.mkdir(parents=True, exist_ok=True)
    with EmbeddedServer(workdir / "service") as base, Client(base, say=say) as client:
        console.print(f"camdrift service at {base} (SQLite + in-process runner)")
        for name in ("clean", "shortcut"):
            candidate = runs / name / "ft.safetensors"
            report, job_id = audit_on_server(
                client, tl, candidate, shortcut.parent, None, policy, options, timeout=1800
            )
            html = client.text(
                f"/drift-jobs/{job_id}/report", params={"format": "html"}, timeout=120
            )
            (reports / f"{name}.html").write_text(html)
            results[name] = report

    console.rule("6/6 verdicts: TL -> clean FT, TL -> shortcut FT, beside the ground truth")
    for name, expected in (("clean", "pass"), ("shortcut", "fail")):
        report = results[name]
        console.print(f"\n[bold]{name} fine-tune[/] (recipe: should {expected})")
        print_report(report)
        print_verdict(report["verdict"])
        console.print(_ground_truth(runs / name / "ft.safetensors", shortcut.parent))
        console.print(f"html report: {reports / (name + '.html')}")
    verdicts = {name: results[name]["verdict"]["verdict"] for name in results}
    console.print(f"\nverdicts {verdicts}; done in {time.perf_counter() - started:.0f} s")
    return results


def _ground_truth(checkpoint: Path, data: Path) -> str:
    """The behavioural ground truth (``camdrift probe``): does the fine-tune's recall on the
    marker's class fall when the same test images are drawn without the marker?"""
    from training.shortcut_probe import probe_checkpoint

    probe = probe_checkpoint(checkpoint, data)
    relies = "does not rely on it"
    if probe.relies_on_shortcut:
        relies = "[bold red]relies on the marker[/]"
    return (
        f"ground truth (camdrift probe): '{probe.shortcut_class}' recall "
        f"{probe.recall_present:.2f} with the marker, {probe.recall_absent:.2f} without "
        f"(p = {probe.p_value:.2g}, n = {probe.n_shortcut}): {relies}"
    )


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
