"""``camdrift gate``: audit a candidate against its baseline and turn the verdict into an exit code.

Against a server (``--server``, default ``$CAMDRIFT_URL``) through :class:`service.client.Client`:
checkpoints and the dataset are uploaded only when the server lacks them (or ``--dataset-id``
names a dataset already there), the job is submitted with the policy, its progress is
followed, and the report with its verdict is fetched. ``--local`` runs the same audit in this
process. Both paths first fit the policy to the job (:func:`worker.results.gate.fit_policy`):
what it reads is turned on (the noise floor for ``beyond_floor``, the metrics its rules name)
and a rule the job could not decide (a class the checkpoints lack, a method not in
``--methods``) is exit 2 before anything is uploaded or attributed — so both paths give the
same verdict on the same inputs.

Exit codes: 0 pass, 1 fail, 3 inconclusive, 2 usage or infrastructure error (one line that
says what to do). Torch is imported only by ``--local``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.options import (
    GATE_SAMPLE_FILTER_DEFAULT,
    MAX_SAMPLES_DEFAULT,
    METHODS_DEFAULT,
    SEED_DEFAULT,
    SPLIT_DEFAULT,
    BitDepth,
    GateSampleFilter,
    MaxSamples,
    Methods,
    Seed,
    Split,
    Via,
    WeightsArch,
    WeightsClasses,
    WeightsInChans,
    WeightsInputSize,
    WeightsMean,
    WeightsMultiLabel,
    WeightsResize,
    WeightsStd,
    WeightsWindow,
    csv,
    weights_request,
)
from service.cli.output import (
    EXIT_USAGE,
    error,
    escape,
    line_console,
    line_err_console,
    print_verdict,
    say,
)
from service.cli.sequence import expand_sequence
from service.client import Client, ClientError
from training.import_request import ImportRequest
from worker.catalog import SPLITS, check_method, check_sample_filter
from worker.job_config import CEILING_LAYERS
from worker.render.markdown import render_markdown
from worker.results.gate import (
    Policy,
    PolicyError,
    PolicyMismatch,
    default_policy,
    evaluate_policy,
    fit_policy,
    junit_xml,
    load_policy,
)

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 3}
DEFAULT_SERVER = "http://127.0.0.1:8000"


class GateError(Exception):
    """A usage or infrastructure problem: exit 2 with this one-line message."""


@dataclass(frozen=True)
class GateArgs:
    """The gate's options: what to audit, where, with which policy, and what to write."""

    baseline: Path
    candidate: Path
    data: Path | None
    dataset_id: str | None
    policy: Path | None
    server: str
    token: str | None
    local: bool
    audit: dict[str, Any]  # job options: methods, sample_filter, max_samples, split, seed, ceiling
    via: list[str] = field(default_factory=list)
    timeout: float = 3600.0
    junit: Path | None = None
    markdown: Path | None = None
    report: Path | None = None
    html: Path | None = None
    mlflow: bool = False
    mlflow_run_id: str | None = None
    mlflow_experiment: str | None = None
    weights: ImportRequest | None = None  # the files are weights trained elsewhere


def gate(
    baseline: Annotated[Path, typer.Option(help="Baseline checkpoint file (TL)")],
    candidate: Annotated[Path, typer.Option(help="Candidate checkpoint file (FT)")],
    data: Annotated[
        Path | None, typer.Option(help="Dataset folder (zipped and uploaded; or used locally)")
    ] = None,
    dataset_id: Annotated[
        str | None, typer.Option(help="A dataset already on the server, instead of --data")
    ] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Gate policy (.toml or .json); default: the shipped one")
    ] = None,
    server: Annotated[
        str, typer.Option(envvar="CAMDRIFT_URL", help="camdrift service URL")
    ] = DEFAULT_SERVER,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CAMDRIFT_TOKEN", help="API token (sent as Bearer)", show_default=False
        ),
    ] = None,
    local: Annotated[bool, typer.Option(help="Run the audit in this process, no server")] = False,
    methods: Methods = METHODS_DEFAULT,
    sample_filter: GateSampleFilter = GATE_SAMPLE_FILTER_DEFAULT,
    max_samples: MaxSamples = MAX_SAMPLES_DEFAULT,
    split: Split = SPLIT_DEFAULT,
    seed: Seed = SEED_DEFAULT,
    junit: Annotated[Path | None, typer.Option(help="Write a JUnit XML file here")] = None,
    markdown: Annotated[
        Path | None, typer.Option(help="Write a markdown summary (PR comment) here")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Also keep the report JSON here")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the HTML report page here")] = None,
    via: Via = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the job before giving up")
    ] = 3600.0,
    ceiling: Annotated[
        str | None,
        typer.Option(
            help="Also audit against the baseline with these top layers re-initialised (head "
            "or head+N): the report reads each drift on the floor -> random model scale"
        ),
    ] = None,
    mlflow: Annotated[
        bool,
        typer.Option(
            "--mlflow",
            help="Log the verdict, every check's value and the files to MLflow (the active "
            "run, MLFLOW_RUN_ID, --mlflow-run-id, or a new run); needs camdrift[mlflow]",
        ),
    ] = False,
    mlflow_run_id: Annotated[
        str | None, typer.Option(help="With --mlflow: log to this run")
    ] = None,
    mlflow_experiment: Annotated[
        str | None, typer.Option(help="With --mlflow and no run: the experiment of a new run")
    ] = None,
    arch: WeightsArch = None,
    classes: WeightsClasses = None,
    input_size: WeightsInputSize = None,
    in_chans: WeightsInChans = None,
    mean: WeightsMean = None,
    std: WeightsStd = None,
    multi_label: WeightsMultiLabel = False,
    weights_resize: WeightsResize = None,
    weights_window: WeightsWindow = None,
    bit_depth: BitDepth = None,
) -> None:
    """Gate a fine-tuned checkpoint on attribution drift: exit 0 pass, 1 fail, 3 inconclusive,
    2 usage or infrastructure error."""
    try:
        weights = weights_request(
            arch,
            classes,
            input_size,
            in_chans,
            mean,
            std,
            multi_label,
            weights_resize,
            weights_window,
        )
    except ValueError as exc:
        error(exc, line_err_console)
        raise typer.Exit(EXIT_USAGE) from None
    args = GateArgs(
        baseline=baseline,
        candidate=candidate,
        data=data,
        dataset_id=dataset_id,
        policy=policy,
        server=server,
        token=token,
        local=local,
        audit={
            "methods": csv(methods),
            "sample_filter": sample_filter,
            "max_samples": max_samples,
            "split": split,
            "seed": seed,
            "ceiling": ceiling,
            "bit_depth": bit_depth,
        },
        via=list(via or []),
        timeout=timeout,
        junit=junit,
        markdown=markdown,
        report=report,
        html=html,
        mlflow=mlflow,
        mlflow_run_id=mlflow_run_id,
        mlflow_experiment=mlflow_experiment,
        weights=weights,
    )
    try:
        verdict = run_gate(args)
    except (GateError, ClientError) as exc:
        error(exc, line_err_console)
        raise typer.Exit(EXIT_USAGE) from None
    except Exception as exc:  # a crash must not read as "fail" (exit 1) in a CI pipeline
        line_err_console.print(
            f"[bold red]error:[/] the gate crashed ({escape(type(exc).__name__)}: "
            f"{escape(exc)}) — rerun with `camdrift --log-level debug gate ...` and report it",
            highlight=False,
        )
        raise typer.Exit(EXIT_USAGE) from exc
    outcome = str(verdict["verdict"])
    style = {"pass": "bold green", "fail": "bold red"}.get(outcome, "bold yellow")
    line_console.print(f"[{style}]gate {outcome}[/]: {escape(_advice(verdict))}", highlight=False)
    code = EXIT_CODES[outcome]
    if code:
        raise typer.Exit(code)


def run_gate(args: GateArgs) -> dict[str, Any]:
    """Check the options, audit (here or on the server), print the verdict and write the
    requested files; the verdict."""
    rules = _load_policy(args.policy)
    for role, path in (("baseline", args.baseline), ("candidate", args.candidate)):
        if not path.is_file():
            raise GateError(f"no such checkpoint file: {path} (--{role})")
    if args.data is not None and args.dataset_id is not None:
        raise GateError("give either --data DIR or --dataset-id ID, not both")
    if args.data is None and args.dataset_id is None:
        raise GateError("give the dataset: --data DIR (or --dataset-id ID on a server)")
    if args.data is not None and not args.data.is_dir():
        raise GateError(f"no such dataset folder: {args.data} (--data)")
    if args.timeout <= 0:
        raise GateError("--timeout must be a positive number of seconds")
    if (args.mlflow_run_id or args.mlflow_experiment) and not args.mlflow:
        raise GateError("--mlflow-run-id and --mlflow-experiment go with --mlflow")
    if args.mlflow:
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            raise GateError("--mlflow needs MLflow: pip install 'camdrift[mlflow]'")
    try:
        trajectory = expand_sequence(args.via)
    except FileNotFoundError as exc:
        raise GateError(str(exc)) from None
    if args.local and args.dataset_id is not None:
        raise GateError("--local needs --data DIR; --dataset-id names a server's dataset")
    options = _fit(rules, _check_options(args.audit), args)
    if args.local:
        assert args.data is not None
        doc = _run_local(args, rules, options, trajectory)
        job_id = None
    else:
        with Client(args.server, args.token, say=say) as client:
            doc, job_id = audit_on_server(
                client,
                args.baseline,
                args.candidate,
                args.data,
                args.dataset_id,
                rules,
                options,
                args.timeout,
                trajectory,
                args.weights,
            )
            if args.html is not None:
                page = client.text(
                    f"/drift-jobs/{job_id}/report", params={"format": "html"}, timeout=600
                )
                _write(args.html, page, "--html")
        if args.report is not None:
            _write(args.report, json.dumps(doc, indent=2) + "\n", "--report")
    verdict = doc.get("verdict")
    if not isinstance(verdict, dict) or verdict.get("verdict") not in EXIT_CODES:
        verdict = evaluate_policy(doc, rules)  # a server without the gate: judge here
    print_verdict(verdict)
    if args.junit is not None:
        _write(args.junit, junit_xml(doc, verdict), "--junit")
    if args.markdown is not None:
        _write(args.markdown, render_markdown(doc, verdict, job_id=job_id), "--markdown")
    if args.mlflow:
        _log_mlflow(args, doc, verdict)
    return verdict


def _log_mlflow(args: GateArgs, doc: dict[str, Any], verdict: dict[str, Any]) -> None:
    from worker.runtime.mlflow_log import log_gate

    files = {"report": args.report, "html": args.html, "junit": args.junit}
    files["markdown"] = args.markdown
    try:
        run_id = log_gate(
            doc, verdict, files, run_id=args.mlflow_run_id, experiment=args.mlflow_experiment
        )
    except RuntimeError as exc:
        raise GateError(str(exc)) from None
    say(f"mlflow: logged the verdict to run {run_id}")


def audit_on_server(
    client: Client,
    baseline: Path,
    candidate: Path,
    data: Path | None,
    dataset_id: str | None,
    policy: Policy,
    options: dict[str, Any],
    timeout: float,
    trajectory: Sequence[Path] = (),
    weights: ImportRequest | None = None,
) -> tuple[dict[str, Any], str]:
    """Upload what the server lacks (``weights``: files to import), run the gated job with a
    progress display, and return (report, job id)."""
    from training.progress import progress

    job = client.start_audit(
        baseline, candidate, data, dataset_id, policy, options, trajectory, weights
    )
    with progress(f"job {job['id']}", unit="img") as bar:
        job = client.wait(job, timeout, bar.update)
    return client.report(job), str(job["id"])


# --------------------------------------------------------------------------- pieces


def _load_policy(path: Path | None) -> Policy:
    try:
        return default_policy() if path is None else load_policy(path)
    except PolicyError as exc:
        raise GateError(f"bad policy: {exc}") from None


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The job options a server would reject, caught before anything is uploaded (the same
    in --local mode)."""
    try:
        for name in options["methods"] or []:
            check_method(name)
        if options["sample_filter"] is not None:
            check_sample_filter(options["sample_filter"])
    except ValueError as exc:
        raise GateError(str(exc)) from None
    if options["split"] is not None and options["split"] not in (*SPLITS, "all"):
        raise GateError(
            f"unknown split {options['split']!r}; choose from {', '.join((*SPLITS, 'all'))}"
        )
    if options["max_samples"] is not None and options["max_samples"] < 1:
        raise GateError("--max-samples must be >= 1")
    if options["seed"] is not None and not 0 <= options["seed"] < 2**32:
        raise GateError("--seed must be in 0..2**32-1")
    ceiling = options.get("ceiling")
    if ceiling is not None and CEILING_LAYERS.fullmatch(ceiling) is None:
        raise GateError(f"--ceiling {ceiling!r}: use head or head+N (N >= 1)")
    return options


def _fit(rules: Policy, options: dict[str, Any], args: GateArgs) -> dict[str, Any]:
    """The job options the policy needs, or exit 2 naming each rule the job could not decide
    (read from the checkpoints' headers: nothing is uploaded or attributed yet)."""
    try:
        return fit_policy(
            rules,
            options,
            [("--baseline", args.baseline), ("--candidate", args.candidate)],
            class_names=args.weights.class_names if args.weights is not None else None,
        )
    except PolicyMismatch as exc:
        hint = "fix the policy"
        if any(p.key == "method" for p in exc.problems):
            hint += ", or add the method to --methods"
        raise GateError(f"the policy does not fit this job: {exc} — {hint}") from None
    except PolicyError as exc:
        raise GateError(str(exc)) from None


def _write(path: Path, text: str, option: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise GateError(f"cannot write {option} {path}: {exc.strerror or exc}") from None


def _advice(verdict: dict[str, Any]) -> str:
    reason = str(verdict.get("reason") or "")
    outcome = verdict.get("verdict")
    if outcome == "pass":
        return f"{reason}."
    if outcome == "fail":
        return (
            f"{reason} — the candidate's evidence moved beyond the policy; inspect the failing "
            "checks and the report before shipping it."
        )
    if int(verdict.get("n_included") or 0) < int(verdict.get("min_samples") or 0):
        return (
            f"{reason} — evaluate more samples (a larger dataset, a higher --max-samples, "
            "--split all or --sample-filter all) or lower min_samples in the policy."
        )
    if verdict.get("undecided_classes"):
        return (
            f"{reason} — evaluate more samples of those classes (a larger dataset, a higher "
            "--max-samples, --split all or --sample-filter all), lower min_class_samples in "
            "the policy, or name the classes to judge instead of '*'."
        )
    return (
        f"{reason} — see the checks marked n/a: make the policy name methods, metrics and "
        "classes the job computes."
    )


def _run_local(
    args: GateArgs, rules: Policy, options: dict[str, Any], trajectory: list[Path]
) -> dict[str, Any]:
    from training.progress import progress
    from worker.engine.audit import AuditConfig
    from worker.runtime.local_run import run_audit

    assert args.data is not None
    kw: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if "split" in kw and kw["split"] == "all":
        kw["split"] = None
    try:
        config = AuditConfig(**kw)
        with tempfile.TemporaryDirectory(prefix="camdrift-gate-") as tmp:
            out = args.report if args.report is not None else Path(tmp) / "report.json"
            baseline, candidate, trajectory = _local_checkpoints(args, trajectory, Path(tmp))
            with progress("local audit", unit="img") as bar:
                doc = run_audit(
                    baseline,
                    candidate,
                    args.data,
                    config,
                    out,
                    bar.update,
                    policy=rules,
                    trajectory=trajectory,
                )
            if args.html is not None:  # while the rows and maps next to the report exist
                _write_local_html(out, args.html)
            return doc
    except (ValueError, OSError) as exc:
        raise GateError(str(exc)) from None


def _local_checkpoints(
    args: GateArgs, trajectory: list[Path], tmp: Path
) -> tuple[Path, Path, list[Path]]:
    """The files as camdrift checkpoints: weights trained elsewhere are imported into ``tmp``
    first (as ``camdrift import`` would), camdrift checkpoints are used as they are."""
    if args.weights is None:
        return args.baseline, args.candidate, trajectory
    from dataclasses import replace

    from training.importing import import_checkpoint

    def imported(path: Path, role: str, phase: str) -> Path:
        out = tmp / f"{role}.safetensors"
        import_checkpoint(path, out, replace(args.weights, phase=phase))
        say(f"{role}: imported {path.name} as {args.weights.arch}")
        return out

    steps = [imported(p, f"via{i}", "ft") for i, p in enumerate(trajectory)]
    return (
        imported(args.baseline, "baseline", "tl"),
        imported(args.candidate, "candidate", "ft"),
        steps,
    )


def _write_local_html(report: Path, html: Path) -> None:
    from worker.render.html_report import write_local_html

    try:
        write_local_html(report, html)
    except OSError as exc:
        raise GateError(f"cannot write --html {html}: {exc.strerror or exc}") from None
