"""The README's main job, end to end on phantoms: the whole product in one command."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console


def run_demo(
    workdir: Path, *, per_class: int, size: int, seed: int, arch: str, console: Console
) -> dict:
    """phantoms (source + target) -> offline pretraining -> TL/FT -> drift report."""
    from tqdm.auto import tqdm

    from service.cli import print_report, print_training
    from training.phantoms import generate_dataset
    from training.protocol import PhaseConfig, TrainConfig, pretrain, train_two_phase
    from worker.audit import AuditConfig
    from worker.local_run import run_audit

    started = time.perf_counter()
    data, runs, reports = workdir / "data", workdir / "runs", workdir / "reports"
    console.rule("1/4 phantom chest X-rays")
    source = generate_dataset(data / "source", max(per_class // 2, 20), size, seed, task="source")
    target = generate_dataset(data / "phantoms", per_class, size, seed)
    console.print(f"source task: {source}\ntarget task: {target}")

    console.rule("2/4 offline pretraining on the source task (stand-in for ImageNet)")
    pre_cfg = TrainConfig(
        arch=arch, input_size=(size, size), seed=seed, ft=PhaseConfig(epochs=6, lr=2e-3, patience=6)
    )
    weights = runs / "pretrained.safetensors"
    pre = pretrain(source.parent, weights, pre_cfg)
    console.print(f"source-task test macro AUC {pre['test']['macro_auc']:.3f} -> {weights}")

    console.rule("3/4 two-phase training: TL (frozen backbone), then FT")
    cfg = TrainConfig(arch=arch, pretrained=str(weights), input_size=(size, size), seed=seed)
    result = train_two_phase(target.parent, runs / "clean", cfg)
    print_training(result)

    console.rule("4/4 attribution drift TL -> FT (LayerCAM, Grad-CAM++)")
    out = reports / "clean.json"
    bar = tqdm(desc="drift", unit="img")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    report = run_audit(
        runs / "clean" / "tl.safetensors",
        runs / "clean" / "ft.safetensors",
        target.parent,
        AuditConfig(seed=seed),
        out,
        progress,
    )
    bar.close()
    print_report(report)
    console.print(f"report: {out}   ({time.perf_counter() - started:.0f} s in all)")
    return report
