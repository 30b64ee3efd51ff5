"""``camdrift probe``: the phantom benchmark's behavioural ground truth for one checkpoint.

Does the model rely on the shortcut? The same test images are rendered again with the shortcut
present, removed and moved, and the shortcut class's recall and score compared
(:mod:`training.shortcut_probe`). Torch is imported inside the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.options import DEVICE_DEFAULT, Device
from service.cli.output import EXIT_USAGE, USER_ERRORS, console, error, fmt, line_err_console


def probe(
    checkpoint: Annotated[Path, typer.Option(help="The model to probe (.safetensors)")],
    data: Annotated[
        Path, typer.Option(help="Phantom folder made with `camdrift phantoms --shortcut ...`")
    ],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the result as JSON here")
    ] = None,
    split: Annotated[str, typer.Option(help="Whose images to re-render: test, val or train")] = (
        "test"
    ),
    device: Device = DEVICE_DEFAULT,
) -> None:
    """Does a model rely on the phantoms' shortcut? Recall and score of the shortcut class with
    the shortcut present, removed and moved, on the same images (the benchmark's ground truth)."""
    try:
        result = _probe(checkpoint, data, json_out, split, device)
    except USER_ERRORS as exc:  # one line whatever the terminal width, for CI logs
        error(exc, line_err_console)
        raise typer.Exit(EXIT_USAGE) from None
    _print(result.to_dict())
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        console.print(f"wrote {json_out}")


def _probe(checkpoint: Path, data: Path, json_out: Path | None, split: str, device: str) -> Any:
    if json_out is not None and json_out.is_dir():
        raise ValueError(f"--json {json_out} is a directory; name a file")
    from training.shortcut_probe import probe_checkpoint

    return probe_checkpoint(checkpoint, data, split=split, device=device)


def _print(result: dict[str, Any]) -> None:
    from rich.table import Table

    cls = result["shortcut_class"]
    table = Table(
        title=f"{result['shortcut_kind']} shortcut on '{cls}' ({result['split']} split, "
        f"{result['n_shortcut']} of {result['n_images']} images)"
    )
    for col in ("condition", f"recall {cls}", f"mean score {cls}", "accuracy", f"others -> {cls}"):
        table.add_column(col, justify="right")
    for name, row in result["conditions"].items():
        table.add_row(
            name,
            fmt(row["recall"]),
            fmt(row["mean_score"]),
            fmt(row["accuracy"]),
            fmt(row["pulled_rate"]),
        )
    console.print(table)
    verdict = "RELIES on the shortcut" if result["relies_on_shortcut"] else "does not rely on it"
    moved = result["moved_recall_drop"]
    console.print(
        f"{verdict}: recall drop {result['recall_drop']:+.3f}, score drop "
        f"{result['score_drop']:+.3f}"
        + ("" if moved is None else f", moved drop {moved:+.3f}")
        + f"; McNemar one-sided p = {result['p_value']:.3g} "
        f"({result['lost_without']} lost / {result['gained_without']} gained without it)",
        highlight=False,
    )
    console.print(f"rule: {result['rule']}", highlight=False)
