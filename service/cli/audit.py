"""Audits in this process: ``drift``, ``study`` and ``report-schema``.

Torch is imported inside the commands that need it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from service.cli.options import (
    BATCH_SIZE_DEFAULT,
    DEVICE_DEFAULT,
    MAX_SAMPLES_DEFAULT,
    METHODS_DEFAULT,
    METRICS_DEFAULT,
    SAMPLE_FILTER_DEFAULT,
    SEED_DEFAULT,
    SPLIT_DEFAULT,
    BatchSize,
    BitDepth,
    Device,
    MaxSamples,
    Methods,
    Metrics,
    SampleFilter,
    Seed,
    Split,
    Via,
    csv,
)
from service.cli.output import console, print_report, print_study, print_verdict, user_errors
from service.cli.sequence import expand_sequence
from worker.job_config import DEFAULT_N_BOOT
from worker.results.gate import PolicyError, PolicyMismatch, fit_policy, load_policy


@user_errors
def drift(
    baseline: Annotated[Path, typer.Option(help="Baseline checkpoint (TL)")],
    candidate: Annotated[Path, typer.Option(help="Candidate checkpoint (FT)")],
    data: Annotated[Path, typer.Option(help="Dataset folder")],
    out: Annotated[Path, typer.Option(help="Report JSON to write")] = Path("report.json"),
    methods: Methods = METHODS_DEFAULT,
    metrics: Metrics = METRICS_DEFAULT,
    sample_filter: SampleFilter = SAMPLE_FILTER_DEFAULT,
    max_samples: MaxSamples = MAX_SAMPLES_DEFAULT,
    split: Split = SPLIT_DEFAULT,
    target_layer: Annotated[str | None, typer.Option(help="Module path (default: feature map)")] = (
        None
    ),
    batch_size: BatchSize = BATCH_SIZE_DEFAULT,
    seed: Seed = SEED_DEFAULT,
    device: Device = DEVICE_DEFAULT,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast for the forward (GPU)")] = False,
    html: Annotated[Path | None, typer.Option(help="Also write the HTML report here")] = None,
    noise_floor: Annotated[
        bool, typer.Option(help="Also measure drift against a perturbed baseline")
    ] = False,
    replica: Annotated[
        Path | None, typer.Option(help="A baseline replica (other seed): its drift floor")
    ] = None,
    ceiling: Annotated[
        str | None,
        typer.Option(
            help="Also audit against the baseline with these top layers re-initialised (head "
            "or head+N): each drift on the floor (0) -> random model (1) scale"
        ),
    ] = None,
    via: Via = None,
    bit_depth: BitDepth = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="Also judge the report by this gate policy (.toml or .json): the verdict is "
            "stored in the report and printed; the exit code stays 0 (use `camdrift gate` to "
            "exit by the verdict)"
        ),
    ] = None,
) -> None:
    """Audit attribution drift between two checkpoints (or along a sequence), in this process."""
    from training.progress import progress
    from worker.engine.audit import AuditConfig
    from worker.runtime.local_run import run_audit

    options = {
        "methods": csv(methods) or [],
        "metrics": csv(metrics) or [],
        "noise_floor": noise_floor,
        "ceiling": ceiling,
    }
    rules = None
    if policy is not None:  # what it reads is computed, and it fits the job, before the audit
        checkpoints = [("--baseline", baseline), ("--candidate", candidate)]
        try:
            rules = load_policy(policy)
            options = fit_policy(rules, options, checkpoints)
        except PolicyMismatch as exc:
            raise ValueError(f"the policy does not fit this job: {exc}") from None
        except PolicyError as exc:
            raise ValueError(f"bad policy: {exc}") from None
    cfg = AuditConfig(
        **options,
        sample_filter=sample_filter,
        max_samples=max_samples,
        split=None if split == "all" else split,
        target_layer=target_layer,
        batch_size=batch_size,
        seed=seed,
        device=device,
        autocast="bf16" if bf16 else None,
        bit_depth=bit_depth,
    )
    trajectory = expand_sequence(via or [])
    with progress("drift", unit="img") as bar:
        report = run_audit(
            baseline,
            candidate,
            data,
            cfg,
            out,
            bar.update,
            policy=rules,
            replica=replica,
            trajectory=trajectory,
        )
    print_report(report)
    if report.get("verdict"):
        print_verdict(report["verdict"])
    console.print(f"report: {out}")
    if html is not None:
        from worker.render.html_report import write_local_html

        write_local_html(out, html)
        console.print(f"html report: {html}")


def report_schema() -> None:
    """Print the drift report's JSON Schema."""
    from worker.results.report_schema import report_json_schema

    json.dump(report_json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


@user_errors
def study(
    report: Annotated[
        list[Path], typer.Option("--report", help="A drift report (repeat; its .samples.jsonl)")
    ],
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Entry names, in --report order")
    ] = None,
    out: Annotated[Path, typer.Option(help="Study report JSON to write")] = Path("study.json"),
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates")] = DEFAULT_N_BOOT,
    seed: Annotated[int, typer.Option(help="Bootstrap seed")] = 0,
) -> None:
    """Rank several model pairs on one dataset: per method x metric, Kendall tau between the
    methods' rankings, and ranking reversals with their bootstrap confidence."""
    from worker.results.study import load_local_entry, study_report

    names = list(name or [])
    if names and len(names) != len(report):
        raise ValueError(f"give one --name per --report ({len(names)} for {len(report)})")
    entries = [load_local_entry(path, names[k] if names else None) for k, path in enumerate(report)]
    if not names and len({e["name"] for e in entries}) < len(entries):
        for k, entry in enumerate(entries):
            entry["name"] = f"{k + 1}:{entry['name']}"
    document = study_report(entries, n_boot=n_boot, seed=seed)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print_study(document)
    console.print(f"study report: {out}")
