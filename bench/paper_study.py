"""The paper's experiment, reproducible: three architecture families, two CAMs, one study.

*When Fine-Tuning Changes the Evidence* (arXiv 2604.08513) trains DenseNet201, ResNet50V2 and
InceptionV3 with the two-phase protocol (TL: frozen pretrained backbone + new head; FT: every
layer), explains true positives with LayerCAM and Grad-CAM++ on the last feature map, measures
TL -> FT drift, and ranks the architectures by it. This script does the same on phantom chest
X-rays, on a CPU, with small members of the three families (``densenet_small``,
``resnetv2_small``, ``inception_small``; the full ones can be named with ``--archs`` on a GPU):

  phantoms (source task, clean five-class task) -> per arch: offline pretraining on the source
  task (our ImageNet stand-in) -> TL/FT -> a replica TL with another seed -> drift audit with
  the noise floor and the replica floor -> a study across the archs (rankings, Kendall tau,
  bootstrap reversal probabilities) -> the paper-style table.

    python bench/paper_study.py                       # ~12 min on 2 CPU cores
    python bench/paper_study.py --quick               # smoke test, ~10-40 s

Writes ``paper_study.md`` (the tables), ``paper_study.json`` (everything: training metrics,
reports, the study, timings), the study report and each arch's drift report under ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import platform
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from training.phantoms import generate_dataset
from training.protocol import PhaseConfig, TrainConfig, pretrain, train_two_phase
from worker.engine.audit import AuditConfig
from worker.render.markdown import render_markdown
from worker.results.study import load_local_entry, study_report
from worker.runtime.local_run import run_audit

SMALL_ARCHS = ("densenet_small", "resnetv2_small", "inception_small")
PAPER_NAME = {
    "densenet_small": "DenseNet201",
    "resnetv2_small": "ResNet50V2",
    "inception_small": "InceptionV3",
    "densenet201": "DenseNet201",
    "resnetv2_50": "ResNet50V2",
    "resnet50v2": "ResNet50V2",
    "inception_v3": "InceptionV3",
}
METHODS = ("layercam", "gradcam++")
# the paper's four reference-free metrics, in its order, with the table's column names
TABLE_METRICS = {
    "iou_top20": "IoU@20",
    "pearson": "Pearson",
    "displacement": "displacement",
    "concentration_change": "concentration change",
}
FLOORS = {"noise_floor": "noise", "replica_floor": "replica"}


@dataclass
class Settings:
    """One study's knobs; ``--quick`` swaps in tiny ones for a smoke test."""

    archs: tuple[str, ...] = SMALL_ARCHS
    samples_per_class: int = 300
    epochs: int = 16
    image_size: int = 128
    seed: int = 0
    n_boot: int = 2000
    batch_size: int = 32
    sample_filter: str = "true_positive"  # the paper's
    # archs trained at once, each in a worker process with ``threads`` torch threads: on a
    # small CPU, single-threaded processes side by side beat one multi-threaded process (and
    # stay fast when other jobs share the CPU); None = torch's default thread count
    jobs: int = 3
    threads: int | None = 1


# A smoke test: models this briefly trained are near chance, so it audits every test image
# (few would be true positives for all three); batches of 8 give each epoch several steps.
QUICK = {
    "samples_per_class": 12,
    "epochs": 2,
    "image_size": 64,
    "n_boot": 200,
    "batch_size": 8,
    "sample_filter": "all",
    "jobs": 1,
    "threads": 1,
}


class Timer:
    """Seconds per named stage, printed as each one ends."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.started = time.perf_counter()

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        self.stages[name] = round(time.perf_counter() - t0, 2)
        print(f"[{self.stages[name]:7.1f} s] {name}", flush=True)
        return result

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 2)


def _train_config(s: Settings, arch: str, seed: int, pretrained: str = "none") -> TrainConfig:
    # the protocol's own phases (TrainConfig's learning rates, patience), the study's budget
    protocol = TrainConfig()
    return TrainConfig(
        arch=arch,
        pretrained=pretrained,
        input_size=(s.image_size, s.image_size),
        seed=seed,
        tl=replace(protocol.tl, epochs=s.epochs, batch_size=s.batch_size),
        ft=replace(protocol.ft, epochs=s.epochs, batch_size=s.batch_size),
        progress=False,
    )


def run_arch(s: Settings, arch: str, source: Path, clean: Path, out: Path) -> dict:
    """Pretrain, TL/FT, replica TL and the drift audit of one arch; the paths, metrics and
    stage times. Self-contained, so ``--jobs`` can run archs in parallel processes."""
    if s.threads:
        torch.set_num_threads(s.threads)
    timer = Timer()
    runs = out / "runs" / arch
    weights = runs / "pretrained.safetensors"
    pre_cfg = _train_config(s, arch, s.seed)
    # pretraining trains every layer (the FT phase's settings) at the demo's source-task rate
    pre_cfg.ft = PhaseConfig(
        epochs=s.epochs, lr=3e-3, batch_size=s.batch_size, patience=max(s.epochs, 1)
    )
    pre = timer.run(f"{arch}: pretrain on the source task", pretrain, source, weights, pre_cfg)
    two_phase = timer.run(
        f"{arch}: two-phase TL/FT",
        train_two_phase,
        clean,
        runs / "main",
        _train_config(s, arch, s.seed, str(weights)),
    )
    # the replica floor's baseline: the same TL protocol with another seed (no FT phase)
    replica_cfg = _train_config(s, arch, s.seed + 1, str(weights))
    replica_cfg.ft = PhaseConfig(epochs=0, batch_size=s.batch_size)
    replica = timer.run(
        f"{arch}: replica TL (seed {s.seed + 1})",
        train_two_phase,
        clean,
        runs / "replica",
        replica_cfg,
    )
    (runs / "replica" / "ft.safetensors").unlink(missing_ok=True)  # = its TL, not a fine-tune
    report_path = out / "reports" / f"{arch}.json"
    audit = AuditConfig(
        methods=list(METHODS),
        sample_filter=s.sample_filter,
        seed=s.seed,
        n_boot=s.n_boot,
        noise_floor=True,
        batch_size=s.batch_size,
    )
    report = timer.run(
        f"{arch}: drift audit (LayerCAM, Grad-CAM++, noise + replica floor)",
        run_audit,
        runs / "main" / "tl.safetensors",
        runs / "main" / "ft.safetensors",
        clean,
        audit,
        report_path,
        replica=runs / "replica" / "tl.safetensors",
    )
    report_path.with_suffix(".md").write_text(render_markdown(report))
    return {
        "report": str(report_path),
        "pretrain_test_macro_auc": pre["test"]["macro_auc"],
        "tl_test": _brief(two_phase["tl"]["test"]),
        "ft_test": _brief(two_phase["ft"]["test"]),
        "replica_tl_test": _brief(replica["tl"]["test"]),
        "best_epochs": {p: two_phase[p]["fit"]["best_epoch"] for p in ("tl", "ft")},
        "stages": timer.stages,
    }


def run_archs(s: Settings, source: Path, clean: Path, out: Path) -> dict[str, dict]:
    """Every arch, one after the other or ``s.jobs`` at a time in worker processes."""
    if s.jobs <= 1:
        return {a: run_arch(s, a, source, clean, out) for a in s.archs}
    # spawn, not fork: a forked child of a process that already ran torch may deadlock
    with ProcessPoolExecutor(max_workers=s.jobs, mp_context=get_context("spawn")) as pool:
        futures = {a: pool.submit(run_arch, s, a, source, clean, out) for a in s.archs}
        return {a: f.result() for a, f in futures.items()}


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("n", "accuracy", "macro_auc")}


def paper_rows(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arch x method: each table metric's mean [95% CI], floors, included n."""
    rows = []
    for arch, report in reports.items():
        for method in METHODS:
            row: dict[str, Any] = {
                "arch": arch,
                "family": PAPER_NAME.get(arch, arch),
                "method": method,
                "n": report["subsets"]["included"],
                "metrics": {},
            }
            for metric in TABLE_METRICS:
                overall = report["summaries"][method][metric]["overall"]
                cell = {k: overall.get(k) for k in ("mean", "ci95_low", "ci95_high", "n")}
                for key, name in FLOORS.items():
                    floor = ((report.get(key) or {}).get(method) or {}).get(metric) or {}
                    cell[f"{name}_floor_mean"] = (floor.get("floor") or {}).get("mean")
                    cell[f"beyond_{name}_floor"] = floor.get("beyond_floor")
                row["metrics"][metric] = cell
            rows.append(row)
    return rows


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def _table(header: Sequence[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(cells) + " |" for cells in lines]


def render_tables(doc: dict[str, Any]) -> str:
    """The paper-style tables as Markdown: drift with CIs and AUCs, floors, rankings."""
    rows, study, archs = doc["rows"], doc["study"], doc["archs"]
    names = list(TABLE_METRICS.values())
    md = [
        f"### Drift TL → FT ({doc['settings']['sample_filter']} samples): mean [95% CI]",
        "",
        *_table(
            ["architecture", "method", "n", *names, "AUC TL", "AUC FT"],
            [
                [
                    f"{r['arch']} ({r['family']})",
                    r["method"],
                    str(r["n"]),
                    *(
                        f"{_f(c['mean'])} [{_f(c['ci95_low'])}, {_f(c['ci95_high'])}]"
                        for c in r["metrics"].values()
                    ),
                    _f(archs[r["arch"]]["tl_test"]["macro_auc"]),
                    _f(archs[r["arch"]]["ft_test"]["macro_auc"]),
                ]
                for r in rows
            ],
        ),
        "",
        "### Floors: floor mean (noise / replica), share of samples whose drift lies beyond it",
        "",
        *_table(
            ["architecture", "method", *names],
            [
                [
                    r["arch"],
                    r["method"],
                    *(
                        f"{_f(c['noise_floor_mean'])} / {_f(c['replica_floor_mean'])}: "
                        f"{_pct(c['beyond_noise_floor'])} / {_pct(c['beyond_replica_floor'])}"
                        for c in r["metrics"].values()
                    ),
                ]
                for r in rows
            ],
        ),
        "",
        f"### Ranking, most stable first ({study['n_common']} common samples; "
        "(p) = bootstrap P(left more stable than right))",
        "",
    ]
    tau = {m: study["kendall_tau"][m][0] for m in TABLE_METRICS if study["kendall_tau"].get(m)}
    lines = []
    for metric, name in TABLE_METRICS.items():
        cells = []
        for method in study["methods"]:
            r = study["rankings"][method][metric]
            order = r["ranking"]
            text = order[0] if order else "–"
            for a, b in itertools.pairwise(order):
                text += f" > ({_f(r['order_probability'][a][b], 2)}) {b}"
            cells.append(text)
        t = tau.get(metric) or {}
        reversals = [
            f"{' / '.join(v['pair'])}: {_f(v['confidence'], 2)}{' *' if v['confident'] else ''}"
            for v in study["reversals"]
            if v["metric"] == metric
        ]
        lines.append([name, *cells, _f(t.get("tau"), 2), "; ".join(reversals) or "none"])
    md += _table(["metric", *study["methods"], "Kendall τ", "reversals (confidence)"], lines)
    md += [
        "",
        "A reversal's confidence is the smaller of the two methods' bootstrap probabilities "
        "for their own order; * marks confidence >= "
        f"{study['config']['reversal_confidence']}.",
    ]
    return "\n".join(md) + "\n"


def render_timings(doc: dict[str, Any]) -> str:
    lines = [[name, f"{sec:.1f}"] for name, sec in doc["timings"]["stages"].items()]
    lines.append(["**total**", f"**{doc['timings']['total']:.1f}**"])
    return "\n".join(_table(["stage", "seconds"], lines)) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Settings()
    p.add_argument("--out", type=Path, default=Path("var/paper-study"))
    p.add_argument("--archs", help=f"comma-separated zoo archs (default {','.join(d.archs)})")
    p.add_argument("--samples-per-class", type=int, help=f"default {d.samples_per_class}")
    p.add_argument("--epochs", type=int, help=f"per phase (default {d.epochs})")
    p.add_argument("--image-size", type=int, help=f"default {d.image_size}")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--n-boot", type=int, help=f"bootstrap replicates (default {d.n_boot})")
    p.add_argument("--sample-filter", help=f"audited samples (default {d.sample_filter})")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads per process (default 1: fastest on a shared CPU; 0: torch default)",
    )
    p.add_argument("--jobs", type=int, help="archs trained at once, one process each (default 3)")
    p.add_argument("--quick", action="store_true", help=f"smoke-test defaults: {QUICK}")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """Defaults, then ``--quick``'s, then whatever was given explicitly."""
    s = Settings(**(QUICK if args.quick else {}))
    for key in (
        "samples_per_class",
        "epochs",
        "image_size",
        "seed",
        "n_boot",
        "sample_filter",
        "threads",
        "jobs",
    ):
        if getattr(args, key) is not None:
            setattr(s, key, getattr(args, key))
    if args.archs:
        s.archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    if len(s.archs) < 2:
        raise SystemExit("a study needs at least two --archs")
    return s


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; print and write the tables; return the whole result document."""
    args = parse_args(argv)
    s = settings_from(args)
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        return run_study(s, args.out)
    finally:
        torch.set_num_threads(threads)


def run_study(s: Settings, out: Path) -> dict[str, Any]:
    """The whole pipeline for settings ``s`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("camdrift").setLevel(logging.WARNING)
    timer = Timer()
    print(f"paper study: {', '.join(s.archs)} | {asdict(s)} | {torch.get_num_threads()} threads")
    size, n = s.image_size, s.samples_per_class
    source = timer.run(
        "phantoms: source task",
        generate_dataset,
        out / "data" / "source",
        n,
        size,
        s.seed + 1000,
        task="source",
    )
    clean = timer.run(
        "phantoms: clean task", generate_dataset, out / "data" / "clean", n, size, s.seed
    )
    archs = run_archs(s, source.parent, clean.parent, out)
    for info in archs.values():
        timer.stages.update(info.pop("stages"))
    entries = [load_local_entry(Path(archs[a]["report"]), name=a) for a in s.archs]
    study = timer.run("study across archs", study_report, entries, n_boot=s.n_boot, seed=s.seed)
    (out / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    doc: dict[str, Any] = {
        "settings": asdict(s),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        },
        "archs": archs,
        "rows": paper_rows({e["name"]: e["report"] for e in entries}),
        "study": study,
        "timings": {"stages": timer.stages, "total": timer.total()},
    }
    tables, timings = render_tables(doc), render_timings(doc)
    (out / "paper_study.md").write_text(
        f"## Paper study ({', '.join(s.archs)})\n\n{tables}\n### Timings\n\n{timings}"
    )
    (out / "paper_study.json").write_text(json.dumps(doc, indent=2) + "\n")
    print("\n" + tables + "\n" + timings)
    print(f"total {doc['timings']['total']:.0f} s; tables {out / 'paper_study.md'}")
    return doc


if __name__ == "__main__":
    main()
