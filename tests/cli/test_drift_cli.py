"""``camdrift drift``: a whole local audit, a report that validates, clear errors (exit 2)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.builders import EVERY_SAMPLE, drift_args, tiny_audit_inputs
from training.checkpoints import model_metadata, save_checkpoint
from training.phantoms import CLASSES
from training.zoo import create_model
from worker.catalog import DEFAULT_METRICS as METRICS  # computed when a job names none
from worker.results.report_schema import validate_report

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_audit_inputs(tmp_path_factory.mktemp("drift"))


def _drift(world, *extra: str):
    return runner.invoke(
        app,
        drift_args(
            world,
            *extra,
        ),
    )


def test_report_validates_with_counts_aucs_and_cis(world) -> None:
    out = world / "report.json"
    result = _drift(
        world,
        "--out",
        str(out),
        *EVERY_SAMPLE,
        "--methods",
        "layercam,gradcam++,gradcam",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    validate_report(report)
    assert report["subsets"]["evaluated"] == 30 and report["subsets"]["included"] == 30
    for role in ("baseline", "candidate"):
        assert 0.0 <= report["performance"][role]["macro_auc"] <= 1.0
    for method in ("layercam", "gradcam++", "gradcam"):
        for metric in METRICS:
            overall = report["summaries"][method][metric]["overall"]
            if overall["n"] >= 2:
                assert overall["ci95_low"] <= overall["mean"] <= overall["ci95_high"]
            assert set(report["summaries"][method][metric]) == {"overall", *CLASSES}
    rows = (world / "report.samples.jsonl").read_text().splitlines()
    assert len(rows) == 30 and (world / "report.maps").is_dir()
    computed = report["config"]["metrics"]  # the defaults, plus region metrics: masks exist
    assert set(METRICS) <= set(computed) and len(computed) > len(METRICS)
    assert len(report["method_comparisons"]) == 3 * len(computed)
    assert "attribution drift" in result.output


def test_true_positive_filter_keeps_only_agreeing_correct_samples(world) -> None:
    out = world / "tp.json"
    assert _drift(world, "--out", str(out), "--split", "all").exit_code == 0
    report = json.loads(out.read_text())
    assert report["subsets"]["included"] == report["subsets"]["true_positive"]
    for line in (world / "tp.samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        agrees = row["label"] == row["pred_baseline"] == row["pred_candidate"]
        assert row["included"] == agrees


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "nope"], "unknown 'nope'"),
        (["--metrics", "iou_top0"], "iou_top0"),
        (["--sample-filter", "some"], "sample_filter"),
        (["--target-layer", "net.nothing"], "not a module"),
        (["--split", "holdout"], "no samples in split"),
    ],
)
def test_bad_input_exits_2_with_a_message(world, args, message) -> None:
    result = _drift(world, "--out", str(world / "bad.json"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (world / "bad.json").exists()


def test_missing_checkpoint_and_class_mismatch_exit_2(world, tmp_path) -> None:
    result = runner.invoke(
        app,
        [
            "drift",
            "--baseline",
            str(tmp_path / "none.safetensors"),
            "--candidate",
            str(world / "ft.safetensors"),
            "--data",
            str(world / "data"),
        ],
    )
    assert result.exit_code == 2 and "no such checkpoint" in result.output
    model = create_model("tinycnn", 3)
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, model, model_metadata(model, ["a", "b", "c"]))
    result = runner.invoke(
        app,
        [
            "drift",
            "--baseline",
            str(world / "tl.safetensors"),
            "--candidate",
            str(other),
            "--data",
            str(world / "data"),
        ],
    )
    assert result.exit_code == 2 and "class sets do not match" in result.output


def test_via_expands_folders_and_globs_in_natural_order(world, tmp_path) -> None:
    from service.cli.sequence import expand_sequence

    folder = tmp_path / "epochs"
    folder.mkdir()
    for name in ("ft_epoch10", "ft_epoch2", "tl_epoch1"):
        (folder / f"{name}.safetensors").write_bytes(b"")
    (folder / "notes.txt").write_text("")
    glob = expand_sequence([str(folder / "ft_epoch*.safetensors")])
    assert [p.name for p in glob] == ["ft_epoch2.safetensors", "ft_epoch10.safetensors"]
    whole = expand_sequence([str(folder), str(world / "tl.safetensors")])
    assert [p.stem for p in whole] == ["ft_epoch2", "ft_epoch10", "tl_epoch1", "tl"]


def test_drift_along_a_sequence_prints_and_writes_the_trajectory(world) -> None:
    out = world / "trajectory.json"
    result = _drift(
        world, "--out", str(out), "--sample-filter", "all", "--split", "all",
        "--via", str(world / "tl.safetensors"), "--via", str(world / "ft.safetensors"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "trajectory" in result.output
    section = json.loads(out.read_text())["trajectory"]
    assert section["steps"] == 3
    pearson = section["series"]["layercam"]["pearson"]["from_first"]
    assert pearson[0]["mean"] == pytest.approx(1.0)  # the first step is the baseline itself
    assert pearson[2]["mean"] == pytest.approx(pearson[1]["mean"])  # FT, then FT again


@pytest.mark.parametrize("via", ["missing.safetensors", "nothing*.safetensors"])
def test_via_that_names_nothing_exits_2(world, tmp_path, via) -> None:
    result = _drift(world, "--out", str(tmp_path / "r.json"), "--via", str(tmp_path / via))
    assert result.exit_code == 2 and "--via" in result.output
    assert not (tmp_path / "r.json").exists()


# --------------------------------------------------------------------------- --policy

# 6 samples a class: a class minimum of 6 decides. The beyond_floor rule needs the noise floor
# (not asked for on the command line), the pearson rule cannot hold (r <= 1).
POLICY = """\
min_samples = 10
min_class_samples = 6
[[rule]]
name = "within the noise"
method = "layercam"
metric = "pearson"
stat = "beyond_floor"
class = "*"
op = "<="
value = 1.0
[[rule]]
name = "impossible pattern"
method = "*"
metric = "pearson"
stat = "mean"
op = ">"
value = 1.0
"""


def test_drift_with_a_policy_stores_and_prints_the_verdict(world, tmp_path) -> None:
    policy, out, html = tmp_path / "p.toml", tmp_path / "r.json", tmp_path / "r.html"
    policy.write_text(POLICY)
    result = _drift(
        world, "--out", str(out), *EVERY_SAMPLE, "--policy", str(policy), "--html", str(html)
    )
    assert result.exit_code == 0, result.output  # drift audits; `camdrift gate` exits by verdict
    report = json.loads(out.read_text())
    verdict = report["verdict"]
    assert verdict["verdict"] == "fail" and report["config"]["noise_floor"] is True
    assert [c["passed"] for c in verdict["rules"]] == [False] * 2 + [True] * len(CLASSES)
    shares = report["noise_floor"]["layercam"]["pearson"]["beyond_floor_per_class"]
    for check in verdict["rules"][2:]:
        assert check["observed"] == pytest.approx(shares[check["class"]])
    text = " ".join(result.output.split())
    assert "camdrift gate: FAIL" in text and "2 of 7 checks failed" in text
    assert "impossible pattern" in html.read_text()


def test_drift_with_a_policy_that_does_not_fit_exits_2_before_the_audit(
    world, tmp_path, monkeypatch
) -> None:
    import worker.runtime.local_run

    def no_audit(*args, **kw):
        raise AssertionError("the audit ran")

    monkeypatch.setattr(worker.runtime.local_run, "run_audit", no_audit)
    policy, out = tmp_path / "p.toml", tmp_path / "r.json"
    policy.write_text(POLICY.replace('class = "*"', 'class = "Covid"'))
    result = _drift(world, "--out", str(out), "--methods", "gradcam", "--policy", str(policy))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "policy rule 1 (within the noise): method 'layercam' is not computed" in text
    assert "class 'Covid' is not a class of the checkpoints (did you mean 'covid'?)" in text
    assert not out.exists()
    broken = tmp_path / "broken.toml"
    broken.write_text("min_samples = -1\n[[rule]]\n")
    result = _drift(world, "--out", str(out), "--policy", str(broken))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "bad policy: " in text and "broken.toml line 1: min_samples -1" in text


# --------------------------------------------------------------------------- options, config


def test_shared_option_defaults_match_the_configs_they_fill() -> None:
    """The CLI's defaults are the job's, the engine's and the training protocol's."""
    from service.cli import options
    from training.protocol import PhaseConfig, TrainConfig
    from worker.catalog import DEFAULT_METHODS
    from worker.engine.audit import AuditConfig
    from worker.job_config import GATE_SAMPLE_FILTER

    audit = AuditConfig()
    assert options.csv(options.METHODS_DEFAULT) == list(DEFAULT_METHODS) == audit.methods
    assert audit.sample_filter == options.SAMPLE_FILTER_DEFAULT
    assert options.GATE_SAMPLE_FILTER_DEFAULT == GATE_SAMPLE_FILTER == "all"
    assert audit.split == options.SPLIT_DEFAULT and audit.seed == options.SEED_DEFAULT
    assert audit.max_samples == options.MAX_SAMPLES_DEFAULT
    assert audit.batch_size == options.BATCH_SIZE_DEFAULT
    assert options.DEVICE_DEFAULT == audit.device == TrainConfig().device
    assert PhaseConfig().batch_size == options.TRAIN_BATCH_SIZE_DEFAULT
    assert TrainConfig().seed == options.TRAIN_SEED_DEFAULT
    assert TrainConfig().arch == options.ARCH_DEFAULT


def test_config_prints_the_settings_with_secrets_masked(monkeypatch) -> None:
    monkeypatch.setenv("CAMDRIFT_API_TOKENS", "s3cret,other")
    monkeypatch.setenv("CAMDRIFT_DATABASE_URL", "postgresql://camdrift:pw@db:5432/camdrift")
    monkeypatch.setenv("CAMDRIFT_SHARD_SIZE", "7")
    env = runner.invoke(app, ["config", "--format", "env"])
    assert env.exit_code == 0, env.output
    lines = dict(line.split("=", 1) for line in env.stdout.splitlines())
    assert lines["CAMDRIFT_SHARD_SIZE"] == "7" and lines["CAMDRIFT_API_TOKENS"] == "***,***"
    assert lines["CAMDRIFT_DATABASE_URL"] == "postgresql://camdrift:***@db:5432/camdrift"
    assert "s3cret" not in env.output and "pw@" not in env.output
    doc = json.loads(runner.invoke(app, ["config", "--format", "json"]).stdout)
    assert doc["shard_size"] == 7 and doc["api_tokens"] == ["***", "***"]
    table = runner.invoke(app, ["config"])
    assert table.exit_code == 0 and "CAMDRIFT_SHARD_SIZE" in table.output
    assert "s3cret" not in table.output


def test_config_names_an_invalid_variable_and_exits_2(monkeypatch) -> None:
    monkeypatch.setenv("CAMDRIFT_SHARD_SIZE", "many")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2, result.output
    assert "CAMDRIFT_SHARD_SIZE='many'" in result.output and "integer" in result.output
