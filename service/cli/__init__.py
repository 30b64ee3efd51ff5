"""The ``camdrift`` command line (``camdrift = "service.cli:app"``).

One module per group of commands: :mod:`~service.cli.train` (phantoms, train, finetune,
pretrain), :mod:`~service.cli.audit` (drift, study, report-schema), :mod:`~service.cli.demo`,
:mod:`~service.cli.serve` (serve, worker, config, db) and :mod:`~service.cli.gate`; shared
option types in :mod:`~service.cli.options`, printing in :mod:`~service.cli.output`.

Heavy modules (torch, the engine) are imported inside the commands that need them, so
``camdrift --help`` and the service commands start fast and the API process stays torch-free.
Every user error ends with a one-line message and exit code 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from service.cli import audit, calibrate, demo, gate, probe, serve, train
from training.logs import configure_logging

app = typer.Typer(
    name="camdrift",
    help="Audit attribution drift between a transfer-learned and a fine-tuned classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
) -> None:
    configure_logging(log_level)


# in the order `camdrift --help` lists them
app.command()(train.phantoms)
app.command()(train.train)
app.command()(train.finetune)
app.command()(train.pretrain)
app.command("import")(train.import_checkpoint)
app.command()(audit.drift)
app.command()(demo.demo)
app.command()(serve.serve)
app.command("worker")(serve.run_worker)
app.command()(serve.fleet)
app.command()(serve.config)
app.command("report-schema")(audit.report_schema)
app.command()(audit.study)
app.command("gate")(gate.gate)
app.command()(calibrate.calibrate)
app.command()(probe.probe)
app.add_typer(serve.db_app, name="db")

__all__ = ["app"]
