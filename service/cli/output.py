"""What the commands print: the consoles, the one-line error of a user mistake (exit 2), and the
rich tables of training results, drift reports, trajectories, studies and gate verdicts."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)
# the gate's (and its client's) messages: one line each whatever the width, for CI logs
line_console = Console(soft_wrap=True)
line_err_console = Console(stderr=True, soft_wrap=True)

EXIT_USAGE = 2
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    FileExistsError,
    PermissionError,
)


def error(message: Any, console: Console = err_console) -> None:
    """``error: message`` on stderr (the message is not read as markup)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user mistake (bad file, bad value) into a message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


def say(message: str) -> None:
    """One plain line on stderr: what a command is doing (uploads, jobs)."""
    line_err_console.print(message, highlight=False, markup=False)


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def escape(text: Any) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))


def redact(url: str) -> str:
    """A database URL with its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --------------------------------------------------------------------------- training


SKIPPED_SHOWN = 20  # skipped files listed by name; the rest are counted


def print_data(data: dict[str, Any]) -> None:
    """What the command read: images per class and split, and each skipped file's reason."""
    classes = ", ".join(f"{name} {n}" for name, n in data["classes"].items())
    splits = ", ".join(f"{name} {n}" for name, n in data["splits"].items()) or "none"
    if data.get("multi_label"):
        console.print(
            f"data {escape(data['root'])}: {data['images']} images, multi-label: findings "
            f"present {escape(classes)}; {data['unlabelled']} image(s) with none (negatives: "
            "trained on, not audited)"
        )
    else:
        console.print(f"data {escape(data['root'])}: {data['images']} images ({escape(classes)})")
    console.print(f"splits: {splits}")
    if data.get("groups"):
        console.print(
            f"groups: {data['groups']} patients/studies (from the {data.get('groups_from')}): "
            "each in one split"
        )
    skipped = data["skipped"]
    if not skipped:
        return
    console.print(f"[yellow]skipped {len(skipped)} file(s):[/]")
    for entry in skipped[:SKIPPED_SHOWN]:
        console.print(f"  {escape(entry['path'])}: {escape(entry['reason'])}", highlight=False)
    if len(skipped) > SKIPPED_SHOWN:
        console.print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more")


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
            fmt(r["fit"]["best_val_macro_auc"]),
            fmt(r["test"]["accuracy"]),
            fmt(r["test"]["macro_auc"]),
        )
    console.print(table)


# --------------------------------------------------------------------------- drift reports


def print_report(report: dict[str, Any]) -> None:
    """Both models' performance, the subset counts, and each method x metric mean [CI]."""
    from rich.table import Table

    perf = Table(title="performance on the evaluated set")
    for col in ("model", "arch", "phase", "accuracy", "macro AUC"):
        perf.add_column(col)
    for role in ("baseline", "candidate"):
        p, m = report["performance"][role], report["models"][role]
        perf.add_row(role, m["arch"], str(m["phase"]), fmt(p["accuracy"]), fmt(p["macro_auc"]))
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
                else f"{st['mean']:.3f} [{fmt(st['ci95_low'])}, {fmt(st['ci95_high'])}]"
            )
        table.add_row(metric, *cells)
    console.print(table)
    for warning in report.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if report.get("ceiling"):
        print_ceiling(report["ceiling"])
    if report.get("trajectory"):
        print_trajectory(report["trajectory"])


def print_ceiling(section: dict[str, Any]) -> None:
    """Per method x metric (overall): the drift, the floor, the random model's drift, and where
    the drift sits on that scale (0 = floor, 1 = random model)."""
    from rich.table import Table

    table = Table(title="drift on the floor (0) -> randomised model (1) scale, overall")
    for col in ("method", "metric", "drift", "floor", "random model", "position"):
        table.add_column(col, justify="left" if col in ("method", "metric") else "right")
    for method, per_metric in section.items():
        for metric, groups in per_metric.items():
            e = groups["overall"]
            position = fmt(e["position"], 2) if e["separable"] else "no separation"
            table.add_row(
                method, metric, fmt(e["drift"]), fmt(e["floor"]), fmt(e["ceiling"]), position
            )
    console.print(table)


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
            cells.append(f"{fmt(first['mean'])} ({fmt(step['mean'])}){mark}")
        table.add_row(checkpoint["label"], fmt(score["accuracy"]), fmt(score["macro_auc"]), *cells)
    console.print(table)
    console.print("* the step where the evidence moved most")


# --------------------------------------------------------------------------- studies


def print_study(document: dict[str, Any]) -> None:
    """Rankings per method x metric, Kendall tau between methods, reversals with confidence."""
    from rich.table import Table

    console.print(
        f"study of {len(document['entries'])} model pairs on {document['n_common']} common samples"
    )
    console.print(_ranking_table(document, document, "ranking, most stable first (mean)"))
    taus = Table(title="Kendall tau between the methods' rankings")
    for col in ("metric", "methods", "tau", "p"):
        taus.add_column(col)
    for metric, items in document["kendall_tau"].items():
        for item in items:
            taus.add_row(
                metric, " vs ".join(item["methods"]), fmt(item["tau"]), fmt(item["p_value"])
            )
    console.print(taus)
    _print_reversals(document["reversals"], "ranking reversals")
    replicates = document.get("replicates")
    if not replicates:
        return
    groups = "; ".join(f"{g}: {len(names)}" for g, names in replicates["groups"].items())
    title = f"across replicate trainings ({groups}): mean ± seed SD"
    console.print(_ranking_table(document, replicates, title))
    _print_reversals(replicates["reversals"], "reversals between architectures (seeds and samples)")


def _ranking_table(document: dict[str, Any], section: dict[str, Any], title: str) -> Any:
    """Per metric (rows) and method (columns): the ranking, most stable first, with the means
    (and the seed-to-seed SD where the section has replicates)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for method in document["methods"]:
        table.add_column(method)
    for metric in document["metrics"]:
        cells = []
        for method in document["methods"]:
            r = section["rankings"][method][metric]
            sd = r.get("seed_sd", {})
            cells.append(
                " > ".join(
                    f"{n} ({fmt(r['means'][n])}"
                    + (f" ± {fmt(sd[n])})" if sd.get(n) is not None else ")")
                    for n in r["ranking"]
                )
                or "-"
            )
        table.add_row(metric, *cells)
    return table


def _print_reversals(reversals: list[dict[str, Any]], title: str) -> None:
    from rich.table import Table

    if not reversals:
        console.print(f"no {title}")
        return
    rev = Table(title=f"{title} (confidence = min of both orders' probabilities)")
    for col in ("metric", "pair", "orders", "confidence"):
        rev.add_column(col)
    for r in reversals:
        orders = "; ".join(
            f"{m}: {o['more_stable']} ({fmt(o['probability'], 2)})" for m, o in r["orders"].items()
        )
        mark = " *" if r["confident"] else ""
        rev.add_row(r["metric"], " / ".join(r["pair"]), orders, fmt(r["confidence"], 2) + mark)
    console.print(rev)


# --------------------------------------------------------------------------- gate verdicts


def print_verdict(verdict: dict[str, Any]) -> None:
    """The verdict as a table: one row per expanded check, grouped by rule."""
    from rich import box
    from rich.table import Table

    from worker.results.gate import required_text

    outcome = str(verdict.get("verdict")).upper()
    table = Table(
        title=escape(f"camdrift gate: {outcome} — {verdict.get('reason', '')}"),
        box=box.SIMPLE_HEAD,
    )
    for column in ("rule", "method", "class", "n", "observed", "result"):
        table.add_column(column, justify="right" if column in ("n", "observed") else "left")
    n_inc, minimum = verdict.get("n_included"), verdict.get("min_samples")
    enough = int(n_inc or 0) >= int(minimum or 0)
    table.add_row(
        f"min_samples >= {minimum}",
        "",
        "",
        str(n_inc),
        "",
        "[green]pass[/]" if enough else "[yellow]too few samples[/]",
        end_section=True,
    )
    checks = list(verdict.get("rules") or [])
    groups = [_rule_of(c) for c in checks]
    position = 0
    for i, check in enumerate(checks):
        # row within the current run of one rule's checks (failing checks come first, so one
        # rule's checks may appear in several runs; each run is labelled)
        position = position + 1 if i and groups[i - 1] == groups[i] else 0
        label = (
            escape(check["name"])
            if position == 0
            else f"[dim]{escape(check['metric'])} {check['stat']} {required_text(check)}[/]"
            if position == 1
            else ""
        )
        last = i == len(checks) - 1 or groups[i + 1] != groups[i]
        passed, observed = check.get("passed"), check.get("observed")
        result = (
            "[green]pass[/]"
            if passed is True
            else "[bold red]FAIL[/]"
            if passed is False
            else f"[yellow]n/a: {escape(check.get('reason'))}[/]"
        )
        table.add_row(
            label,
            escape(check.get("method")),
            escape(check.get("class")),
            "" if check.get("n") is None else str(check["n"]),
            "–" if observed is None else f"{observed:.3f}",
            result,
            end_section=last,
        )
    line_console.print(table)


def _rule_of(check: dict[str, Any]) -> tuple[Any, ...]:
    return (check["name"], check["metric"], check["stat"], check["op"], check["value"])
