"""The demo scenario with ground truth: the default policy (chosen by measurement on the
benchmark's calibration worlds, docs/gate-calibration.md) passes the clean fine-tune and fails
the one that learned the shortcut marker, on the marker's class, while both keep a high AUC;
the behavioural probe agrees. Seed 0 is the demo's world (the benchmark's world 0, a
calibration world); other seeds, kinds and classes are the benchmark's job, not this test's."""

from __future__ import annotations

import pytest

from service.cli.demo import SHORTCUT_CLASS, SHORTCUT_CONFOUND
from training.phantoms import generate_dataset
from training.protocol import PhaseConfig, TrainConfig, finetune, pretrain, train_two_phase
from training.shortcut_probe import probe_checkpoint
from worker.engine.audit import AuditConfig
from worker.results.gate import default_policy
from worker.runtime.local_run import run_audit

pytestmark = pytest.mark.slow


def test_default_policy_passes_clean_and_fails_shortcut(tmp_path) -> None:
    seed = 0
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
    assert {c["class"] for c in failed} == {SHORTCUT_CLASS}, "only the marker's class moved"
    assert verdicts["clean"]["verdict"] == "pass", verdicts["clean"]["reason"]
    # the ground truth by behaviour: only the shortcut fine-tune loses the class without it
    short = probe_checkpoint(tmp_path / "short_run" / "ft.safetensors", tmp_path / "shortcut")
    clean = probe_checkpoint(tmp_path / "clean_run" / "ft.safetensors", tmp_path / "shortcut")
    assert short.relies_on_shortcut and short.recall_present - short.recall_absent >= 0.5
    assert not clean.relies_on_shortcut
    misses = _shortcut_lies_beyond_the_floor_and_a_replica_within(tmp_path, tl, quiet)
    if misses:
        # "a reseeded replica drifts no more than input noise" was fitted on one machine; the
        # assertions above and inside stay strict, this one is reported, not hidden
        pytest.xfail("replica beyond input noise: " + "; ".join(misses))


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
