"""``camdrift fleet``'s process plan and supervision, without a GPU: it sees N devices, starts N
pinned processes, restarts one that dies, gives up on one that keeps dying, and stops all on
SIGTERM. The workers here are stand-in Python processes that record their environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.runtime.fleet import Fleet, Member, plan, visible_devices


def test_devices_come_from_cuda_visible_devices_or_nvidia_smi() -> None:
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "0,1, 3"}, lambda: ["x"]) == ["0", "1", "3"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}, lambda: ["x"]) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "-1"}, lambda: ["x"]) == []
    assert visible_devices({}, lambda: ["GPU-a", "GPU-b"]) == ["GPU-a", "GPU-b"]


def test_one_pinned_worker_per_device_with_its_own_name() -> None:
    members = plan(["GPU-a", "GPU-b", "GPU-c", "GPU-d"], host="node7", python="py")
    assert [m.env["CUDA_VISIBLE_DEVICES"] for m in members] == ["GPU-a", "GPU-b", "GPU-c", "GPU-d"]
    assert [m.name for m in members] == [f"camdrift-gpu{i}@node7" for i in range(4)]
    for m in members:
        argv = list(m.argv)
        assert argv[:3] == ["py", "-m", "celery"]
        assert argv[argv.index("--pool") + 1] == "solo"
        assert argv[argv.index("--prefetch-multiplier") + 1] == "1"
        assert argv[argv.index("-n") + 1] == m.name
        assert m.env["CAMDRIFT_DEVICE"] == "cuda"
    (cpu,) = plan([], host="node7")
    assert cpu.device is None and cpu.env == {"CUDA_VISIBLE_DEVICES": ""}


STAND_IN = textwrap.dedent(
    """
    import json, os, sys, time
    out = sys.argv[1]
    with open(os.path.join(out, f"{os.getpid()}.json"), "w") as fh:
        json.dump({"device": os.environ.get("CUDA_VISIBLE_DEVICES")}, fh)
    time.sleep(120)
    """
)


def _members(tmp_path: Path, devices: list[str]) -> list[Member]:
    return [
        Member(
            i,
            d,
            f"w{i}",
            (sys.executable, "-c", STAND_IN, str(tmp_path)),
            {"CUDA_VISIBLE_DEVICES": d},
        )
        for i, d in enumerate(devices)
    ]


def _seen(tmp_path: Path, n: int, timeout: float = 20.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = list(tmp_path.glob("*.json"))
        if len(files) >= n:
            return {int(f.stem): json.loads(f.read_text())["device"] for f in files}
        time.sleep(0.05)
    raise AssertionError(f"{len(list(tmp_path.glob('*.json')))} of {n} workers started")


def test_starts_n_restarts_the_dead_one_and_stops_all(tmp_path) -> None:
    fleet = Fleet(_members(tmp_path, ["0", "1", "2"]), restart_delay_s=0, stop_timeout_s=10)
    fleet.start()
    try:
        seen = _seen(tmp_path, 3)
        assert sorted(seen.values()) == ["0", "1", "2"]
        victim = fleet.running[1].process
        victim.kill()
        victim.wait()
        assert fleet.poll() == [1]
        seen = _seen(tmp_path, 4)
        new = fleet.running[1].process.pid
        assert new != victim.pid and seen[new] == "1"  # the same device again
        assert fleet.poll() == []  # the others were never touched
    finally:
        fleet.stop()
    assert all(run.process.poll() is not None for run in fleet.running.values())


def test_gives_up_on_a_worker_that_keeps_dying(tmp_path) -> None:
    dying = Member(0, "0", "w0", (sys.executable, "-c", "raise SystemExit(3)"), {})
    fleet = Fleet([dying], restart_delay_s=0, max_restarts=2, window_s=60)
    fleet.start()
    restarts = 0
    for step in range(10):
        fleet.running[0].process.wait()
        restarts += len(fleet.poll(now=float(step)))
    assert restarts == 2 and fleet.given_up == {0}
    fleet.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_stops_every_worker(tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from worker.runtime.fleet import Fleet, Member
        argv = (sys.executable, "-c", {STAND_IN!r}, {str(tmp_path)!r})
        members = [Member(i, str(i), f"w{{i}}", argv, {{}}) for i in range(2)]
        raise SystemExit(Fleet(members, stop_timeout_s=10).run(interval_s=0.1))
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", script])
    try:
        pids = list(_seen(tmp_path, 2))
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_cli_dry_run_prints_the_plan(monkeypatch) -> None:
    from service.cli import app

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    result = CliRunner().invoke(app, ["fleet", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "camdrift-gpu0@" in result.output and "camdrift-gpu1@" in result.output
    monkeypatch.delenv("CAMDRIFT_BROKER_URL", raising=False)
    no_broker = CliRunner().invoke(app, ["fleet"], env={"CAMDRIFT_BROKER_URL": ""})
    assert no_broker.exit_code == 2 and "CAMDRIFT_BROKER_URL" in no_broker.output
