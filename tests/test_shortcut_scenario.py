"""The demo scenario with ground truth: the default policy fails a fine-tune that learned the
shortcut marker, on the marker's class, on three seeds, while both fine-tunes keep a high AUC;
it should pass the clean one (an expected failure where it does not: issue 13)."""

from __future__ import annotations

import pytest

from service.cli.demo import SHORTCUT_CLASS, SHORTCUT_CONFOUND
from training.phantoms import generate_dataset
from training.protocol import PhaseConfig, TrainConfig, finetune, pretrain, train_two_phase
from worker.engine.audit import AuditConfig
from worker.results.gate import default_policy
from worker.runtime.local_run import run_audit

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_policy_passes_clean_and_fails_shortcut(seed: int, tmp_path) -> None:
    quiet = {"progress": False, "seed": seed, "input_size": (96, 96)}
    generate_dataset(tmp_path / "source", 200, 96, seed + 1000, task="source")
    generate_dataset(tmp_path / "clean", 200, 96, seed)
    generate_dataset(
        tmp_path / "shortcut",
        200,
        96,
        seed,
        shortcut=SHORTCUT_CLASS,
        shortcut_confound=SHORTCUT_CONFOUND,
    )
    pretrain(
        tmp_path / "source",
        tmp_path / "pre.safetensors",
        TrainConfig(ft=PhaseConfig(epochs=12, lr=3e-3, patience=12), **quiet),
    )
    train_two_phase(
        tmp_path / "clean",
        tmp_path / "clean_run",
        TrainConfig(pretrained=str(tmp_path / "pre.safetensors"), **quiet),
    )
    tl = tmp_path / "clean_run" / "tl.safetensors"
    finetune(tmp_path / "shortcut", tl, tmp_path / "short_run", TrainConfig(**quiet))
    policy = default_policy()
    verdicts = {}
    for name, run in (("clean", "clean_run"), ("shortcut", "short_run")):
        report = run_audit(
            tl,
            tmp_path / run / "ft.safetensors",
            tmp_path / "shortcut",
            AuditConfig(seed=seed, sample_filter="all"),
            tmp_path / f"{name}.json",
            policy=policy,
        )
        verdicts[name] = report["verdict"]
        assert report["performance"]["candidate"]["macro_auc"] >= 0.95, name
    assert verdicts["shortcut"]["verdict"] == "fail"
    failed = [c for c in verdicts["shortcut"]["rules"] if c["passed"] is False]
    assert SHORTCUT_CLASS in {c["class"] for c in failed}, "the marker's class moved"
    assert {c["metric"] for c in failed if c["class"] == SHORTCUT_CLASS} & {"iou_top20", "pearson"}
    clean_failed = {c["class"] for c in verdicts["clean"]["rules"] if c["passed"] is False}
    assert SHORTCUT_CLASS not in clean_failed, "the clean fine-tune moved off the marker's class"
    misses = []
    others = sorted({c["class"] for c in failed} - {SHORTCUT_CLASS})
    if others:  # the clean fine-tune's own reason (issue 13: effusion drifts naturally)
        misses.append(f"shortcut fine-tune also failed on {', '.join(others)}")
    if seed == 0:
        misses += _shortcut_lies_beyond_the_floor_and_a_replica_within(tmp_path, tl, quiet)
    if verdicts["clean"]["verdict"] != "pass":
        misses.append(f"clean fine-tune: {verdicts['clean']['reason']}")
    if misses:
        # The default policy's absolute per-class thresholds, and "a reseeded replica drifts no
        # more than input noise", were fitted on seeds 0-2 of one machine; on another CPU the
        # clean fine-tune's natural drift crosses them (effusion, as issue 13 found on other
        # seeds). Reported as an expected failure, not hidden, until issue 13's calibrated
        # verdict replaces the fixed thresholds; every assertion above stays strict.
        pytest.xfail("issue 13: " + "; ".join(misses))


def _shortcut_lies_beyond_the_floor_and_a_replica_within(tmp_path, tl, quiet) -> list[str]:
    """The shortcut fine-tune drifts far beyond both floors, and beyond what a replica of the
    clean baseline (same protocol, other seed) drifts; the replica should drift no more than
    input noise. Returns the replica's misses of that last, machine-fitted expectation."""
    replica_cfg = TrainConfig(
        pretrained=str(tmp_path / "pre.safetensors"),
        ft=PhaseConfig(epochs=0),
        **{**quiet, "seed": quiet["seed"] + 7},
    )
    train_two_phase(tmp_path / "clean", tmp_path / "replica_run", replica_cfg)
    replica = tmp_path / "replica_run" / "tl.safetensors"
    cfg = AuditConfig(seed=0, sample_filter="all", noise_floor=True)
    reports = {
        name: run_audit(
            tl,
            candidate,
            tmp_path / "shortcut",
            cfg,
            tmp_path / f"floor-{name}.json",
            replica=replica,
        )
        for name, candidate in (
            ("replica", replica),
            ("shortcut", tmp_path / "short_run" / "ft.safetensors"),
        )
    }
    shortcut, twin = reports["shortcut"], reports["replica"]
    assert shortcut["models"]["replica"]["sha256"] and twin["models"]["replica"]["sha256"]
    misses = []
    for method, named in shortcut["noise_floor"].items():
        for metric in ("iou_top20", "pearson"):
            beyond = named[metric]["beyond_floor"]
            assert 0.6 <= beyond <= 1.0, ("shortcut", method, metric, beyond)
            replica_beyond = twin["noise_floor"][method][metric]["beyond_floor"]
            assert replica_beyond < beyond, ("replica drifts as far as the shortcut", method)
            if replica_beyond > 0.15:
                misses.append(f"replica {method} {metric}: {replica_beyond:.2f} beyond noise")
    for method, named in shortcut["replica_floor"].items():
        beyond = named["pearson"]["beyond_floor"]
        assert 0.6 <= beyond <= 1.0, ("shortcut beyond the replica floor", method, beyond)
    for method, named in twin["replica_floor"].items():
        # the candidate is the replica: its drift is its own replica floor, sample by sample,
        # so no more than the floor's 5% tail can lie beyond it
        entry, drift = named["pearson"], twin["summaries"][method]["pearson"]["overall"]
        assert entry["floor"]["n"] == drift["n"] > 0, (method, entry["floor"], drift)
        assert entry["floor"]["mean"] == pytest.approx(drift["mean"], abs=1e-6), method
        assert entry["floor"]["q05"] == pytest.approx(drift["q05"], abs=1e-6), method
        assert entry["beyond_floor"] <= 0.05 + 1.0 / drift["n"], (method, entry["beyond_floor"])
    return misses
