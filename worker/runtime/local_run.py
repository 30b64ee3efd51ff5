"""``camdrift drift``: a whole audit in this process, no server, files next to the report."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worker.engine.audit import Audit, AuditConfig, config_dict, describe_dataset, describe_model
from worker.results.consistency import MAPS_GLOB, add_consistency
from worker.results.gate import Policy, evaluate_policy
from worker.results.report import build_report

log = logging.getLogger("camdrift.drift")


def artifact_paths(out: Path) -> tuple[Path, Path]:
    """(per-sample rows file, raw maps folder) that belong to report ``out``."""
    stem = out.with_suffix("")
    return stem.with_name(stem.name + ".samples.jsonl"), stem.with_name(stem.name + ".maps")


def clear_maps(maps_dir: Path) -> int:
    """Remove the map files an earlier run to the same report left in ``maps_dir`` (and its
    unfinished temporary files), so this run's consistency reads its own maps only; other
    files stay. Returns how many were removed."""
    if not maps_dir.is_dir():
        return 0
    stale = [*maps_dir.glob(MAPS_GLOB), *maps_dir.glob(".rows-*.tmp.npz")]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def run_audit(
    baseline: Path,
    candidate: Path,
    data: Path,
    config: AuditConfig,
    out: Path,
    progress: Callable[[int, int], None] | None = None,
    policy: Policy | None = None,
    replica: Path | None = None,
    trajectory: Sequence[Path] = (),
) -> dict[str, Any]:
    """Run the audit, write ``out`` (report), its rows (JSON lines) and raw maps.

    With a gate ``policy`` the report carries its verdict (``report["verdict"]``); with a
    baseline ``replica`` (same protocol, other seed) it carries the replica floor; with
    ``trajectory`` checkpoints (between baseline and candidate, in order) the drift along them.
    """
    audit = Audit(baseline, candidate, data, config, replica=replica, trajectory=trajectory)
    rows_path, maps_dir = artifact_paths(out)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, audit.total)

    log.info(
        "audit start samples=%d methods=%s filter=%s",
        audit.total,
        ",".join(audit.config.methods),
        audit.config.sample_filter,
    )
    removed = clear_maps(maps_dir)
    if removed:
        log.info("removed %d map files of an earlier run maps=%s", removed, maps_dir)
    rows = audit.compute(progress=tick, maps_dir=maps_dir)
    rows, _ = add_consistency(rows, maps_dir, audit.config.methods, audit.config.metrics)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(rows_path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    report = build_report(
        rows,
        models={
            "baseline": describe_model(audit.baseline, str(baseline)),
            "candidate": describe_model(audit.candidate, str(candidate)),
            **({"replica": describe_model(audit.replica, str(replica))} if replica else {}),
        },
        dataset=describe_dataset(audit, str(data)),
        config=config_dict(audit.config),
        samples_location=rows_path.name,
        trajectory=[
            describe_model(m, str(p)) for m, p in zip(audit.trajectory, trajectory, strict=True)
        ],
    )
    if policy is not None:
        report["verdict"] = evaluate_policy(report, policy)
    out.write_text(json.dumps(report, indent=2))
    log.info(
        "audit done included=%d verdict=%s report=%s",
        report["subsets"]["included"],
        (report["verdict"] or {}).get("verdict"),
        out,
    )
    return report
