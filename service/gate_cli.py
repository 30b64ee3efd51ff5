"""``camdrift gate``: audit a candidate against its baseline and turn the verdict into an exit code.

Against a server (``--server``, default ``$CAMDRIFT_URL``): each checkpoint is uploaded only when
the server lacks its sha256, the dataset folder is zipped and uploaded only when the server
holds no upload of the same content (or ``--dataset-id`` names one already there), the job is
submitted with the policy, its progress is followed, and the report with its verdict is
fetched. ``--local`` runs the same audit in this process.

Exit codes: 0 pass, 1 fail, 3 inconclusive, 2 usage or infrastructure error (one line that
says what to do). Torch is imported only by ``--local``.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from service.sequence import VIA_HELP, expand_sequence
from training.checkpoint_format import sha256_file
from training.datasets import content_digest
from worker.catalog import DEFAULT_METHODS, SPLITS, check_method, check_sample_filter
from worker.render.markdown import render_markdown
from worker.results.gate import (
    Policy,
    PolicyError,
    default_policy,
    evaluate_policy,
    junit_xml,
    load_policy,
    required_text,
)

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 3}
EXIT_ERROR = 2
DEFAULT_SERVER = "http://127.0.0.1:8000"
ACTIVE = ("queued", "running")

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class GateError(Exception):
    """A usage or infrastructure problem: exit 2 with this one-line message."""


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
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated CAM methods (default layercam,gradcam++)")
    ] = None,
    sample_filter: Annotated[
        str,
        typer.Option(
            help="all (default: every sample, maps explain its label, so a class the "
            "baseline misses cannot hide drift), true_positive (the paper's), predicted "
            "or disagreement"
        ),
    ] = "all",
    max_samples: Annotated[int | None, typer.Option(help="Seeded subsample size")] = None,
    split: Annotated[
        str | None, typer.Option(help="auto (default: the test split if any), all, or a split")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of subsampling and bootstrap")] = None,
    junit: Annotated[Path | None, typer.Option(help="Write a JUnit XML file here")] = None,
    markdown: Annotated[
        Path | None, typer.Option(help="Write a markdown summary (PR comment) here")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Also keep the report JSON here")] = None,
    via: Annotated[list[str] | None, typer.Option(help=VIA_HELP)] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the job before giving up")
    ] = 3600.0,
) -> None:
    """Gate a fine-tuned checkpoint on attribution drift: exit 0 pass, 1 fail, 3 inconclusive,
    2 usage or infrastructure error."""
    try:
        rules = _load_policy(policy)
        for role, path in (("baseline", baseline), ("candidate", candidate)):
            if not path.is_file():
                raise GateError(f"no such checkpoint file: {path} (--{role})")
        if data is not None and dataset_id is not None:
            raise GateError("give either --data DIR or --dataset-id ID, not both")
        if data is None and dataset_id is None:
            raise GateError("give the dataset: --data DIR (or --dataset-id ID on a server)")
        if data is not None and not data.is_dir():
            raise GateError(f"no such dataset folder: {data} (--data)")
        if timeout <= 0:
            raise GateError("--timeout must be a positive number of seconds")
        try:
            trajectory = expand_sequence(via or [])
        except FileNotFoundError as exc:
            raise GateError(str(exc)) from None
        options = _check_options(
            rules,
            {
                "methods": _csv(methods),
                "sample_filter": sample_filter,
                "max_samples": max_samples,
                "split": split,
                "seed": seed,
            },
        )
        if local:
            if dataset_id is not None:
                raise GateError("--local needs --data DIR; --dataset-id names a server's dataset")
            assert data is not None
            doc = _run_local(baseline, candidate, data, rules, options, report, trajectory)
            job_id = None
        else:
            doc, job_id = run_on_server(
                server,
                token,
                baseline,
                candidate,
                data,
                dataset_id,
                rules,
                options,
                timeout,
                trajectory,
            )
            if report is not None:
                _write(report, json.dumps(doc, indent=2) + "\n", "--report")
        verdict = doc.get("verdict")
        if not isinstance(verdict, dict) or verdict.get("verdict") not in EXIT_CODES:
            verdict = evaluate_policy(doc, rules)  # a server without the gate: judge here
        print_verdict(verdict)
        if junit is not None:
            _write(junit, junit_xml(doc, verdict), "--junit")
        if markdown is not None:
            _write(markdown, render_markdown(doc, verdict, job_id=job_id), "--markdown")
    except GateError as exc:
        err_console.print(f"[bold red]error:[/] {_escape(exc)}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    except Exception as exc:  # a crash must not read as "fail" (exit 1) in a CI pipeline
        err_console.print(
            f"[bold red]error:[/] the gate crashed ({_escape(type(exc).__name__)}: "
            f"{_escape(exc)}) — rerun with `camdrift --log-level debug gate ...` and report it",
            highlight=False,
        )
        raise typer.Exit(EXIT_ERROR) from exc
    outcome = str(verdict["verdict"])
    style = {"pass": "bold green", "fail": "bold red"}.get(outcome, "bold yellow")
    console.print(f"[{style}]gate {outcome}[/]: {_escape(_advice(verdict))}", highlight=False)
    code = EXIT_CODES[outcome]
    if code:
        raise typer.Exit(code)


# --------------------------------------------------------------------------- pieces


def _load_policy(path: Path | None) -> Policy:
    try:
        return default_policy() if path is None else load_policy(path)
    except PolicyError as exc:
        raise GateError(f"bad policy: {exc}") from None


def _check_options(rules: Policy, options: dict[str, Any]) -> dict[str, Any]:
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
    methods = options["methods"] or list(DEFAULT_METHODS)
    for number, rule in enumerate(rules.rule, start=1):
        if rule.method != "*" and rule.method not in methods:
            raise GateError(
                f"policy rule {number} ({rule.label()}) needs method {rule.method!r}, but the "
                f"job computes {', '.join(methods)}; add it to --methods"
            )
    return options


def _csv(value: str | None) -> list[str] | None:
    names = [v.strip() for v in value.split(",") if v.strip()] if value else []
    return names or None


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
    return (
        f"{reason} — see the checks marked n/a: make the policy name methods, metrics and "
        "classes the job computes."
    )


def print_verdict(verdict: dict[str, Any]) -> None:
    """The verdict as a table: one row per expanded check, grouped by rule."""
    from rich import box

    outcome = str(verdict.get("verdict")).upper()
    table = Table(
        title=_escape(f"camdrift gate: {outcome} — {verdict.get('reason', '')}"),
        box=box.SIMPLE_HEAD,
    )
    for column in ("rule", "method", "class", "n", "observed", "result"):
        table.add_column(column, justify="right" if column in ("n", "observed") else "left")
    n_inc, minimum = verdict.get("n_included"), verdict.get("min_samples")
    enough = int(n_inc or 0) >= int(minimum or 0)
    table.add_row(
        f"min_samples >= {minimum}",
        "",
        "",
        str(n_inc),
        "",
        "[green]pass[/]" if enough else "[yellow]too few samples[/]",
        end_section=True,
    )
    checks = list(verdict.get("rules") or [])
    groups = [_group(c) for c in checks]
    for i, check in enumerate(checks):
        position = i - groups.index(groups[i])  # row within its rule (checks come in order)
        label = (
            _escape(check["name"])
            if position == 0
            else f"[dim]{_escape(check['metric'])} {check['stat']} {required_text(check)}[/]"
            if position == 1
            else ""
        )
        last = i == len(checks) - 1 or groups[i + 1] != groups[i]
        passed, observed = check.get("passed"), check.get("observed")
        result = (
            "[green]pass[/]"
            if passed is True
            else "[bold red]FAIL[/]"
            if passed is False
            else f"[yellow]n/a: {_escape(check.get('reason'))}[/]"
        )
        table.add_row(
            label,
            _escape(check.get("method")),
            _escape(check.get("class")),
            "" if check.get("n") is None else str(check["n"]),
            "–" if observed is None else f"{observed:.3f}",
            result,
            end_section=last,
        )
    console.print(table)


def _group(check: dict[str, Any]) -> tuple[Any, ...]:
    return (check["name"], check["metric"], check["stat"], check["op"], check["value"])


def _escape(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


# --------------------------------------------------------------------------- local


def _run_local(
    baseline: Path,
    candidate: Path,
    data: Path,
    rules: Policy,
    options: dict[str, Any],
    report: Path | None,
    trajectory: list[Path],
) -> dict[str, Any]:
    from worker.engine.audit import AuditConfig
    from worker.runtime.local_run import run_audit

    kw: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if "split" in kw and kw["split"] == "all":
        kw["split"] = None
    try:
        config = AuditConfig(**kw)
        with tempfile.TemporaryDirectory(prefix="camdrift-gate-") as tmp:
            out = report if report is not None else Path(tmp) / "report.json"
            with _progress("local audit") as update:
                return run_audit(
                    baseline,
                    candidate,
                    data,
                    config,
                    out,
                    update,
                    policy=rules,
                    trajectory=trajectory,
                )
    except (ValueError, OSError) as exc:
        raise GateError(str(exc)) from None


@contextmanager
def _progress(description: str) -> Iterator[Any]:
    """A progress bar on stderr; yields ``update(done, total, description=None)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None, text: str | None = None) -> None:
            bar.update(task, completed=done, total=total, description=text or description)

        yield update


# --------------------------------------------------------------------------- server


class _Api:
    """httpx calls that turn every failure into a :class:`GateError` saying what to do."""

    def __init__(self, server: str, token: str | None) -> None:
        import httpx

        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(
            base_url=self.server, headers=headers, timeout=httpx.Timeout(60.0, connect=10.0)
        )

    def __enter__(self) -> _Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            response = self.client.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise GateError(
                f"cannot reach camdrift at {self.server}: {_reason(exc)} — start it with "
                "`camdrift serve` or `docker compose up`, or use --local"
            ) from None
        except httpx.TimeoutException:
            raise GateError(
                f"camdrift at {self.server} did not answer {method} {path} in time — "
                "check that the server is healthy (GET /readyz) and retry"
            ) from None
        except httpx.HTTPError as exc:
            raise GateError(
                f"talking to camdrift at {self.server} failed ({method} {path}): {_reason(exc)}"
            ) from None
        if response.status_code >= 400:
            raise GateError(self._problem(method, path, response))
        try:
            return response.json()
        except ValueError:
            raise GateError(
                f"{self.server} answered {method} {path} with something that is not JSON — "
                "is this a camdrift server? check --server / CAMDRIFT_URL"
            ) from None

    def _problem(self, method: str, path: str, response: Any) -> str:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        detail = str(body.get("detail") or body.get("title") or response.text[:200]).strip()
        unsaid = [  # field errors the detail does not mention already
            f"{e.get('field')}: {e.get('message')}"
            for e in body.get("errors") or []
            if isinstance(e, dict) and str(e.get("field")) not in detail
        ]
        if unsaid:
            detail = f"{detail} ({'; '.join(unsaid)})"
        where = f"{method} {path}"
        if status in (401, 403):
            return (
                f"camdrift at {self.server} refused {where} ({status}): {detail} — "
                "pass a valid --token or set CAMDRIFT_TOKEN"
            )
        if status >= 500:
            return (
                f"camdrift at {self.server} failed on {where} ({status}): {detail} — "
                "check the server's logs and retry"
            )
        return f"camdrift rejected {where} ({status}): {detail}"


def _reason(exc: Exception) -> str:
    text = re.sub(r"\[Errno -?\d+\]\s*", "", str(exc)).strip() or type(exc).__name__
    return text[:1].lower() + text[1:]


def _on_server(api: _Api, kind: str, key: str, digest: str, what: str) -> str | None:
    """The id of the server's ``kind`` record whose ``key`` is ``digest`` (said on stderr),
    or None: the caller uploads."""
    page = api.call("GET", f"/{kind}s", params={key: digest, "limit": 1})
    for item in page.get("items") or []:
        if item.get(key) == digest:
            err_console.print(
                f"{what} is on the server already ({kind} {item['id']}, {key} {digest[:12]}), "
                "not uploaded",
                highlight=False,
                markup=False,
            )
            return str(item["id"])
    return None


def _checkpoint_id(api: _Api, path: Path, role: str) -> str:
    """The server's id for this file: found by sha256, uploaded only when missing."""
    try:
        sha = sha256_file(path)
    except OSError as exc:
        raise GateError(f"cannot read checkpoint {path} (--{role}): {exc.strerror}") from None
    found = _on_server(api, "checkpoint", "sha256", sha, f"{role}: {path.name}")
    if found is not None:
        return found
    record = _upload(api, "checkpoint", path, "application/octet-stream")
    err_console.print(
        f"{role}: uploaded {path.name} (checkpoint {record['id']}, sha256 {sha[:12]})",
        highlight=False,
        markup=False,
    )
    return str(record["id"])


def _upload(api: _Api, kind: str, path: Path, media_type: str) -> dict[str, Any]:
    """POST one file to ``/{kind}s`` (a long timeout: large checkpoints and datasets)."""
    import httpx

    with open(path, "rb") as fh:
        return api.call(
            "POST",
            f"/{kind}s",
            files={"file": (path.name, fh, media_type)},
            timeout=httpx.Timeout(600.0, connect=10.0),
        )


def _dataset_id(api: _Api, data: Path | None, dataset_id: str | None) -> str:
    if dataset_id is not None:
        return str(api.call("GET", f"/datasets/{dataset_id}")["id"])
    assert data is not None
    found = _on_server(api, "dataset", "content_sha256", content_digest(data), f"dataset: {data}")
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="camdrift-gate-") as tmp:
        archive = Path(tmp) / f"{data.resolve().name or 'dataset'}.zip"
        count = zip_folder(data, archive)
        if count == 0:
            raise GateError(f"the dataset folder {data} has no files (--data)")
        record = _upload(api, "dataset", archive, "application/zip")
    err_console.print(
        f"dataset: uploaded {data} ({record.get('num_samples')} images, dataset {record['id']})",
        highlight=False,
        markup=False,
    )
    return str(record["id"])


def zip_folder(folder: Path, archive: Path) -> int:
    """Zip every file under ``folder`` (paths relative to it) into ``archive``; file count."""
    count = 0
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder).as_posix())
                count += 1
    return count


def run_on_server(
    server: str,
    token: str | None,
    baseline: Path,
    candidate: Path,
    data: Path | None,
    dataset_id: str | None,
    rules: Policy,
    options: dict[str, Any],
    timeout: float,
    trajectory: list[Path] | None = None,
) -> tuple[dict[str, Any], str]:
    with _Api(server, token) as api:
        body: dict[str, Any] = {
            "baseline_id": _checkpoint_id(api, baseline, "baseline"),
            "candidate_id": _checkpoint_id(api, candidate, "candidate"),
            "dataset_id": _dataset_id(api, data, dataset_id),
            "policy": rules.model_dump(by_alias=True, mode="json"),
        }
        if trajectory:
            body["trajectory_ids"] = [
                _checkpoint_id(api, path, f"via[{i}]") for i, path in enumerate(trajectory)
            ]
        for key, value in options.items():
            if value is not None:
                body[key] = None if (key == "split" and value == "all") else value
        if any(rule.stat == "beyond_floor" for rule in rules.rule):
            body["noise_floor"] = True
        job = api.call("POST", "/drift-jobs", json=body)
        job_id = str(job["id"])
        location = f"/drift-jobs/{job_id}"
        err_console.print(f"job {job_id} submitted: {api.server}{location}", markup=False)
        job = _follow(api, job, location, timeout)
        if job["status"] == "failed":
            raise GateError(
                f"job {job_id} failed: {job.get('error') or 'no error message'} — "
                f"see {api.server}{location}"
            )
        if job["status"] != "succeeded":
            raise GateError(f"job {job_id} was {job['status']} before it finished — rerun the gate")
        doc = api.call("GET", f"{location}/report")
        if not isinstance(doc.get("verdict"), dict) and isinstance(job.get("verdict"), dict):
            doc["verdict"] = job["verdict"]
        err_console.print(f"report: {api.server}{location}/report", markup=False)
        return doc, job_id


def _follow(api: _Api, job: dict[str, Any], location: str, timeout: float) -> dict[str, Any]:
    """Poll the job until it is finished, with a progress bar; cancel it on timeout."""
    deadline = time.monotonic() + timeout
    pause = 0.2
    with _progress(f"job {job['id']}") as update:
        while True:
            progress = job.get("progress") or {}
            update(progress.get("done") or 0, progress.get("total"), f"job {job['status']}")
            if job["status"] not in ACTIVE:
                return job
            if time.monotonic() > deadline:
                with suppress(GateError):
                    api.call("POST", f"{location}/cancel")
                raise GateError(
                    f"job {job['id']} did not finish within {timeout:g} s and was cancelled — "
                    "raise --timeout, or lower --max-samples"
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 2.0)
            job = api.call("GET", location)
