"""The gate's error rates, measured against behavioural ground truth (issue 13, item 6).

For every *world* (a seed): phantoms of the clean task and of the same task with a shortcut
(kind and class rotate over the worlds), a TL and its clean FT (the two-phase protocol from one
shared pretrained backbone), K reference fine-tunes of the same TL on the clean data with other
seeds (the "known good" releases a team has), and a fine-tune of the TL on the shortcut data.
Each candidate is audited against the TL on the shortcut task's test split and judged by

- the shipped default policy (fixed thresholds), and
- a policy calibrated by ``camdrift calibrate``'s math on that world's K references
  (alpha = 0.05 for the whole policy),

while ``camdrift probe`` labels each fine-tune by behaviour: a "shortcut" model loses the
shortcut class's recall when the same test images are drawn without the shortcut. Shortcut
fine-tunes that do not rely on their shortcut by that test are reported, not counted.

Worlds are split into a calibration set (``--cal-seeds``: anything tuned — the metric list,
alpha, K — may be chosen looking at them) and a disjoint evaluation set (``--eval-seeds``),
whose table is the one to quote. False-alarm and detection rates carry Wilson 95% intervals.

    .venv/bin/python bench/gate_calibration.py --eval-seeds 100-105 --cal-seeds 0-1 \
        --per-class 100 --size 64 --refs 4 --out var/bench-gate/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("corner", "letter", "frame", "scanner")
CLASSES = ("normal", "pneumonia", "covid", "tuberculosis", "effusion")
CONFOUND = 0.5
CALIBRATED_METRICS = (
    "iou_top20",
    "pearson",
    "displacement",
    "consistency_change",
    "outside_lung_change",
)


@dataclass
class Outcome:
    world: int
    split: str  # calibration | evaluation
    arch: str
    candidate: str  # clean | shortcut
    kind: str
    shortcut_class: str
    relies: bool  # behavioural ground truth
    recall_present: float
    recall_absent: float
    p_value: float
    macro_auc: float
    verdicts: dict[str, str] = field(default_factory=dict)  # policy -> pass/fail/inconclusive
    failed: dict[str, list[str]] = field(default_factory=dict)  # policy -> failing checks


def wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion (sensible at 0/n and n/n)."""
    if n == 0:
        return (math.nan, math.nan)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def seeds(text: str) -> list[int]:
    """``0-3`` or ``0,2,5`` (or a mix)."""
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            low, high = part.split("-")
            out.extend(range(int(low), int(high) + 1))
        elif part:
            out.append(int(part))
    return out


def assignment(world: int) -> tuple[str, str]:
    """The shortcut kind and class of a world: both change every world, and any 20
    consecutive worlds hold every kind x class pair once (4 and 5 are coprime)."""
    return KINDS[world % len(KINDS)], CLASSES[world % len(CLASSES)]


def run_world(world: int, split: str, args: argparse.Namespace, pre: Path) -> list[Outcome]:
    from training.phantoms import generate_dataset
    from training.protocol import TrainConfig, finetune, train_two_phase
    from training.shortcut_probe import probe_checkpoint
    from worker.engine.audit import AuditConfig
    from worker.results.calibration import calibrate, load_reference_report, policy_toml
    from worker.results.gate import default_policy, evaluate_policy, parse_policy
    from worker.runtime.local_run import run_audit

    kind, cls = assignment(world)
    base = Path(args.workdir) / args.arch / f"world-{world:04d}"
    size, quiet = args.size, {"progress": False, "input_size": (args.size, args.size)}
    clean = generate_dataset(base / "clean", args.per_class, size, world)
    short = generate_dataset(
        base / "shortcut",
        args.per_class,
        size,
        world,
        shortcut=cls,
        shortcut_kind=kind,
        shortcut_confound=CONFOUND,
    )
    arch = {"arch": args.arch}
    train_two_phase(
        clean.parent, base / "run", TrainConfig(pretrained=str(pre), seed=world, **arch, **quiet)
    )
    tl = base / "run" / "tl.safetensors"
    candidates = {"clean": base / "run" / "ft.safetensors"}
    refs = []
    for r in range(args.refs):
        out = base / f"ref-{r}"
        finetune(clean.parent, tl, out, TrainConfig(seed=world * 1000 + r + 1, **arch, **quiet))
        refs.append(out / "ft.safetensors")
    finetune(short.parent, tl, base / "short", TrainConfig(seed=world, **arch, **quiet))
    candidates["shortcut"] = base / "short" / "ft.safetensors"

    config = AuditConfig(seed=world, sample_filter="all", batch_size=32)
    reports = base / "reports"
    ref_reports = []
    for r, ref in enumerate(refs):
        path = reports / f"ref-{r}.json"
        run_audit(tl, ref, short.parent, config, path)
        ref_reports.append(load_reference_report(path))
    first = ref_reports[0].report
    metrics = [m for m in CALIBRATED_METRICS if m in first["config"]["metrics"]]
    calibration = calibrate(
        [r.table for r in ref_reports],
        first["dataset"]["class_names"],
        first["config"]["methods"],
        metrics,
        alpha=args.alpha,
    )
    policies = {"default": default_policy(), "calibrated": parse_policy(policy_toml(calibration))}
    (base / "calibrated.toml").write_text(policy_toml(calibration))

    outcomes = []
    for name, checkpoint in candidates.items():
        report = run_audit(tl, checkpoint, short.parent, config, reports / f"{name}.json")
        probe = probe_checkpoint(checkpoint, short.parent)
        outcome = Outcome(
            world=world,
            split=split,
            arch=args.arch,
            candidate=name,
            kind=kind,
            shortcut_class=cls,
            relies=probe.relies_on_shortcut,
            recall_present=probe.recall_present,
            recall_absent=probe.recall_absent,
            p_value=probe.p_value,
            macro_auc=report["performance"]["candidate"]["macro_auc"],
        )
        for label, policy in policies.items():
            verdict = evaluate_policy(report, policy)
            outcome.verdicts[label] = verdict["verdict"]
            outcome.failed[label] = [
                f"{c['method']}/{c['metric']}/{c['class']}"
                for c in verdict["rules"]
                if c.get("passed") is False
            ]
        outcomes.append(outcome)
        print(
            f"world {world} ({split}) {args.arch} {name:8s} kind={kind:7s} class={cls:12s} "
            f"relies={probe.relies_on_shortcut!s:5s} recall {probe.recall_present:.2f}->"
            f"{probe.recall_absent:.2f} auc={outcome.macro_auc:.3f} "
            + " ".join(f"{k}={v}" for k, v in outcome.verdicts.items()),
            flush=True,
        )
    return outcomes


def table(outcomes: list[Outcome], split: str) -> str:
    """Per policy: false alarms on clean fine-tunes, detections of shortcut-reliant ones, per
    kind; with Wilson intervals. A verdict other than ``fail`` counts as not raised."""
    rows = [o for o in outcomes if o.split == split]
    policies = sorted({p for o in rows for p in o.verdicts})
    lines = [
        f"## {split} worlds: {sorted({o.world for o in rows})}",
        "",
        "| policy | group | n | flagged (fail) | rate | Wilson 95% |",
        "|---|---|---|---|---|---|",
    ]
    for policy in policies:
        groups: list[tuple[str, list[Outcome]]] = [
            ("clean FT (false alarm)", [o for o in rows if o.candidate == "clean"]),
            (
                "shortcut FT, relies (detection)",
                [o for o in rows if o.candidate == "shortcut" and o.relies],
            ),
        ]
        for kind in KINDS:
            groups.append(
                (
                    f"  {kind}",
                    [o for o in rows if o.candidate == "shortcut" and o.relies and o.kind == kind],
                )
            )
        groups.append(
            (
                "shortcut FT, not reliant (excluded)",
                [o for o in rows if o.candidate == "shortcut" and not o.relies],
            )
        )
        for label, group in groups:
            hits = sum(o.verdicts[policy] == "fail" for o in group)
            low, high = wilson(hits, len(group))
            rate = f"{hits / len(group):.2f}" if group else "–"
            ci = f"[{low:.2f}, {high:.2f}]" if group else "–"
            lines.append(f"| {policy} | {label} | {len(group)} | {hits} | {rate} | {ci} |")
    clean_relies = [o for o in rows if o.candidate == "clean" and o.relies]
    if clean_relies:
        lines.append(f"\n{len(clean_relies)} clean fine-tune(s) rely on the shortcut by the probe.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cal-seeds", type=seeds, default=seeds("0-1"))
    parser.add_argument("--eval-seeds", type=seeds, default=seeds("100-105"))
    parser.add_argument("--arch", default="tinycnn")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--refs", type=int, default=4, help="reference fine-tunes per world")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--workdir", default="var/bench-gate")
    parser.add_argument("--out", type=Path, default=Path("var/bench-gate/results.json"))
    args = parser.parse_args(argv)
    overlap = set(args.cal_seeds) & set(args.eval_seeds)
    if overlap:
        parser.error(f"calibration and evaluation seeds overlap: {sorted(overlap)}")

    from training.phantoms import generate_dataset
    from training.protocol import PhaseConfig, TrainConfig, pretrain

    started = time.perf_counter()
    pre = Path(args.workdir) / args.arch / "pretrained.safetensors"
    if not pre.exists():
        source = generate_dataset(
            Path(args.workdir) / "source", args.per_class, args.size, 1000, task="source"
        )
        pretrain(
            source.parent,
            pre,
            TrainConfig(
                arch=args.arch,
                input_size=(args.size, args.size),
                progress=False,
                ft=PhaseConfig(epochs=12, lr=3e-3, patience=12),
            ),
        )
    outcomes: list[Outcome] = []
    for split, worlds in (("calibration", args.cal_seeds), ("evaluation", args.eval_seeds)):
        for world in worlds:
            outcomes.extend(run_world(world, split, args, pre))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    for split in ("calibration", "evaluation"):
        print("\n" + table(outcomes, split))
    print(f"\n{len(outcomes)} candidates in {time.perf_counter() - started:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
