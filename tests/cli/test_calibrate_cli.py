"""``camdrift calibrate`` end to end on tiny tinycnn checkpoints: the policy it writes loads and
round-trips through ``camdrift gate --local`` (a reference-like candidate passes, the randomised
model fails), ``--from-reports`` reproduces it without auditing, errors are one line and exit 2;
and ``training.randomise``: the randomised checkpoint loads, differs from its source only in the
re-initialised layers, and drifts further from the baseline than every reference does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from service.cli import app
from tests.builders import seeded_model
from training.checkpoint_format import sha256_file
from training.checkpoints import load_checkpoint, model_metadata, save_checkpoint
from training.phantoms import CLASSES, generate_dataset
from training.randomise import parse_layers, randomise, randomise_checkpoint, top_layers
from training.zoo import create_model
from worker.catalog import metric_info
from worker.results.gate import load_policy

runner = CliRunner()
SIZE = 48
K = 4  # reference fine-tunes
AUDIT = ("--methods", "layercam", "--split", "all")  # every sample, the gate's filter (all)
METRICS = ("iou_top20", "pearson", "displacement")


def _save(model, path: Path, phase: str) -> None:
    meta = model_metadata(model, list(CLASSES), phase=phase, input_size=[SIZE, SIZE])
    save_checkpoint(path, model, meta)


def _fine_tune_like(base, seed: int, scale: float = 0.1):
    """The baseline with every parameter moved by ``scale`` x its own sd of seeded noise: a
    stand-in for a reseeded fine-tune of an accepted recipe (same data, small weight changes)."""
    model = create_model("tinycnn", len(CLASSES))
    model.load_state_dict(base.state_dict())
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calibrate")
    generate_dataset(root / "data", per_class=6, size=SIZE, seed=1)
    torch.manual_seed(0)
    base = create_model("tinycnn", len(CLASSES)).eval()
    _save(base, root / "tl.safetensors", "tl")
    for seed in range(1, K + 2):  # K references and one more good fine-tune, unseen
        _save(_fine_tune_like(base, seed), root / f"ft{seed}.safetensors", "ft")
    return root


def _calibrate_args(world: Path, out: Path, *extra: str) -> list[str]:
    args = ["calibrate", "--baseline", str(world / "tl.safetensors"), "--data", str(world / "data")]
    for seed in range(1, K + 1):
        args += ["--reference", str(world / f"ft{seed}.safetensors")]
    return [*args, "--out", str(out), *AUDIT, *extra]


@pytest.fixture(scope="module")
def calibrated(world) -> Path:
    out = world / "calibrated.toml"
    result = runner.invoke(app, _calibrate_args(world, out, "--ceiling-layers", "head+1"))
    assert result.exit_code == 0, result.output
    assert f"policy: {out}" in result.output
    return out


def _gate(world: Path, policy: Path, candidate: Path, *extra: str):
    return runner.invoke(
        app,
        [
            "gate",
            "--local",
            "--baseline",
            str(world / "tl.safetensors"),
            "--candidate",
            str(candidate),
            "--data",
            str(world / "data"),
            "--policy",
            str(policy),
            *AUDIT,
            *extra,
        ],
    )


def _class_means(report: Path, metric: str) -> dict[str, float]:
    summaries = json.loads(report.read_text())["summaries"]["layercam"][metric]
    return {name: summaries[name]["mean"] for name in ("overall", *CLASSES)}


# --------------------------------------------------------------------------- calibrate -> gate


def test_policy_has_one_explicit_rule_per_class_and_metric(calibrated) -> None:
    policy = load_policy(calibrated)
    assert policy.min_samples == 30  # 6 phantoms x 5 classes, every sample included
    assert len(policy.rule) == len(CLASSES) * len(METRICS)
    assert {(r.class_, r.method, r.metric) for r in policy.rule} == {
        (c, "layercam", m) for c in CLASSES for m in METRICS
    }
    for rule in policy.rule:
        assert rule.stat == "mean" and rule.name and "calibrated" in rule.name
        assert rule.op == (">=" if metric_info(rule.metric).worse.value == "lower" else "<=")
    text = calibrated.read_text()
    assert f"K = {K} references" in text and "m = 15 checks" in text and "alpha = 0.05" in text
    assert "made by: camdrift calibrate --baseline" in text
    assert "threshold at" in text and "of floor -> ceiling" in text
    work = calibrated.with_name("calibrated.calibration")
    assert sorted(p.name for p in work.glob("*.json")) == [
        "ceiling.json",
        *(f"reference-{i}.json" for i in range(1, K + 1)),
    ]


def test_gate_round_trip_passes_a_reference_like_candidate(world, calibrated) -> None:
    result = _gate(world, calibrated, world / f"ft{K + 1}.safetensors")
    assert result.exit_code == 0, result.output
    assert "gate pass" in result.output and "all 15 checks passed" in result.output


def test_gate_round_trip_fails_the_randomised_model(world, calibrated) -> None:
    randomised = calibrated.with_name("calibrated.calibration") / "randomised-head-1.safetensors"
    result = _gate(world, calibrated, randomised)
    assert result.exit_code == 1, result.output
    assert "gate fail" in result.output


def test_the_gate_sees_the_class_means_the_calibration_saw(world, calibrated, tmp_path) -> None:
    """A reference as the candidate: the gate's observed values equal its audit's class means
    (and it passes: no reference lies beyond its own prediction bound)."""
    report = tmp_path / "gate.json"
    result = _gate(world, calibrated, world / "ft1.safetensors", "--report", str(report))
    assert result.exit_code == 0, result.output
    checks = json.loads(report.read_text())["verdict"]["rules"]
    reference = calibrated.with_name("calibrated.calibration") / "reference-1.json"
    for metric in METRICS:
        means = _class_means(reference, metric)
        for check in (c for c in checks if c["metric"] == metric):
            assert check["observed"] == pytest.approx(means[check["class"]], abs=1e-12)


def test_from_reports_reproduces_the_policy_without_auditing(world, calibrated, tmp_path) -> None:
    work = calibrated.with_name("calibrated.calibration")
    out = tmp_path / "again.toml"
    reports = [str(work / f"reference-{i}.json") for i in range(1, K + 1)]
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--from-reports",
            *reports,
            "--out",
            str(out),
            "--ceiling-report",
            str(work / "ceiling.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "auditing" not in result.output
    first = [(r.class_, r.metric, r.op, r.value) for r in load_policy(calibrated).rule]
    again = [(r.class_, r.metric, r.op, r.value) for r in load_policy(out).rule]
    assert again == first
    assert "made by: camdrift calibrate --from-reports" in out.read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--alpha", "1.5"), "--alpha must lie in (0, 1)"),
        (("--metrics", "iou_top20,nope"), "unknown 'nope'"),
        (("--ceiling-layers", "tail"), "use head or head+N"),
        (("--out", "policy.json"), "name a .toml file"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(world, tmp_path, extra, message) -> None:
    args = _calibrate_args(world, tmp_path / "p.toml")
    if extra[0] == "--out":
        args[args.index("--out") + 1] = str(tmp_path / extra[1])
        extra = ()
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_missing_inputs_are_one_line_and_exit_2(world, tmp_path) -> None:
    two = [
        "calibrate",
        "--baseline",
        str(world / "tl.safetensors"),
        "--data",
        str(world / "data"),
        "--reference",
        str(world / "ft1.safetensors"),
        "--reference",
        str(world / "ft2.safetensors"),
        "--out",
        str(tmp_path / "p.toml"),
    ]
    cases = [
        (two, "give at least 3 --reference"),
        ([*two, "--reference", str(tmp_path / "none.safetensors")], "no such checkpoint file"),
        (["calibrate", "--from-reports", str(tmp_path / "a.json")], "at least 3 reference"),
        (
            ["calibrate", "--from-reports", *(str(tmp_path / f"{i}.json") for i in range(3))],
            "no such report",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "p.toml").exists()


def test_reports_of_another_baseline_are_refused(world, calibrated, tmp_path) -> None:
    work = calibrated.with_name("calibrated.calibration")
    other = tmp_path / "other.json"
    doc = json.loads((work / "reference-2.json").read_text())
    doc["models"]["baseline"]["sha256"] = "0" * 64
    other.write_text(json.dumps(doc))
    (tmp_path / "other.samples.jsonl").write_text((work / "reference-2.samples.jsonl").read_text())
    reports = [str(work / "reference-1.json"), str(other), str(work / "reference-3.json")]
    result = runner.invoke(
        app, ["calibrate", "--from-reports", *reports, "--out", str(tmp_path / "p.toml")]
    )
    assert result.exit_code == 2, result.output
    assert "baseline" in result.output and "differs" in result.output


# --------------------------------------------------------------------------- the ceiling


def test_randomised_checkpoint_differs_only_in_the_reinitialised_layers(world, tmp_path) -> None:
    source = world / "tl.safetensors"
    out = tmp_path / "random.safetensors"
    meta = randomise_checkpoint(source, out, "head+1", seed=3)
    assert meta["randomised"] == {"layers": "head+1", "modules": ["fc", "features.21"], "seed": 3}
    model, loaded_meta = load_checkpoint(out)
    assert loaded_meta["parent_sha256"] == sha256_file(source)
    assert loaded_meta["sha256"] == sha256_file(out) != sha256_file(source)
    before = load_checkpoint(source)[0].net.state_dict()
    after = model.net.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias", "features.21.weight"}
    # seeded: the same seed writes the same weights, another seed others
    again = tmp_path / "again.safetensors"
    randomise_checkpoint(source, again, "head+1", seed=3)
    assert all(torch.equal(after[k], load_checkpoint(again)[0].net.state_dict()[k]) for k in after)
    randomise_checkpoint(source, again, "head+1", seed=4)
    assert not torch.equal(
        after["fc.weight"], load_checkpoint(again)[0].net.state_dict()["fc.weight"]
    )


@pytest.mark.parametrize("arch", ["tinycnn", "resnetv2_small", "inception_small"])
def test_randomise_counts_weight_layers_from_the_top(arch: str) -> None:
    model = seeded_model(arch, 0)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    names = randomise(model, blocks=2, seed=0)
    assert len(names) == 3 and names == top_layers(model, 2)
    owned = {f"{n}.{p}" for n in names for p, _ in model.net.get_submodule(n).named_parameters()}
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, before[key]) == (key not in owned), key


def test_layers_spec() -> None:
    assert parse_layers("head") == 0 and parse_layers("head+3") == 3
    for bad in ("", "head+0", "top", "head+x"):
        with pytest.raises(ValueError, match="head"):
            parse_layers(bad)
    with pytest.raises(ValueError, match="weight layers below its head"):
        top_layers(seeded_model("tinycnn", 0), 99)


def test_ceiling_drifts_further_than_every_reference(calibrated) -> None:
    """Overall for every metric, and per class for the overlap and the pattern. (Per class the
    centroid barely moves under a new head on these random-backbone phantoms: the scale then
    says "no separation" for that check, see the policy comments.)"""
    work = calibrated.with_name("calibrated.calibration")
    for metric in METRICS:
        worse = metric_info(metric).worse.value
        ceiling = _class_means(work / "ceiling.json", metric)
        refs = [_class_means(work / f"reference-{i}.json", metric) for i in range(1, K + 1)]
        names = ("overall", *CLASSES) if worse == "lower" else ("overall",)
        for name in names:
            values = [r[name] for r in refs]
            if worse == "lower":
                assert ceiling[name] < min(values), (metric, name, ceiling[name], values)
            else:
                assert ceiling[name] > max(values), (metric, name, ceiling[name], values)
