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

    OMP_NUM_THREADS=1 .venv/bin/python bench/gate_calibration.py --threads 1 --arch tinycnn \
        --cal-seeds 0-3 --eval-seeds 100-107 --per-class 200 --size 96 --refs 6 \
        --out var/bench-gate/tinycnn.json
    .venv/bin/python bench/gate_calibration.py --judge var/bench-gate/*.json [--fit-default F]

(docs/gate-calibration.md: the runs behind the shipped default and its measured error rates).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

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


# what a default policy (no references, any data) may use: no region metrics, which need masks
DEFAULT_CANDIDATES = (
    "iou_top20",
    "pearson",
    "spearman",
    "displacement",
    "peak_displacement",
    "concentration_change",
    "entropy_change",
    "consistency_change",
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
    report: str = ""  # the audit's report.json (``--judge`` reads it again)
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
    from worker.results.gate import default_policy, parse_policy
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
            report=str(reports / f"{name}.json"),
        )
        judge(outcome, report, policies)
        outcomes.append(outcome)
        print(
            f"world {world} ({split}) {args.arch} {name:8s} kind={kind:7s} class={cls:12s} "
            f"relies={probe.relies_on_shortcut!s:5s} recall {probe.recall_present:.2f}->"
            f"{probe.recall_absent:.2f} auc={outcome.macro_auc:.3f} "
            + " ".join(f"{k}={v}" for k, v in outcome.verdicts.items()),
            flush=True,
        )
    return outcomes


def judge(outcome: Outcome, report: dict, policies: dict) -> None:
    """Record each policy's verdict on ``report`` and the checks that failed."""
    from worker.results.gate import evaluate_policy

    for label, policy in policies.items():
        verdict = evaluate_policy(report, policy)
        outcome.verdicts[label] = verdict["verdict"]
        outcome.failed[label] = [
            f"{c['method']}/{c['metric']}/{c['class']}"
            for c in verdict["rules"]
            if c.get("passed") is False
        ]


def rejudge(outcomes: list[Outcome], extra: dict[str, Path]) -> list[Outcome]:
    """Judge stored reports again: the shipped default, each world's calibrated policy, and
    every ``--policy name=file`` (a policy chosen on the calibration worlds, say). The
    reference fine-tunes are clean fine-tunes too: they come back as ``reference`` outcomes,
    judged by the fixed policies only (the calibrated one was fitted on them)."""
    from worker.results.gate import default_policy, load_policy

    fixed = {"default": default_policy()} | {k: load_policy(v) for k, v in extra.items()}
    references = []
    for outcome in outcomes:
        path = Path(outcome.report)
        report = json.loads(path.read_text())
        policies = dict(fixed)
        calibrated = path.parent.parent / "calibrated.toml"
        if calibrated.exists():
            policies["calibrated"] = load_policy(calibrated)
        outcome.verdicts, outcome.failed = {}, {}
        judge(outcome, report, policies)
        if outcome.candidate != "clean":
            continue
        for ref in sorted(path.parent.glob("ref-*.json")):
            twin = Outcome(**{**asdict(outcome), "candidate": "reference", "report": str(ref)})
            twin.verdicts, twin.failed = {}, {}
            judge(twin, json.loads(ref.read_text()), fixed)
            references.append(twin)
    return outcomes + references


def contributions(outcomes: list[Outcome], split: str) -> str:
    """Per policy and rule: how many clean fine-tunes (and references) it failed, and how many
    reliant shortcut fine-tunes of each kind it caught."""
    rows = [o for o in outcomes if o.split == split]
    lines = [
        f"### which rule fires ({split} worlds)",
        "",
        "| policy | rule (metric) | clean FT | references | " + " | ".join(KINDS) + " |",
        "|---|---|---|---|" + "---|" * len(KINDS),
    ]
    for policy in sorted({p for o in rows for p in o.verdicts}):
        metrics = sorted({f.split("/")[1] for o in rows for f in o.failed.get(policy, [])})
        for metric in metrics:

            def fires(group: list[Outcome], metric: str = metric, policy: str = policy) -> str:
                judged = [o for o in group if policy in o.verdicts]
                hit = sum(any(f.split("/")[1] == metric for f in o.failed[policy]) for o in judged)
                return f"{hit}/{len(judged)}" if judged else "–"

            kinds = [
                fires([o for o in rows if o.candidate == "shortcut" and o.relies and o.kind == k])
                for k in KINDS
            ]
            clean = fires([o for o in rows if o.candidate == "clean"])
            refs = fires([o for o in rows if o.candidate == "reference"])
            lines.append(f"| {policy} | {metric} | {clean} | {refs} | " + " | ".join(kinds) + " |")
    return "\n".join(lines)


def worst_value(report: dict, metric: str, side: str) -> float | None:
    """The check of ``metric`` (any method, any class) furthest toward ``side``: the one that
    decides whether a ``class = "*"``, ``method = "*"`` rule on the class mean fails."""
    values = [
        stats["mean"]
        for per_class in (s.get(metric) or {} for s in report["summaries"].values())
        for klass, stats in per_class.items()
        if klass != "overall" and stats and stats.get("mean") is not None
    ]
    if not values:
        return None
    return min(values) if side == "lower" else max(values)


def fit_default(outcomes: list[Outcome], alpha: float, out: Path, most: int = 3) -> str:
    """Choose the default policy on the calibration worlds only.

    Null: every clean fine-tune and reference audit of those worlds; positives: their shortcut
    fine-tunes that rely on the shortcut (by the probe). A rule is one reference-free metric on
    the class mean, every class and method (``class = "*"``), so it fails an audit when the
    audit's worst check crosses it. For a set of r rules, each threshold lets through all but
    the ``floor(alpha / r * N)`` most extreme of the N null audits (an empirical bound, because
    the worst of ten checks is skewed and a normal bound under-covers it); the set with the
    most positives caught, then the fewest null failures, wins. The evaluation worlds judge it.
    """
    import itertools

    from worker.results.calibration import sides_for

    cal = [o for o in outcomes if o.split == "calibration"]
    null_paths = set()
    for o in cal:
        folder = Path(o.report).parent
        null_paths.update(str(p) for p in folder.glob("ref-*.json"))
        if o.candidate == "clean":
            null_paths.add(o.report)
    null = [json.loads(Path(p).read_text()) for p in sorted(null_paths)]
    positives = [
        json.loads(Path(o.report).read_text())
        for o in cal
        if o.candidate == "shortcut" and o.relies
    ]
    options = [(m, side) for m in DEFAULT_CANDIDATES for side in sides_for(m)]
    worst = {
        r: (
            np.array([worst_value(x, *r) for x in null], dtype=float),
            np.array([worst_value(x, *r) for x in positives], dtype=float),
        )
        for r in options
    }

    def limit(rule: tuple[str, str], r: int) -> float:
        values = np.sort(worst[rule][0])  # ascending
        k = int(alpha / r * len(values))  # null audits allowed to fail this rule
        if rule[1] == "lower":  # rounded outward to the 3 decimals the policy shows
            return math.floor(float(values[k]) * 1000) / 1000
        return math.ceil(float(values[len(values) - 1 - k]) * 1000) / 1000

    def fails(rule: tuple[str, str], value: float, which: int) -> np.ndarray:
        x = worst[rule][which]
        return (x < value) if rule[1] == "lower" else (x > value)

    best: tuple = ()
    for r in range(1, most + 1):
        for combo in itertools.combinations(options, r):
            if len({m for m, _ in combo}) < r:
                continue
            limits = {rule: limit(rule, r) for rule in combo}
            null_fail = np.logical_or.reduce([fails(q, v, 0) for q, v in limits.items()])
            caught = np.logical_or.reduce([fails(q, v, 1) for q, v in limits.items()])
            key = (int(caught.sum()), -int(null_fail.sum()), -r)
            if not best or key > best[0]:
                best = (key, limits)
    (hits, null_hits, _), limits = best
    lines = [
        f"# chosen on {len(null)} null audits (clean fine-tunes and references) and "
        f"{len(positives)} reliant shortcut audits of the calibration worlds:",
        f"# {-null_hits}/{len(null)} null audits fail, {hits}/{len(positives)} shortcuts caught",
        "min_samples = 30",
        "",
    ]
    for (metric, side), value in limits.items():
        op = ">=" if side == "lower" else "<="
        lines += [
            "[[rule]]",
            f'name = "{metric} {op} {value:.3f} (every class)"',
            'method = "*"',
            f'metric = "{metric}"',
            'stat = "mean"',
            'class = "*"',
            f'op = "{op}"',
            f"value = {value:.3f}",
            "",
        ]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def table(outcomes: list[Outcome], split: str, arch: str = "") -> str:
    """Per policy: false alarms on clean fine-tunes, detections of shortcut-reliant ones, per
    kind; with Wilson intervals. A verdict other than ``fail`` counts as not raised."""
    rows = [o for o in outcomes if o.split == split]
    policies = sorted({p for o in rows for p in o.verdicts})
    lines = [
        f"## {arch} {split} worlds: {sorted({o.world for o in rows})}",
        "",
        "| policy | group | n | flagged (fail) | rate | Wilson 95% |",
        "|---|---|---|---|---|---|",
    ]
    for policy in policies:
        groups: list[tuple[str, list[Outcome]]] = [
            ("clean FT (false alarm)", [o for o in rows if o.candidate == "clean"]),
            (
                "clean FT + references (false alarm)",
                [o for o in rows if o.candidate in ("clean", "reference") and policy in o.verdicts],
            ),
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
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument(
        "--judge",
        type=Path,
        nargs="+",
        help="no training: judge the reports of these results files again and print the tables",
    )
    parser.add_argument(
        "--fit-default",
        type=Path,
        metavar="TOML",
        help="with --judge: choose a default policy on the calibration worlds and write it",
    )
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="with --judge: one more policy to judge by (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.judge:
        outcomes = [Outcome(**o) for f in args.judge for o in json.loads(f.read_text())]
        if args.fit_default:
            print(fit_default(outcomes, args.alpha, args.fit_default))
        outcomes = rejudge(outcomes, dict(p.split("=", 1) for p in args.policy))
        for split in ("calibration", "evaluation"):
            archs = sorted({o.arch for o in outcomes})
            for arch in [*archs, "all"] if len(archs) > 1 else archs:
                chosen = [o for o in outcomes if arch in ("all", o.arch)]
                print("\n" + table(chosen, split, arch))
            print("\n" + contributions(outcomes, split))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
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
        print("\n" + table(outcomes, split, args.arch))
    print(f"\n{len(outcomes)} candidates in {time.perf_counter() - started:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
