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
FAST = ("--split", "all", "--sample-filter", "all", "--methods", "layercam")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tiny_audit_inputs(tmp_path_factory.mktemp("gate"))
    for name, text in (
        ("pass", PASS_POLICY),
        ("fail", FAIL_POLICY),
        ("inconclusive", INCONCLUSIVE_POLICY),
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
    junit = tmp_path / "gate.xml"
    result = _gate(world, "--local", "--junit", str(junit), *FAST)
    assert result.exit_code in (0, 1, 3), result.output
    cases = _junit(junit).findall("testcase")
    assert len(cases) == 1 + 3 * len(CLASSES)  # three rules, every class, one method
    assert "overlap held" in result.output and "min_samples >= 30" in result.output


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


# --------------------------------------------------------------------------- errors (exit 2)


def test_bad_policy_file_exits_2_naming_the_line(world, tmp_path) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text(PASS_POLICY.replace('metric = "displacement"', 'metric = "iou"'))
    result = _gate(world, "--local", "--policy", str(bad))
    assert result.exit_code == 2, result.output
    assert "line 12: rule 2: metric 'iou' is unknown" in result.output
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
        (("--data", "{data}", "--methods", "gradcam"), "needs method 'layercam'"),
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
