"""The ``camdrift`` command line.

Heavy modules (torch, the engine) are imported inside the commands that need them, so
``camdrift --help`` and the service commands start fast and the API process stays torch-free.
Every user error ends with a one-line message and exit code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from service.sequence import VIA_HELP, expand_sequence
from training.logs import configure_logging

app = typer.Typer(
    name="camdrift",
    help="Audit attribution drift between a transfer-learned and a fine-tuned classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    FileExistsError,
    PermissionError,
)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user mistake (bad file, bad value) into a message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
) -> None:
    configure_logging(log_level)


@app.command()
@user_errors
def phantoms(
    out: Annotated[Path, typer.Option(help="Folder to write the dataset into")],
    per_class: Annotated[int, typer.Option(help="Images per class")] = 200,
    size: Annotated[int, typer.Option(help="Image side in pixels")] = 96,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes)")] = 0,
    shortcut: Annotated[str | None, typer.Option(help="Class that carries the marker")] = None,
    shortcut_eval: Annotated[
        str, typer.Option(help="Marker in val/test: correlated, random or absent")
    ] = "correlated",
    shortcut_confound: Annotated[
        float,
        typer.Option(
            help="Share of the shortcut class's train images that show another "
            "class's finding (the marker becomes the only reliable cue)"
        ),
    ] = 0.0,
    task: Annotated[str, typer.Option(help="target (five diseases) or source (pretraining)")] = (
        "target"
    ),
) -> None:
    """Generate the phantom chest X-ray dataset (ImageFolder tree + masks + manifest.csv)."""
    from tqdm.auto import tqdm

    from training.phantoms import generate_dataset

    with tqdm(total=per_class * 5, desc="phantoms", unit="img") as bar:
        manifest = generate_dataset(
            out,
            per_class,
            size,
            seed,
            shortcut=shortcut,
            shortcut_eval=shortcut_eval,
            shortcut_confound=shortcut_confound,
            task=task,
            progress=lambda done, total: bar.update(done - bar.n),
        )
    console.print(f"wrote {manifest}")


def _train_config(**kw: Any):
    from training.protocol import PhaseConfig, TrainConfig

    tl = PhaseConfig(
        epochs=kw.pop("tl_epochs"),
        lr=kw.pop("tl_lr"),
        batch_size=kw["batch_size"],
        weight_decay=kw["weight_decay"],
        patience=kw["patience"],
    )
    ft = PhaseConfig(
        epochs=kw.pop("ft_epochs"),
        lr=kw.pop("ft_lr"),
        batch_size=kw.pop("batch_size"),
        weight_decay=kw.pop("weight_decay"),
        patience=kw.pop("patience"),
    )
    size = kw.pop("input_size")
    return TrainConfig(tl=tl, ft=ft, input_size=(size, size) if size else None, **kw)


def _one_phase_config(arch, input_size, epochs, lr, batch_size, seed, device):
    """Settings for the commands that train one phase (``pretrain``, ``finetune``): the FT
    phase's, with early stopping off (patience = epochs)."""
    return _train_config(
        arch=arch,
        pretrained="none",
        input_size=input_size,
        tl_epochs=0,
        tl_lr=lr,
        ft_epochs=epochs,
        ft_lr=lr,
        batch_size=batch_size,
        weight_decay=1e-4,
        patience=epochs,
        seed=seed,
        device=device,
    )


TrainOpt = typer.Option


@app.command()
@user_errors
def train(
    data: Annotated[Path, typer.Option(help="Dataset folder (manifest.csv or ImageFolder)")],
    out: Annotated[Path, typer.Option(help="Run folder for tl/ft checkpoints and metrics")],
    arch: Annotated[str, TrainOpt(help="Zoo architecture")] = "tinycnn",
    pretrained: Annotated[str, TrainOpt(help="none, imagenet or a weights file")] = "none",
    input_size: Annotated[int | None, TrainOpt(help="Square input side (default: arch's)")] = None,
    tl_epochs: Annotated[int, TrainOpt(help="Epochs of phase TL (frozen backbone)")] = 12,
    tl_lr: Annotated[float, TrainOpt(help="Learning rate of phase TL")] = 1e-2,
    ft_epochs: Annotated[int, TrainOpt(help="Epochs of phase FT (everything trains)")] = 10,
    ft_lr: Annotated[float, TrainOpt(help="Learning rate of phase FT")] = 5e-4,
    batch_size: Annotated[int, TrainOpt()] = 32,
    weight_decay: Annotated[float, TrainOpt()] = 1e-4,
    patience: Annotated[int, TrainOpt(help="Early-stopping patience (val macro AUC)")] = 4,
    seed: Annotated[int, TrainOpt()] = 0,
    device: Annotated[str, TrainOpt(help="auto, cpu, cuda, cuda:1")] = "auto",
    workers: Annotated[int, TrainOpt(help="Data-loader worker processes")] = 0,
    save_every_epoch: Annotated[bool, TrainOpt(help="Also keep per-epoch checkpoints")] = False,
    augment: Annotated[bool, TrainOpt(help="Light label-preserving augmentation")] = True,
) -> None:
    """Two-phase training: TL (frozen backbone, new head), then FT (all layers, lower lr)."""
    from training.protocol import train_two_phase

    cfg = _train_config(
        arch=arch,
        pretrained=pretrained,
        input_size=input_size,
        tl_epochs=tl_epochs,
        tl_lr=tl_lr,
        ft_epochs=ft_epochs,
        ft_lr=ft_lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        patience=patience,
        seed=seed,
        device=device,
        workers=workers,
        save_every_epoch=save_every_epoch,
        augment=augment,
    )
    result = train_two_phase(data, out, cfg)
    print_training(result)
    console.print(f"checkpoints: {out / 'tl.safetensors'}  {out / 'ft.safetensors'}")


@app.command()
@user_errors
def finetune(
    data: Annotated[Path, typer.Option(help="Dataset to fine-tune on")],
    parent: Annotated[Path, typer.Option("--from", help="The TL checkpoint to start from")],
    out: Annotated[Path, typer.Option(help="Run folder for ft.safetensors and metrics")],
    epochs: Annotated[int, TrainOpt()] = 10,
    lr: Annotated[float, TrainOpt()] = 5e-4,
    batch_size: Annotated[int, TrainOpt()] = 32,
    seed: Annotated[int, TrainOpt()] = 0,
    device: Annotated[str, TrainOpt()] = "auto",
) -> None:
    """Phase FT alone from an existing TL checkpoint (e.g. one TL, several fine-tunes)."""
    from training.protocol import finetune as run_finetune

    cfg = _one_phase_config("tinycnn", None, epochs, lr, batch_size, seed, device)
    result = run_finetune(data, parent, out, cfg)
    test = result["ft"]["test"]
    console.print(
        f"fine-tuned from {parent}: test accuracy {test['accuracy']:.3f}, "
        f"macro AUC {test['macro_auc']:.3f} -> {out / 'ft.safetensors'}"
    )


@app.command()
@user_errors
def pretrain(
    data: Annotated[Path, typer.Option(help="Source-task dataset (e.g. phantoms --task source)")],
    out: Annotated[Path, typer.Option(help="Weights file to write (.safetensors)")],
    arch: Annotated[str, TrainOpt()] = "tinycnn",
    input_size: Annotated[int | None, TrainOpt()] = None,
    epochs: Annotated[int, TrainOpt()] = 8,
    lr: Annotated[float, TrainOpt()] = 2e-3,
    batch_size: Annotated[int, TrainOpt()] = 32,
    seed: Annotated[int, TrainOpt()] = 0,
    device: Annotated[str, TrainOpt()] = "auto",
) -> None:
    """Pretrain a backbone on a source task offline (our stand-in for ImageNet weights)."""
    from training.protocol import pretrain as run_pretrain

    cfg = _one_phase_config(arch, input_size, epochs, lr, batch_size, seed, device)
    result = run_pretrain(data, out, cfg)
    test = result["test"]
    console.print(
        f"pretrained {arch}: source-task test accuracy {test['accuracy']:.3f}, "
        f"macro AUC {test['macro_auc']:.3f} -> {out}"
    )


def print_training(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{result['arch']} two-phase training (held-out test split)")
    for col in ("phase", "best epoch", "val macro AUC", "test accuracy", "test macro AUC"):
        table.add_column(col, justify="right")
    for phase in ("tl", "ft"):
        r = result[phase]
        table.add_row(
            phase.upper(),
            str(r["fit"]["best_epoch"]),
            _fmt(r["fit"]["best_val_macro_auc"]),
            _fmt(r["test"]["accuracy"]),
            _fmt(r["test"]["macro_auc"]),
        )
    console.print(table)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
@user_errors
def drift(
    baseline: Annotated[Path, typer.Option(help="Baseline checkpoint (TL)")],
    candidate: Annotated[Path, typer.Option(help="Candidate checkpoint (FT)")],
    data: Annotated[Path, typer.Option(help="Dataset folder")],
    out: Annotated[Path, typer.Option(help="Report JSON to write")] = Path("report.json"),
    methods: Annotated[str, typer.Option(help="Comma-separated CAM methods")] = (
        "layercam,gradcam++"
    ),
    metrics: Annotated[str | None, typer.Option(help="Comma-separated metrics (all)")] = None,
    sample_filter: Annotated[
        str, typer.Option(help="true_positive, all, predicted or disagreement")
    ] = "true_positive",
    max_samples: Annotated[int | None, typer.Option(help="Seeded subsample size")] = None,
    split: Annotated[str, typer.Option(help="auto (test split if any), all, or a split")] = (
        "auto"
    ),
    target_layer: Annotated[str | None, typer.Option(help="Module path (default: feature map)")] = (
        None
    ),
    batch_size: Annotated[int, typer.Option()] = 16,
    seed: Annotated[int, typer.Option(help="Seed of subsampling and bootstrap")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
    bf16: Annotated[bool, typer.Option(help="bf16 autocast for the forward (GPU)")] = False,
    html: Annotated[Path | None, typer.Option(help="Also write the HTML report here")] = None,
    noise_floor: Annotated[
        bool, typer.Option(help="Also measure drift against a perturbed baseline")
    ] = False,
    replica: Annotated[
        Path | None, typer.Option(help="A baseline replica (other seed): its drift floor")
    ] = None,
    via: Annotated[list[str] | None, typer.Option(help=VIA_HELP)] = None,
) -> None:
    """Audit attribution drift between two checkpoints (or along a sequence), in this process."""
    from tqdm.auto import tqdm

    from worker.engine.audit import AuditConfig
    from worker.runtime.local_run import run_audit

    cfg = AuditConfig(
        methods=_csv(methods) or [],
        metrics=_csv(metrics) or [],
        sample_filter=sample_filter,
        max_samples=max_samples,
        split=None if split == "all" else split,
        target_layer=target_layer,
        batch_size=batch_size,
        seed=seed,
        device=device,
        autocast="bf16" if bf16 else None,
        noise_floor=noise_floor,
    )
    trajectory = expand_sequence(via or [])
    bar = tqdm(desc="drift", unit="img")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        report = run_audit(
            baseline, candidate, data, cfg, out, progress, replica=replica, trajectory=trajectory
        )
    finally:
        bar.close()
    print_report(report)
    console.print(f"report: {out}")
    if html is not None:
        from worker.render.html_report import write_local_html

        write_local_html(out, html)
        console.print(f"html report: {html}")


def print_report(report: dict[str, Any]) -> None:
    """Both models' performance, the subset counts, and each method x metric mean [CI]."""
    from rich.table import Table

    perf = Table(title="performance on the evaluated set")
    for col in ("model", "arch", "phase", "accuracy", "macro AUC"):
        perf.add_column(col)
    for role in ("baseline", "candidate"):
        p, m = report["performance"][role], report["models"][role]
        perf.add_row(role, m["arch"], str(m["phase"]), _fmt(p["accuracy"]), _fmt(p["macro_auc"]))
    console.print(perf)
    s = report["subsets"]
    console.print(
        f"evaluated {s['evaluated']}  included ({report['config']['sample_filter']}) "
        f"{s['included']}  true positive {s['true_positive']}  disagreement {s['disagreement']}"
    )
    table = Table(title="attribution drift: mean [95% CI] over included samples")
    table.add_column("metric")
    methods = list(report["summaries"])
    for method in methods:
        table.add_column(method, justify="right")
    for metric in report["config"]["metrics"]:
        cells = []
        for method in methods:
            st = report["summaries"][method][metric]["overall"]
            cells.append(
                "-"
                if st["mean"] is None
                else f"{st['mean']:.3f} [{_fmt(st['ci95_low'])}, {_fmt(st['ci95_high'])}]"
            )
        table.add_row(metric, *cells)
    console.print(table)
    if report.get("trajectory"):
        print_trajectory(report["trajectory"])


def print_trajectory(section: dict[str, Any]) -> None:
    """Per checkpoint: performance, and each method's Pearson r from the baseline."""
    from rich.table import Table

    series = section["series"]
    metric = "pearson" if "pearson" in next(iter(series.values())) else None
    metric = metric or next(iter(next(iter(series.values()))))
    table = Table(title=f"trajectory: {metric} from the baseline (from the previous checkpoint)")
    for col in ("checkpoint", "accuracy", "macro AUC", *series):
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    for i, checkpoint in enumerate(section["checkpoints"]):
        score = section["performance"][i]
        cells = []
        for entry in (per_metric[metric] for per_metric in series.values()):
            if i == 0:
                cells.append("-")
                continue
            first, step = entry["from_first"][i - 1], entry["consecutive"][i - 1]
            mark = " *" if entry["sharpest_step"] == i else ""
            cells.append(f"{_fmt(first['mean'])} ({_fmt(step['mean'])}){mark}")
        table.add_row(
            checkpoint["label"], _fmt(score["accuracy"]), _fmt(score["macro_auc"]), *cells
        )
    console.print(table)
    console.print("* the step where the evidence moved most")


@app.command()
@user_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where data, runs and reports go")] = Path(
        "var/demo"
    ),
    per_class: Annotated[int, typer.Option()] = 200,
    size: Annotated[int, typer.Option()] = 96,
    seed: Annotated[int, typer.Option()] = 0,
    arch: Annotated[str, typer.Option()] = "tinycnn",
) -> None:
    """The README's main job: phantoms -> pretrain -> TL/FT and a shortcut FT -> both gated
    through the embedded service (clean passes, shortcut fails)."""
    from service.demo import run_demo

    run_demo(workdir, per_class=per_class, size=size, seed=seed, arch=arch, console=console)


db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
@user_errors
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Migrate the database at CAMDRIFT_DATABASE_URL up to ``revision``."""
    from service.migrate import upgrade
    from worker.store import get_settings

    settings = get_settings()
    upgrade(settings, revision)
    console.print(f"database at {_redact(settings.database_url)} is at {revision}")


@db_app.command("downgrade")
@user_errors
def db_downgrade(revision: Annotated[str, typer.Argument()] = "base") -> None:
    """Migrate the database down to ``revision`` (``base`` drops every table)."""
    from service.migrate import downgrade
    from worker.store import get_settings

    downgrade(get_settings(), revision)
    console.print(f"database is at {revision}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command()
@user_errors
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    migrate: Annotated[bool, typer.Option(help="Upgrade the schema first")] = True,
) -> None:
    """Run the REST API. Without CAMDRIFT_BROKER_URL jobs run on a thread in this process."""
    import uvicorn

    from service.app import create_app
    from worker.store import get_settings

    settings = get_settings()
    if migrate:
        from service.migrate import upgrade

        upgrade(settings)
    api = create_app(settings)
    if not settings.broker_url:
        from service.dispatch import embedded_runner

        resumed = embedded_runner(settings).resume_unfinished()
        console.print(f"embedded runner started (resumed {resumed} unfinished jobs)")
    uvicorn.run(api, host=host, port=port, log_level="warning")


@app.command("worker")
def run_worker(
    concurrency: Annotated[int, typer.Option(help="Tasks at once (1 per GPU)")] = 1,
    queues: Annotated[str, typer.Option()] = "camdrift",
) -> None:
    """Run a Celery worker for drift jobs (needs CAMDRIFT_BROKER_URL)."""
    from worker.runtime.tasks import app as celery_app

    celery_app.worker_main(
        [
            "worker",
            "--pool",
            "solo" if concurrency == 1 else "prefork",
            f"--concurrency={concurrency}",
            "-Q",
            queues,
            "--loglevel=INFO",
        ]
    )


@app.command("report-schema")
def report_schema() -> None:
    """Print the drift report's JSON Schema."""
    from worker.results.report_schema import report_json_schema

    json.dump(report_json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


@app.command()
@user_errors
def study(
    report: Annotated[
        list[Path], typer.Option("--report", help="A drift report (repeat; its .samples.jsonl)")
    ],
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Entry names, in --report order")
    ] = None,
    out: Annotated[Path, typer.Option(help="Study report JSON to write")] = Path("study.json"),
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed")] = 0,
) -> None:
    """Rank several model pairs on one dataset: per method x metric, Kendall tau between the
    methods' rankings, and ranking reversals with their bootstrap confidence."""
    from worker.results.study import load_local_entry, study_report

    names = list(name or [])
    if names and len(names) != len(report):
        raise ValueError(f"give one --name per --report ({len(names)} for {len(report)})")
    entries = [load_local_entry(path, names[k] if names else None) for k, path in enumerate(report)]
    if not names and len({e["name"] for e in entries}) < len(entries):
        for k, entry in enumerate(entries):
            entry["name"] = f"{k + 1}:{entry['name']}"
    document = study_report(entries, n_boot=n_boot, seed=seed)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print_study(document)
    console.print(f"study report: {out}")


def print_study(document: dict[str, Any]) -> None:
    """Rankings per method x metric, Kendall tau between methods, reversals with confidence."""
    from rich.table import Table

    console.print(
        f"study of {len(document['entries'])} model pairs on {document['n_common']} common samples"
    )
    table = Table(title="ranking, most stable first (mean)")
    table.add_column("metric")
    for method in document["methods"]:
        table.add_column(method)
    for metric in document["metrics"]:
        cells = []
        for method in document["methods"]:
            r = document["rankings"][method][metric]
            cells.append(" > ".join(f"{n} ({_fmt(r['means'][n])})" for n in r["ranking"]) or "-")
        table.add_row(metric, *cells)
    console.print(table)
    taus = Table(title="Kendall tau between the methods' rankings")
    for col in ("metric", "methods", "tau", "p"):
        taus.add_column(col)
    for metric, items in document["kendall_tau"].items():
        for item in items:
            taus.add_row(
                metric, " vs ".join(item["methods"]), _fmt(item["tau"]), _fmt(item["p_value"])
            )
    console.print(taus)
    if not document["reversals"]:
        console.print("no ranking reversals")
        return
    rev = Table(title="ranking reversals (confidence = min of both orders' probabilities)")
    for col in ("metric", "pair", "orders", "confidence"):
        rev.add_column(col)
    for r in document["reversals"]:
        orders = "; ".join(
            f"{m}: {o['more_stable']} ({_fmt(o['probability'], 2)})" for m, o in r["orders"].items()
        )
        mark = " *" if r["confident"] else ""
        rev.add_row(r["metric"], " / ".join(r["pair"]), orders, _fmt(r["confidence"], 2) + mark)
    console.print(rev)


from service.gate_cli import gate as _gate  # noqa: E402 - registered last: it imports this module

app.command("gate")(_gate)

if __name__ == "__main__":  # pragma: no cover
    app()
