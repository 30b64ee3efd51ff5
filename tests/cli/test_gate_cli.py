"""``camdrift gate``: exit codes, JUnit and markdown for each verdict, locally and against a
real embedded service (uploads skipped by sha256, verdict stored on the job), and the errors
(unreachable server, bad policy, missing checkpoint, rejected token) as exit 2 with a message."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import app
from service.cli.demo import EmbeddedServer
from service.client import zip_folder
from tests.builders import tiny_audit_inputs
from training.phantoms import CLASSES

runner = CliRunner()
TOKEN = "gate-test-token"

# Random tinycnn checkpoints on 30 phantoms (--split all --sample-filter all: 30 included).
# Similarities lie in [-1, 1] and displacements in [0, 1], so these thresholds decide alone.
PASS_POLICY = """\
min_samples = 10
min_class_samples = 6
[[rule]]
name = "pattern exists"
method = "*"
metric = "pearson"
stat = "mean"
class = "*"
op = ">="
value = -1.0
[[rule]]
method = "layercam"
metric = "displacement"
stat = "q95"
op = "<="
value = 1.0
"""
FAIL_POLICY = PASS_POLICY.replace("value = -1.0", "value = 1.5").replace(
    'name = "pattern exists"', 'name = "impossible overlap"'
)
INCONCLUSIVE_POLICY = PASS_POLICY.replace("min_samples = 10", "min_samples = 1000000")
# 6 samples per class: a class minimum of 7 leaves every class check undecided
UNDECIDED_POLICY = PASS_POLICY.replace("min_class_samples = 6", "min_class_samples = 7")
# a noise-floor rule that holds whatever the drift (a share is <= 1): decided iff the floor
# was measured
FLOOR_POLICY = """\
min_samples = 10
min_class_samples = 6
[[rule]]
name = "beyond the floor"
method = "layercam"
metric = "pearson"
stat = "beyond_floor"
class = "*"
op = "<="
value = 1.0
[[rule]]
method = "layercam"
metric = "ssim"
stat = "mean"
op = ">="
value = -1.0
"""
TYPO_POLICY = PASS_POLICY.replace('class = "*"', 'class = "efusion"')
FAST = ("--split", "all", "--sample-filter", "all", "--methods", "layercam")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tiny_audit_inputs(tmp_path_factory.mktemp("gate"))
    for name, text in (
        ("pass", PASS_POLICY),
        ("fail", FAIL_POLICY),
        ("inconclusive", INCONCLUSIVE_POLICY),
        ("undecided", UNDECIDED_POLICY),
        ("floor", FLOOR_POLICY),
        ("typo", TYPO_POLICY),
    ):
        (root / f"{name}.toml").write_text(text)
    return root


@pytest.fixture(autouse=True)
def _no_ambient_server(monkeypatch) -> None:
    monkeypatch.delenv("CAMDRIFT_URL", raising=False)
    monkeypatch.delenv("CAMDRIFT_TOKEN", raising=False)


def _gate(world: Path, *extra: str, data: bool = True):
    args = [
        "gate",
        "--baseline",
        str(world / "tl.safetensors"),
        "--candidate",
        str(world / "ft.safetensors"),
    ]
    if data:
        args += ["--data", str(world / "data")]
    return runner.invoke(app, [*args, *extra])


def _junit(path: Path) -> ET.Element:
    root = ET.fromstring(path.read_bytes())
    assert root.tag == "testsuite" and root.get("name") == "camdrift"
    assert int(root.get("tests")) == len(root.findall("testcase"))
    return root


# --------------------------------------------------------------------------- --local


@pytest.mark.parametrize(("verdict", "code"), [("pass", 0), ("fail", 1), ("inconclusive", 3)])
def test_local_exit_codes_junit_and_markdown(world, tmp_path, verdict, code) -> None:
    junit, markdown, report = tmp_path / "gate.xml", tmp_path / "gate.md", tmp_path / "r.json"
    result = _gate(
        world,
        "--local",
        "--policy",
        str(world / f"{verdict}.toml"),
        "--junit",
        str(junit),
        "--markdown",
        str(markdown),
        "--report",
        str(report),
        *FAST,
    )
    assert result.exit_code == code, result.output
    assert f"gate {verdict}" in result.output
    assert f"camdrift gate: {verdict.upper()}" in result.output

    root = _junit(junit)
    cases = root.findall("testcase")
    assert len(cases) == 1 + 5 + 1  # min_samples, pearson per class, displacement overall
    assert cases[0].get("name").startswith("min_samples")
    assert {c.get("classname") for c in cases[1:]} == {"layercam"}
    failures, skipped = root.findall("testcase/failure"), root.findall("testcase/skipped")
    assert int(root.get("failures")) == len(failures)
    assert int(root.get("skipped")) == len(skipped)
    if verdict == "pass":
        assert not failures and not skipped
    elif verdict == "fail":
        assert len(failures) == 5 and not skipped
        assert all(f.get("message").endswith("required >= 1.5") for f in failures)
        assert all("impossible overlap" in c.get("name") for c in cases[1:6])
    else:
        assert not failures and len(skipped) == 1 and "min_samples" in cases[0].get("name")
        assert "evaluate more samples" in result.output

    text = markdown.read_text()
    assert f"**Gate: {verdict.upper()}**" in text
    assert "| rule | observed | required | result |" in text
    assert "class covid" in text and "### Performance" in text

    doc = json.loads(report.read_text())
    assert doc["verdict"]["verdict"] == verdict and doc["verdict"]["n_included"] == 30


def test_local_with_the_default_policy(world, tmp_path) -> None:
    """The default policy's min_samples (30) holds per class too: 6 samples a class leave
    every class check undecided, so the verdict is inconclusive, not a guess."""
    junit = tmp_path / "gate.xml"
    result = _gate(world, "--local", "--junit", str(junit), *FAST)
    assert result.exit_code == 3, result.output
    root = _junit(junit)
    cases = root.findall("testcase")
    assert len(cases) == 1 + 3 * len(CLASSES)  # three rules, every class, one method
    skipped = root.findall("testcase/skipped")
    assert len(skipped) == 3 * len(CLASSES)
    assert {s.get("message") for s in skipped} == {"undecided: 6 samples, min_class_samples 30"}
    assert "spearman mean" in result.output and "min_samples >=" in result.output


def test_local_along_a_sequence_reports_the_trajectory(world, tmp_path) -> None:
    report, markdown = tmp_path / "report.json", tmp_path / "gate.md"
    via = ("--via", str(world / "ft.safetensors"))
    policy = ("--policy", str(world / "pass.toml"))
    result = _gate(
        world, "--local", *via, *policy, "--report", str(report), "--markdown", str(markdown), *FAST
    )
    assert result.exit_code == 0, result.output
    section = json.loads(report.read_text())["trajectory"]
    assert section["steps"] == 2 and [c["phase"] for c in section["checkpoints"]] == [
        "tl",
        "ft",
        "ft",
    ]
    assert "### Trajectory (2 steps)" in markdown.read_text()
    missing = _gate(world, "--local", "--via", str(tmp_path / "nope*.safetensors"), *FAST)
    assert missing.exit_code == 2 and "--via" in missing.output


def test_local_computes_the_noise_floor_a_policy_reads(world, tmp_path) -> None:
    """A beyond_floor rule turns the noise floor on, an ssim rule the ssim metric: decided,
    not "inconclusive" for want of what the policy reads."""
    report = tmp_path / "r.json"
    policy = ("--policy", str(world / "floor.toml"))
    result = _gate(world, "--local", *policy, "--report", str(report), *FAST)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["config"]["noise_floor"] is True and "ssim" in doc["config"]["metrics"]
    shares = doc["noise_floor"]["layercam"]["pearson"]["beyond_floor_per_class"]
    checks = {c["class"]: c for c in doc["verdict"]["rules"]}
    for klass in CLASSES:
        assert checks[klass]["observed"] == pytest.approx(shares[klass]), klass


def test_a_class_below_min_class_samples_is_inconclusive_naming_it(world, tmp_path) -> None:
    junit = tmp_path / "gate.xml"
    policy = ("--policy", str(world / "undecided.toml"))
    result = _gate(world, "--local", *policy, "--junit", str(junit), *FAST)
    assert result.exit_code == 3, result.output
    assert "undecided (classes: " in result.output or "decided (classes: " in result.output
    assert "min_class_samples" in result.output
    skipped = _junit(junit).findall("testcase/skipped")
    assert len(skipped) == len(CLASSES)
    assert {s.get("message") for s in skipped} == {"undecided: 6 samples, min_class_samples 7"}


def test_a_class_typo_exits_2_before_any_audit(world, monkeypatch) -> None:
    import worker.runtime.local_run

    def no_audit(*args: Any, **kw: Any) -> None:
        raise AssertionError("the audit ran")

    monkeypatch.setattr(worker.runtime.local_run, "run_audit", no_audit)
    policy = ("--policy", str(world / "typo.toml"))
    result = _gate(world, "--local", *policy, *FAST)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "policy rule 1 (pattern exists): class 'efusion' is not a class of the checkpoints" in (
        text
    )
    assert "did you mean 'effusion'?" in text and ", ".join(CLASSES) in text
    # against a server: the same message, before anything is sent (this one is unreachable)
    remote = _gate(world, "--server", "http://127.0.0.1:9", *policy, *FAST)
    assert remote.exit_code == 2, remote.output
    assert "class 'efusion' is not a class" in remote.output
    assert "cannot reach" not in remote.output


def test_local_writes_the_html_report(world, tmp_path) -> None:
    html = tmp_path / "out" / "gate.html"
    policy = ("--policy", str(world / "fail.toml"))
    result = _gate(world, "--local", *policy, "--html", str(html), *FAST)
    assert result.exit_code == 1, result.output
    page = html.read_text()
    assert "<html" in page and "impossible overlap" in page


# --------------------------------------------------------------------------- errors (exit 2)


def test_bad_policy_file_exits_2_naming_the_line(world, tmp_path) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text(PASS_POLICY.replace('metric = "displacement"', 'metric = "iou"'))
    result = _gate(world, "--local", "--policy", str(bad))
    assert result.exit_code == 2, result.output
    assert "line 13: rule 2: metric 'iou' is unknown" in result.output
    broken = tmp_path / "broken.toml"
    broken.write_text("min_samples = 10\n[[rule]\n")
    result = _gate(world, "--local", "--policy", str(broken))
    assert result.exit_code == 2 and "broken.toml line 2: invalid TOML" in result.output


def test_missing_checkpoint_exits_2_naming_it(world, tmp_path) -> None:
    missing = tmp_path / "nope.safetensors"
    result = runner.invoke(
        app,
        [
            "gate",
            "--local",
            "--baseline",
            str(world / "tl.safetensors"),
            "--candidate",
            str(missing),
            "--data",
            str(world / "data"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert f"no such checkpoint file: {missing} (--candidate)" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give the dataset"),
        (("--data", "x", "--dataset-id", "y"), "not both"),
        (("--local", "--dataset-id", "y"), "--local needs --data"),
        (("--data", "/no/such/folder"), "no such dataset folder"),
        (("--data", "{data}", "--methods", "saliency"), "unknown method 'saliency'"),
        (("--data", "{data}", "--split", "holdout"), "unknown split 'holdout'"),
        (("--data", "{data}", "--methods", "gradcam"), "method 'layercam' is not computed"),
    ],
)
def test_usage_errors_exit_2(world, args, message) -> None:
    args = tuple(a.replace("{data}", str(world / "data")) for a in args)
    policy = ("--policy", str(world / "pass.toml"))  # its rule 2 names layercam
    result = _gate(world, "--server", "http://127.0.0.1:9", *policy, *args, data=False)
    assert result.exit_code == 2, result.output
    assert message in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_exits_2_with_what_to_do(world) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = _gate(world, "--server", url, "--policy", str(world / "pass.toml"))
    assert result.exit_code == 2, result.output
    assert f"cannot reach camdrift at {url}: connection refused" in result.output
    assert "camdrift serve" in result.output and "--local" in result.output


# --------------------------------------------------------------------------- a real service


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Any:
    embedded = EmbeddedServer(tmp_path_factory.mktemp("service"))
    embedded.settings = embedded.settings.model_copy(update={"api_tokens": [TOKEN]})
    with embedded as base:
        yield base


@pytest.fixture
def requests_made(monkeypatch) -> list[tuple[str, str]]:
    """(method, path) of every request the gate sends."""
    sent: list[tuple[str, str]] = []
    original = httpx.Client.send

    def send(self, request, **kw):
        sent.append((request.method, request.url.path))
        return original(self, request, **kw)

    monkeypatch.setattr(httpx.Client, "send", send)
    return sent


def _api(server: str) -> httpx.Client:
    return httpx.Client(base_url=server, headers={"Authorization": f"Bearer {TOKEN}"})


def _job_id(output: str) -> str:
    match = re.search(r"job ([0-9a-f]+) submitted", output)
    assert match, output
    return match.group(1)


def _on_server(api: httpx.Client, *paths: Path) -> int:
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    return sum(api.get("/checkpoints", params={"sha256": s}).json()["total"] for s in shas)


def test_against_the_service_verdict_stored_and_no_reupload(
    world, tmp_path, server, requests_made
) -> None:
    junit, markdown = tmp_path / "gate.xml", tmp_path / "gate.md"
    files = (world / "tl.safetensors", world / "ft.safetensors")
    with _api(server) as api:
        missing = 2 - _on_server(api, *files)
    requests_made.clear()
    common = ("--server", server, "--token", TOKEN, *FAST)
    first = _gate(
        world,
        *common,
        "--policy",
        str(world / "fail.toml"),
        "--junit",
        str(junit),
        "--markdown",
        str(markdown),
    )
    assert first.exit_code == 1, first.output
    assert requests_made.count(("POST", "/checkpoints")) == missing
    assert len(_junit(junit).findall("testcase/failure")) == 5
    job_id = _job_id(first.output)
    assert f"job `{job_id}`" in markdown.read_text() and "**Gate: FAIL**" in markdown.read_text()

    with _api(server) as api:
        assert _on_server(api, *files) == 2
        job = api.get(f"/drift-jobs/{job_id}").json()
        assert job["status"] == "succeeded"
        assert job["verdict"]["verdict"] == "fail" and job["verdict"]["n_included"] == 30
        assert job["config"]["policy"]["rule"][0]["class"] == "*"
        report = api.get(f"/drift-jobs/{job_id}/report").json()
        assert report["verdict"] == job["verdict"]
        md = api.get(f"/drift-jobs/{job_id}/report", params={"format": "md"}).text
        assert "**Gate: FAIL**" in md

    requests_made.clear()
    second = _gate(world, *common, "--policy", str(world / "pass.toml"))
    assert second.exit_code == 0, second.output
    assert ("POST", "/checkpoints") not in requests_made
    assert ("POST", "/datasets") not in requests_made  # found by its content digest
    assert requests_made.count(("GET", "/checkpoints")) == 2  # looked up by sha256 instead
    assert second.output.count("not uploaded") == 3
    with _api(server) as api:
        job = api.get(f"/drift-jobs/{_job_id(second.output)}").json()
        assert job["verdict"]["verdict"] == "pass"

    requests_made.clear()  # along a sequence: the intermediate is looked up like the ends
    third = _gate(world, *common, "--policy", str(world / "pass.toml"), "--via", str(files[1]))
    assert third.exit_code == 0, third.output
    assert ("POST", "/checkpoints") not in requests_made
    with _api(server) as api:
        job = api.get(f"/drift-jobs/{_job_id(third.output)}").json()
        assert job["config"]["trajectory_ids"] == [job["candidate_id"]]
        report = api.get(f"/drift-jobs/{job['id']}/report").json()
        assert report["trajectory"]["steps"] == 2


def test_checkpoint_lookup_by_sha256(world, server) -> None:
    with _api(server) as api:
        response = api.get("/checkpoints", params={"sha256": "0" * 64})
        assert response.status_code == 200 and response.json()["items"] == []
        assert response.json()["total"] == 0
        bad = api.get("/checkpoints", params={"sha256": "xyz"})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "query.sha256"


def test_dataset_id_and_server_side_rejections(world, server) -> None:
    with _api(server) as api:
        with open(world / "tl.safetensors", "rb") as fh:
            tl = api.post("/checkpoints", files={"file": ("tl.safetensors", fh)}).json()["id"]
        zip_folder(world / "data", world / "data.zip")
        zipped = (world / "data.zip").read_bytes()
        upload = api.post("/datasets", files={"file": ("data.zip", zipped, "application/zip")})
        assert upload.status_code == 201, upload.text
        dataset_id = upload.json()["id"]
        rule = {"method": "*", "metric": "pearson", "stat": "mean", "op": ">=", "value": 0}
        body = {"baseline_id": tl, "candidate_id": tl, "dataset_id": dataset_id}
        bad = api.post("/drift-jobs", json=body | {"policy": {"rule": [rule | {"class": "cat"}]}})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "body.policy.rule[0].class"
        empty = api.post("/drift-jobs", json=body | {"policy": {"rule": []}})
        assert empty.status_code == 422
    policy = str(world / "inconclusive.toml")
    result = _gate(
        world,
        "--server",
        server,
        "--token",
        TOKEN,
        "--dataset-id",
        dataset_id,
        "--policy",
        policy,
        *FAST,
        data=False,
    )
    assert result.exit_code == 3, result.output
    unknown = _gate(
        world,
        *("--server", server, "--token", TOKEN, "--dataset-id", "nope", "--policy", policy),
        data=False,
    )
    assert unknown.exit_code == 2 and "(404)" in unknown.output and "nope" in unknown.output


def test_rejected_token_exits_2(world, server) -> None:
    result = _gate(world, "--server", server, "--token", "wrong", *FAST)
    assert result.exit_code == 2, result.output
    assert "refused" in result.output and "(401)" in result.output
    assert "CAMDRIFT_TOKEN" in result.output


def test_a_failed_job_exits_2_with_its_error(world, server, monkeypatch) -> None:
    import worker.runtime.jobs

    def broken(*args: Any, **kw: Any) -> Any:
        raise ValueError("the dataset cannot be read (test)")

    monkeypatch.setattr(worker.runtime.jobs, "build_audit", broken)  # the runner is in this process
    result = _gate(world, "--server", server, "--token", TOKEN, *FAST)
    assert result.exit_code == 2, result.output
    assert f"job {_job_id(result.output)} failed: the dataset cannot be read (test)" in (
        result.output
    )


def test_a_crash_exits_2_not_1(world, monkeypatch) -> None:
    def boom(*args: Any, **kw: Any) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr("service.cli.gate.default_policy", boom)
    result = _gate(world, "--local")
    assert result.exit_code == 2, result.output
    assert "the gate crashed (RuntimeError: unexpected)" in result.output


def test_a_floor_policy_gives_the_same_verdict_here_and_on_the_server(
    world, tmp_path, server
) -> None:
    """The same inputs, the same options derived from the policy: the same verdict and the
    same observed value for every check, locally and through the service."""
    local_report, remote_report = tmp_path / "local.json", tmp_path / "remote.json"
    html = tmp_path / "remote.html"
    policy = ("--policy", str(world / "floor.toml"))
    here = _gate(world, "--local", *policy, "--report", str(local_report), *FAST)
    there = _gate(
        world,
        *("--server", server, "--token", TOKEN),
        *policy,
        *("--report", str(remote_report), "--html", str(html)),
        *FAST,
    )
    assert here.exit_code == 0, here.output
    assert there.exit_code == 0, there.output
    local, remote = (json.loads(p.read_text())["verdict"] for p in (local_report, remote_report))
    assert local["verdict"] == remote["verdict"] == "pass"

    def observed(verdict: dict) -> dict:
        return {(c["method"], c["metric"], c["class"]): c["observed"] for c in verdict["rules"]}

    assert observed(remote) == pytest.approx(observed(local), abs=1e-9)
    assert len(observed(local)) == len(CLASSES) + 1
    page = html.read_text()
    assert "<html" in page and "beyond the floor" in page


def test_the_client_completes_what_a_policy_reads(world, server) -> None:
    """A script that calls the client directly (as the demo does) gets the floor and metrics
    its policy reads, from the same function ``camdrift gate`` uses."""
    from service.cli.gate import audit_on_server
    from service.client import Client
    from worker.results.gate import load_policy

    policy = load_policy(world / "floor.toml")
    options = {"methods": ["layercam"], "sample_filter": "all", "split": "all"}
    with Client(server, TOKEN) as client:
        report, _ = audit_on_server(
            client,
            world / "tl.safetensors",
            world / "ft.safetensors",
            world / "data",
            None,
            policy,
            options,
            timeout=600,
        )
    assert report["config"]["noise_floor"] is True and "ssim" in report["config"]["metrics"]
    assert report["verdict"]["verdict"] == "pass", report["verdict"]["reason"]


# --------------------------------------------------------------------------- MLflow


def test_mlflow_gets_the_verdict_every_check_and_the_files(world, tmp_path, monkeypatch) -> None:
    """Against a local MLflow store (SQLite): a new run in the named experiment, then the
    active run of a training script; the logged values equal the verdict's checks."""
    from tests.ci import require_module

    mlflow = require_module("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # artifacts under tmp_path, not ./mlruns (the SQLite store's default artifact root)
    mlflow.create_experiment("ci", artifact_location=(tmp_path / "artifacts").as_uri())
    junit, report = tmp_path / "gate.xml", tmp_path / "report.json"
    policy = ("--policy", str(world / "pass.toml"))
    files = ("--junit", str(junit), "--report", str(report))
    result = _gate(
        world, "--local", *policy, *files, "--mlflow", "--mlflow-experiment", "ci", *FAST
    )
    assert result.exit_code == 0, result.output
    client = mlflow.tracking.MlflowClient()
    experiment = client.get_experiment_by_name("ci")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
    assert run.data.tags["camdrift.verdict"] == "pass" and run.data.metrics["camdrift.gate"] == 1.0
    verdict = json.loads(report.read_text())["verdict"]
    decided = [c for c in verdict["rules"] if c.get("observed") is not None and c.get("metric")]
    assert decided
    for check in decided:
        key = f"camdrift.{check['method']}.{check['metric']}.{check['class']}.{check['stat']}"
        assert run.data.metrics[key] == pytest.approx(check["observed"]), key
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "camdrift")}
    assert logged == {"camdrift/gate.xml", "camdrift/report.json"}

    mlflow.set_experiment("ci")
    with mlflow.start_run(run_name="training") as active:
        again = _gate(world, "--local", *policy, "--mlflow", *FAST)
        assert again.exit_code == 0, again.output
    logged = client.get_run(active.info.run_id)
    assert logged.data.tags["camdrift.verdict"] == "pass"
    names = {a.path for a in client.list_artifacts(active.info.run_id, "camdrift")}
    assert names == {"camdrift/report.json"}  # the report goes along even when not asked for


def test_mlflow_options_without_the_flag_are_a_usage_error(world) -> None:
    result = _gate(world, "--local", "--mlflow-run-id", "abc", *FAST)
    assert result.exit_code == 2 and "go with --mlflow" in result.output


def test_the_ceiling_travels_with_the_gate(world, tmp_path) -> None:
    report = tmp_path / "report.json"
    policy = ("--policy", str(world / "pass.toml"))
    result = _gate(world, "--local", *policy, "--ceiling", "head", "--report", str(report), *FAST)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["config"]["ceiling"] == "head" and doc["ceiling"]["layercam"]
    bad = _gate(world, "--local", *policy, "--ceiling", "everything", *FAST)
    assert bad.exit_code == 2 and "--ceiling 'everything'" in bad.output


# --------------------------------------------------------------------------- weights to import


def test_weights_trained_elsewhere_gate_as_their_checkpoints_do(world, tmp_path, server) -> None:
    """Plain DataParallel state dicts of the two checkpoints, with --arch/--classes: imported
    here (--local) or by the server (uploaded with form fields), the verdict and every check's
    value equal the camdrift checkpoints' own."""
    import torch

    from training.checkpoints import load_checkpoint

    plain = {}
    for phase in ("tl", "ft"):
        model, _ = load_checkpoint(world / f"{phase}.safetensors")
        plain[phase] = tmp_path / f"{phase}-dataparallel.pt"
        torch.save({f"module.{k}": v for k, v in model.net.state_dict().items()}, plain[phase])
    weights = ("--arch", "tinycnn", "--classes", ",".join(CLASSES), "--input-size", "48")
    fail = ("--policy", str(world / "fail.toml"), *FAST)

    def gate_plain(*extra: str):
        files = ("--baseline", str(plain["tl"]), "--candidate", str(plain["ft"]))
        return runner.invoke(app, ["gate", *files, "--data", str(world / "data"), *extra])

    def observed(path: Path) -> list[Any]:
        return [c.get("observed") for c in json.loads(path.read_text())["verdict"]["rules"]]

    ours = _gate(world, "--local", *fail, "--report", str(tmp_path / "ours.json"))
    local = gate_plain("--local", *weights, *fail, "--report", str(tmp_path / "local.json"))
    remote = gate_plain(
        *("--server", server, "--token", TOKEN),
        *weights,
        *fail,
        "--report",
        str(tmp_path / "remote.json"),
    )
    for result in (ours, local, remote):
        assert result.exit_code == 1, result.output
    assert "baseline: imported tl-dataparallel.pt as tinycnn" in local.output
    assert "candidate: imported ft-dataparallel.pt as tinycnn (checkpoint " in remote.output
    expected = observed(tmp_path / "ours.json")
    assert observed(tmp_path / "local.json") == expected
    assert observed(tmp_path / "remote.json") == pytest.approx(expected)

    # without --arch the server says what to send; a bad field is exit 2 before any upload
    bare = gate_plain("--server", server, "--token", TOKEN, *fail)
    assert bare.exit_code == 2 and "--arch and --classes name them" in bare.output, bare.output
    typo = gate_plain("--server", "http://127.0.0.1:9", "--classes", "a,b", *fail)
    assert typo.exit_code == 2 and "--arch: name the architecture" in typo.output, typo.output
    wrong = gate_plain("--local", "--arch", "tinycnn", "--classes", "a,b", *fail)
    assert wrong.exit_code == 2 and "2 class names were given" in wrong.output, wrong.output


def test_raw_weights_carry_their_resize_and_window(world, tmp_path, monkeypatch) -> None:
    """--resize/--window with --arch reach the import (the converted checkpoints record
    them) before the audit; a bad one is exit 2 naming the flag."""
    import torch

    from training.checkpoint_format import read_metadata
    from training.checkpoints import load_checkpoint
    from worker.runtime import local_run

    model, _ = load_checkpoint(world / "tl.safetensors")
    raw = tmp_path / "tl.pt"
    torch.save(model.net.state_dict(), raw)
    seen = {}

    def audit(baseline, candidate, *args, **kw):
        seen.update(tl=read_metadata(baseline), ft=read_metadata(candidate))
        raise ValueError("stop here")

    monkeypatch.setattr(local_run, "run_audit", audit)
    weights = ("--arch", "tinycnn", "--classes", ",".join(CLASSES), "--input-size", "48")
    files = ("--baseline", str(raw), "--candidate", str(raw), "--data", str(world / "data"))
    extra = ("--resize", "letterbox", "--window", "0.1,0.9", "--local", *FAST)
    result = runner.invoke(app, ["gate", *files, *weights, *extra])
    assert result.exit_code == 2 and "stop here" in result.output, result.output
    for meta in seen.values():
        assert (meta["resize"], meta["window"]) == ("letterbox", [0.1, 0.9])
    bad = runner.invoke(app, ["gate", *files, *weights, "--window", "0.9,0.1", "--local", *FAST])
    assert bad.exit_code == 2 and "--window: 0 <= low < high <= 1" in bad.output, bad.output
