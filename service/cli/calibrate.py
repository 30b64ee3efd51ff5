"""``camdrift calibrate``: a gate policy whose thresholds come from K known-good fine-tunes.

Either audits the baseline against each ``--reference`` here (the gate's defaults: sample filter
``all``), or reuses ``--from-reports`` (reports of ``camdrift drift`` with their
``.samples.jsonl``). The thresholds are prediction bounds for one new good run with the
family-wise false-alarm rate held at ``--alpha`` (:mod:`worker.results.calibration`). With the
ceiling, the baseline is also audited against a copy with re-initialised top layers
(:mod:`training.randomise`), and each threshold is placed on the floor (0) -> ceiling (1)
scale.

Files: the policy (``--out``), and beside it ``<out>.calibration/`` with each audit's report
(reusable with ``--from-reports``), the randomised checkpoint and its report. Progress on stderr,
the summary table on stdout. Errors: one line, exit 2. Torch is imported inside the command,
and only when it audits.
"""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.options import (
    BATCH_SIZE_DEFAULT,
    DEVICE_DEFAULT,
    GATE_SAMPLE_FILTER_DEFAULT,
    MAX_SAMPLES_DEFAULT,
    SEED_DEFAULT,
    SPLIT_DEFAULT,
    BatchSize,
    Device,
    GateSampleFilter,
    MaxSamples,
    Seed,
    Split,
    csv,
)
from service.cli.output import EXIT_USAGE, console, error, escape, line_err_console, say
from worker.catalog import DEFAULT_METHODS, DEFAULT_METRICS, validate_methods, validate_metrics
from worker.job_config import GATE_SAMPLE_FILTER
from worker.results import calibration as calib
from worker.results.calibration import (
    DEFAULT_ALPHA,
    MIN_REFERENCES,
    Calibration,
    CalibrationError,
    ReferenceReport,
    load_reference_report,
)
from worker.results.gate import PolicyError


class CalibrateError(Exception):
    """A usage problem: exit 2 with this one-line message."""


@dataclass
class Plan:
    """What to calibrate on and where the files go."""

    out: Path
    workdir: Path
    alpha: float
    methods: list[str] | None  # None: the reports' (or the default) methods
    metrics: list[str]
    audit: dict[str, Any]  # AuditConfig options of the audits run here
    baseline: Path | None = None
    data: Path | None = None
    references: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    ceiling: bool | None = None  # None: when it can be measured
    ceiling_layers: str = "head"
    ceiling_seed: int = 0
    ceiling_report: Path | None = None
    min_samples: int | None = None
    min_class_samples: int | None = None
    command: str = ""


def calibrate(
    reports: Annotated[
        list[Path] | None,
        typer.Argument(help="With --from-reports: reference reports (camdrift drift's JSON)"),
    ] = None,
    baseline: Annotated[Path | None, typer.Option(help="Baseline checkpoint (TL)")] = None,
    reference: Annotated[
        list[Path] | None,
        typer.Option(help="A known-good fine-tune of the baseline (repeat; at least 3)"),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder the gate will audit")] = None,
    out: Annotated[Path, typer.Option(help="Policy TOML to write")] = Path("policy.toml"),
    alpha: Annotated[
        float, typer.Option(help="Family-wise false-alarm rate on a good fine-tune")
    ] = DEFAULT_ALPHA,
    methods: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated CAM methods (default: {','.join(DEFAULT_METHODS)}, or the "
            "reports')"
        ),
    ] = None,
    metrics: Annotated[
        str, typer.Option(help="Comma-separated metrics the policy checks")
    ] = ",".join(calib.DEFAULT_METRICS),
    ceiling: Annotated[
        bool | None,
        typer.Option(
            "--ceiling/--no-ceiling",
            help="Audit a randomised-top-layers model too (default: when --baseline and "
            "--data are given)",
            show_default=False,
        ),
    ] = None,
    ceiling_layers: Annotated[
        str, typer.Option(help="head, or head+N: also the last N weight layers")
    ] = "head",
    ceiling_seed: Annotated[int, typer.Option(help="Seed of the re-initialisation")] = 0,
    ceiling_report: Annotated[
        Path | None, typer.Option(help="Reuse this report of baseline vs a randomised model")
    ] = None,
    from_reports: Annotated[
        bool, typer.Option("--from-reports", help="Calibrate on the REPORTS given as arguments")
    ] = False,
    sample_filter: GateSampleFilter = GATE_SAMPLE_FILTER_DEFAULT,
    max_samples: MaxSamples = MAX_SAMPLES_DEFAULT,
    split: Split = SPLIT_DEFAULT,
    seed: Seed = SEED_DEFAULT,
    noise_floor: Annotated[
        bool, typer.Option(help="Also measure the noise floor (the scale's 0) in each audit")
    ] = False,
    min_samples: Annotated[
        int | None,
        typer.Option(help="The policy's min_samples (default: the references' sample count)"),
    ] = None,
    min_class_samples: Annotated[
        int | None,
        typer.Option(
            help="The policy's min_class_samples (default: the references' fewest per class)"
        ),
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Where the audits' reports go (default: <out>.calibration)")
    ] = None,
    device: Device = DEVICE_DEFAULT,
    batch_size: BatchSize = BATCH_SIZE_DEFAULT,
) -> None:
    """Write a gate policy calibrated on known-good fine-tunes: per class x method x metric, a
    threshold a good fine-tune crosses with probability alpha / m (all m checks together: alpha)."""
    try:
        plan = _plan(
            reports=list(reports or []),
            baseline=baseline,
            references=list(reference or []),
            data=data,
            out=out,
            alpha=alpha,
            methods=methods,
            metrics=metrics,
            ceiling=ceiling,
            ceiling_layers=ceiling_layers,
            ceiling_seed=ceiling_seed,
            ceiling_report=ceiling_report,
            from_reports=from_reports,
            audit={
                "sample_filter": sample_filter,
                "max_samples": max_samples,
                "split": None if split == "all" else split,
                "seed": seed,
                "noise_floor": noise_floor,
                "device": device,
                "batch_size": batch_size,
            },
            min_samples=min_samples,
            min_class_samples=min_class_samples,
            workdir=workdir,
        )
        calibration = run_calibration(plan)
    except (CalibrateError, CalibrationError, PolicyError, ValueError, OSError) as exc:
        error(exc, line_err_console)
        raise typer.Exit(EXIT_USAGE) from None
    print_calibration(calibration, plan.out)


# --------------------------------------------------------------------------- the plan


def _plan(
    *,
    reports: list[Path],
    baseline: Path | None,
    references: list[Path],
    data: Path | None,
    out: Path,
    alpha: float,
    methods: str | None,
    metrics: str,
    ceiling: bool | None,
    ceiling_layers: str,
    ceiling_seed: int,
    ceiling_report: Path | None,
    from_reports: bool,
    audit: dict[str, Any],
    min_samples: int | None,
    min_class_samples: int | None,
    workdir: Path | None,
) -> Plan:
    """Every option checked before anything runs."""
    if not 0.0 < alpha < 1.0:
        raise CalibrateError(f"--alpha must lie in (0, 1), got {alpha:g}")
    for option, value in (
        ("--min-samples", min_samples),
        ("--min-class-samples", min_class_samples),
    ):
        if value is not None and value < 0:
            raise CalibrateError(f"{option} must be >= 0")
    if min_class_samples is not None and not calib.supports_min_class_samples():
        raise CalibrateError(
            "--min-class-samples: this camdrift's policies have no per-class minimum"
        )
    try:
        method_names = None if methods is None else validate_methods(csv(methods) or [])
        metric_names = validate_metrics(csv(metrics) or [])
    except ValueError as exc:
        raise CalibrateError(f"--{exc}") from None
    if out.suffix.lower() != ".toml":
        raise CalibrateError(f"--out {out}: the policy is written as TOML; name a .toml file")
    if out.is_dir():
        raise CalibrateError(f"--out {out} is a folder; name a .toml file")
    if from_reports:
        if references:
            raise CalibrateError("give either --reference checkpoints or --from-reports, not both")
        if len(reports) < MIN_REFERENCES:
            raise CalibrateError(
                f"--from-reports needs at least {MIN_REFERENCES} reference reports, got "
                f"{len(reports)}"
            )
        for path in reports:
            if not path.is_file():
                raise CalibrateError(f"no such report: {path} (--from-reports)")
    else:
        if reports:
            raise CalibrateError(
                f"unexpected argument {reports[0]}: reports are read with --from-reports"
            )
        if len(references) < MIN_REFERENCES:
            raise CalibrateError(
                f"give at least {MIN_REFERENCES} --reference fine-tunes (got {len(references)}): "
                "with fewer the run-to-run spread cannot be estimated"
            )
        if baseline is None or data is None:
            raise CalibrateError("give --baseline and --data (or --from-reports REPORTS)")
        for path in references:
            if not path.is_file():
                raise CalibrateError(f"no such checkpoint file: {path} (--reference)")
    if baseline is not None and not baseline.is_file():
        raise CalibrateError(f"no such checkpoint file: {baseline} (--baseline)")
    if data is not None and not data.is_dir():
        raise CalibrateError(f"no such dataset folder: {data} (--data)")
    if ceiling_report is not None:
        if ceiling is False:
            raise CalibrateError("--ceiling-report and --no-ceiling contradict each other")
        if not ceiling_report.is_file():
            raise CalibrateError(f"no such report: {ceiling_report} (--ceiling-report)")
    elif ceiling and (baseline is None or data is None):
        raise CalibrateError(
            "--ceiling audits the baseline against a randomised copy: give --baseline and --data "
            "(or --ceiling-report)"
        )
    if (ceiling or ceiling is None) and ceiling_report is None:
        _check_layers(ceiling_layers)
    stem = out.with_suffix("")
    plan = Plan(
        out=out,
        workdir=workdir or stem.with_name(stem.name + ".calibration"),
        alpha=alpha,
        methods=method_names,
        metrics=metric_names,
        audit=audit,
        baseline=baseline,
        data=data,
        references=references,
        reports=reports,
        ceiling=ceiling,
        ceiling_layers=ceiling_layers,
        ceiling_seed=ceiling_seed,
        ceiling_report=ceiling_report,
        min_samples=min_samples,
        min_class_samples=min_class_samples,
    )
    plan.command = _command(plan, methods, metrics)
    return plan


def _check_layers(spec: str) -> None:
    import re

    if re.fullmatch(r"head(\+[1-9][0-9]*)?", spec.strip()) is None:
        raise CalibrateError(f"--ceiling-layers {spec!r}: use head or head+N (N >= 1)")


def _command(plan: Plan, methods: str | None, metrics: str) -> str:
    """The command line that made the policy (what the policy's comments quote)."""
    args = ["camdrift", "calibrate"]
    if plan.reports:
        args += ["--from-reports", *map(str, plan.reports)]
    for name, value in (("--baseline", plan.baseline), ("--data", plan.data)):
        if value is not None:
            args += [name, str(value)]
    for ref in plan.references:
        args += ["--reference", str(ref)]
    args += ["--out", str(plan.out), "--alpha", f"{plan.alpha:g}", "--metrics", metrics]
    if methods is not None:
        args += ["--methods", methods]
    if not plan.reports:
        a = plan.audit
        args += ["--sample-filter", a["sample_filter"], "--split", a["split"] or "all"]
        if a["max_samples"] is not None:
            args += ["--max-samples", str(a["max_samples"])]
        args += ["--seed", str(a["seed"])] + (["--noise-floor"] if a["noise_floor"] else [])
    if plan.ceiling_report is not None:
        args += ["--ceiling-report", str(plan.ceiling_report)]
    elif plan.ceiling is False:
        args += ["--no-ceiling"]
    elif plan.baseline is not None and plan.data is not None:
        args += ["--ceiling-layers", plan.ceiling_layers, "--ceiling-seed", str(plan.ceiling_seed)]
    if plan.min_samples is not None:
        args += ["--min-samples", str(plan.min_samples)]
    if plan.min_class_samples is not None:
        args += ["--min-class-samples", str(plan.min_class_samples)]
    return shlex.join(args)


# --------------------------------------------------------------------------- running it


def run_calibration(plan: Plan) -> Calibration:
    """Audit (or read) the references and the ceiling, calibrate, write the policy."""
    if plan.reports:
        refs = [load_reference_report(path) for path in plan.reports]
    else:
        refs = _audit_references(plan)
    calib.check_reports_agree(refs)
    first = refs[0].report
    config = first.get("config") or {}
    class_names = list((first.get("dataset") or {}).get("class_names") or [])
    if not class_names:
        raise CalibrateError(f"{refs[0].path}: the report names no classes (dataset.class_names)")
    methods = plan.methods or list(config.get("methods") or DEFAULT_METHODS)
    for ref in refs:
        have_methods = (ref.report.get("config") or {}).get("methods") or []
        have_metrics = (ref.report.get("config") or {}).get("metrics") or []
        for kind, wanted, have in (
            ("method", methods, have_methods),
            ("metric", plan.metrics, have_metrics),
        ):
            missing = [n for n in wanted if n not in have]
            if missing:
                raise CalibrateError(
                    f"{ref.path}: the audit computed no {kind} {missing[0]!r} (it has "
                    f"{', '.join(have)}); pass --{kind}s or audit again"
                )
    if plan.baseline is not None:
        _check_baseline(plan.baseline, refs[0])
    cal = calib.calibrate(
        [r.table for r in refs],
        class_names,
        methods,
        plan.metrics,
        alpha=plan.alpha,
        names=[_ref_name(r) for r in refs],
        min_samples=plan.min_samples,
        min_class_samples=plan.min_class_samples,
    )
    cal.audit = calib.gate_options(config)
    ceiling = _ceiling(plan, refs, methods)
    if ceiling is not None:
        report, model = ceiling
        _check_baseline_sha(report, refs[0])
        cal.ceiling = calib.ceiling_scale(cal, report.table, [r.table for r in refs])
        cal.ceiling_model = model
    _warn(cal, config)
    text = calib.policy_toml(cal, plan.command)
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    plan.out.write_text(text, encoding="utf-8")
    return cal


def _audit_config(plan: Plan, methods: list[str]) -> Any:
    from worker.engine.audit import AuditConfig

    return AuditConfig(methods=methods, metrics=plan.metrics, **plan.audit)


def _audit(plan: Plan, candidate: Path, out: Path, label: str, methods: list[str]) -> Path:
    from training.progress import progress
    from worker.runtime.local_run import run_audit

    assert plan.baseline is not None and plan.data is not None
    say(f"{label}: auditing {plan.baseline} vs {candidate} -> {out}")
    with progress(label, unit="img") as bar:
        run_audit(
            plan.baseline, candidate, plan.data, _audit_config(plan, methods), out, bar.update
        )
    return out


def _audit_references(plan: Plan) -> list[ReferenceReport]:
    methods = plan.methods or list(DEFAULT_METHODS)
    plan.workdir.mkdir(parents=True, exist_ok=True)
    out = []
    k = len(plan.references)
    for i, ref in enumerate(plan.references, start=1):
        path = _audit(
            plan, ref, plan.workdir / f"reference-{i}.json", f"reference {i}/{k}", methods
        )
        out.append(load_reference_report(path))
    return out


def _ceiling(
    plan: Plan, refs: list[ReferenceReport], methods: list[str]
) -> tuple[ReferenceReport, dict[str, Any]] | None:
    if plan.ceiling_report is not None:
        report = load_reference_report(plan.ceiling_report)
        return report, _randomised_model(report)
    if plan.ceiling is False:
        return None
    if plan.baseline is None or plan.data is None:
        say("no ceiling: give --baseline and --data (or --ceiling-report) to measure it")
        return None
    from training.randomise import randomise_checkpoint

    if plan.reports:  # audit the ceiling the way the reports were audited
        config = refs[0].report.get("config") or {}
        plan.audit.update(
            {k: config.get(k) for k in ("sample_filter", "max_samples", "split", "seed")}
        )
    plan.workdir.mkdir(parents=True, exist_ok=True)
    layers = plan.ceiling_layers.strip()
    checkpoint = plan.workdir / f"randomised-{layers.replace('+', '-')}.safetensors"
    say(f"ceiling: re-initialising {layers} of {plan.baseline} (seed {plan.ceiling_seed})")
    meta = randomise_checkpoint(plan.baseline, checkpoint, layers, plan.ceiling_seed)
    path = _audit(plan, checkpoint, plan.workdir / "ceiling.json", "ceiling", methods)
    return load_reference_report(path), dict(meta["randomised"])


def _randomised_model(report: ReferenceReport) -> dict[str, Any]:
    """What the ceiling report's candidate re-initialised (its checkpoint's ``randomised``
    metadata, when the file is still where the audit read it)."""
    from training.checkpoint_format import CheckpointError, read_metadata

    source = ((report.report.get("models") or {}).get("candidate") or {}).get("source")
    described: dict[str, Any] = {"report": str(report.path)}
    if source and Path(source).is_file():
        with contextlib.suppress(CheckpointError):  # a file that is no checkpoint: say less
            described.update(read_metadata(Path(source)).get("randomised") or {})
    return described


def _check_baseline(baseline: Path, ref: ReferenceReport) -> None:
    from training.checkpoint_format import sha256_file

    want = ((ref.report.get("models") or {}).get("baseline") or {}).get("sha256")
    if want and sha256_file(baseline) != want:
        raise CalibrateError(
            f"--baseline {baseline} is not the baseline the references were audited against "
            f"({ref.path} names sha256 {want[:12]}...)"
        )


def _check_baseline_sha(ceiling: ReferenceReport, ref: ReferenceReport) -> None:
    def sha(rep: ReferenceReport) -> Any:
        return ((rep.report.get("models") or {}).get("baseline") or {}).get("sha256")

    if sha(ceiling) and sha(ref) and sha(ceiling) != sha(ref):
        raise CalibrateError(
            f"{ceiling.path}: the ceiling audit has another baseline than the references"
        )


def _ref_name(ref: ReferenceReport) -> str:
    candidate = (ref.report.get("models") or {}).get("candidate") or {}
    return str(candidate.get("source") or ref.path)


def _warn(cal: Calibration, config: dict[str, Any]) -> None:
    if config.get("sample_filter") != GATE_SAMPLE_FILTER:
        say(
            f"note: the references used sample filter {config.get('sample_filter')!r}; run "
            f"`camdrift gate --sample-filter {config.get('sample_filter')}` with this policy"
        )
    extra = [m for m in cal.metrics if m not in DEFAULT_METRICS]
    if extra:
        say(
            f"note: {', '.join(extra)} is not among the metrics an audit computes by default; "
            "the gate's checks of it need a job that names it"
        )
    if not calib.supports_min_class_samples() and cal.min_class_samples < cal.min_samples:
        say(
            f"note: the references hold only {cal.min_class_samples} samples in some class; this "
            "camdrift's gate decides a class on any count, with more variance than calibrated"
        )
    limited = sum(b.at_limit for f in cal.fits for b in f.bounds)
    if limited:
        say(
            f"note: {limited} rule(s) sit at the metric's bound and cannot fail: with K = "
            f"{cal.k} references the spread is too uncertain; add references"
        )


# --------------------------------------------------------------------------- printing


def print_calibration(cal: Calibration, out: Path) -> None:
    """Each rule: the references' class means, the threshold, and the ceiling scale."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=escape(
            f"calibrated on K = {cal.k} references: alpha {cal.alpha:g} over m = {cal.m} checks "
            f"(each at {cal.level:.3g})"
        ),
        box=box.SIMPLE_HEAD,
    )
    for col in ("method", "metric", "class", "references", "rule", "ceiling", "floor->ceiling"):
        table.add_column(col, justify="left" if col in ("method", "metric", "class") else "right")
    for fit in cal.fits:
        entry = (cal.ceiling or {}).get(fit.check)
        for i, bound in enumerate(fit.bounds):
            position = "-"
            if entry is not None:
                p = entry.positions[i]
                position = "no separation" if p is None else f"{p:.2f}"
                position += " (passes it)" if p is not None and p >= 1 else ""
            table.add_row(
                escape(fit.check.method),
                escape(fit.check.metric),
                escape(fit.check.klass),
                f"{min(fit.values):.3f}–{max(fit.values):.3f}",
                f"{bound.op} {bound.value:.3f}" + (" (limit)" if bound.at_limit else ""),
                "-" if entry is None or entry.ceiling is None else f"{entry.ceiling:.3f}",
                position,
            )
    console.print(table)
    if cal.ceiling is not None:
        console.print(
            "floor->ceiling: where the threshold sits between the references' level (or the "
            "noise floor) = 0 and the randomised model's drift = 1; >= 1: the rule passes the "
            "randomised model; no separation: the randomised model drifts no further there"
        )
    console.print(f"policy: {escape(out)}  (camdrift gate --policy {escape(out)})")
