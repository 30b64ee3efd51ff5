"""One Celery worker process per GPU of this host, pinned, supervised (``camdrift fleet``).

``docker compose up --scale worker=N`` with ``count: 1`` GPU reservations gives every replica
the same first GPU (docker/compose#11863, NVIDIA/nvidia-container-toolkit#521). So the worker
container gets all GPUs of its host and this launcher starts one worker per visible device:
``CUDA_VISIBLE_DEVICES`` set to that device alone, its own node name (``camdrift-gpu<i>@host``),
``--pool solo`` and a prefetch of 1, so a long shard never holds a second one hostage. A worker
that dies is restarted (with a delay, at most ``max_restarts`` times in ``window_s``); SIGTERM
or SIGINT stops every worker (SIGTERM, then SIGKILL after ``stop_timeout_s``) and the launcher.
Without a GPU it starts one CPU worker. Torch-free: devices come from ``CUDA_VISIBLE_DEVICES``
or ``nvidia-smi``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("camdrift.fleet")


@dataclass(frozen=True)
class Member:
    """One worker process of the plan: which device it owns and how it starts."""

    slot: int
    device: str | None  # a CUDA device index or UUID; None: a CPU worker
    name: str  # the Celery node name
    argv: tuple[str, ...]
    env: Mapping[str, str]


def nvidia_smi_devices() -> list[str]:
    """The host's GPUs by UUID (stable across reorderings), [] without nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def visible_devices(
    environ: Mapping[str, str] = os.environ,
    query: Callable[[], list[str]] = nvidia_smi_devices,
) -> list[str]:
    """The devices this host offers: ``CUDA_VISIBLE_DEVICES`` when set (empty or ``-1``: none),
    else what ``nvidia-smi`` lists."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return query()
    devices = [d.strip() for d in value.split(",") if d.strip()]
    return [] if devices[:1] == ["-1"] else devices


def worker_argv(
    name: str, *, queues: str = "camdrift", python: str = sys.executable, loglevel: str = "INFO"
) -> tuple[str, ...]:
    """One fleet member's command: a solo-pool Celery worker taking one task at a time."""
    return (
        python,
        "-m",
        "celery",
        "-A",
        "worker.runtime.tasks",
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        "-Q",
        queues,
        "-n",
        name,
        "--loglevel",
        loglevel,
    )


def plan(
    devices: Sequence[str],
    *,
    queues: str = "camdrift",
    host: str | None = None,
    python: str = sys.executable,
    loglevel: str = "INFO",
) -> list[Member]:
    """One member per device (or one CPU member): argv and the environment it adds."""
    host = host or os.uname().nodename

    def argv(name: str) -> tuple[str, ...]:
        return worker_argv(name, queues=queues, python=python, loglevel=loglevel)

    if not devices:
        name = f"camdrift-cpu@{host}"
        return [Member(0, None, name, argv(name), {"CUDA_VISIBLE_DEVICES": ""})]
    members = []
    for slot, device in enumerate(devices):
        name = f"camdrift-gpu{slot}@{host}"
        env = {"CUDA_VISIBLE_DEVICES": device, "CAMDRIFT_DEVICE": "cuda"}
        members.append(Member(slot, device, name, argv(name), env))
    return members


@dataclass
class _Running:
    member: Member
    process: subprocess.Popen
    restarts: list[float] = field(default_factory=list)  # when it was restarted


class Fleet:
    """Starts the members, restarts the ones that die, stops them all."""

    def __init__(
        self,
        members: Sequence[Member],
        *,
        restart_delay_s: float = 2.0,
        max_restarts: int = 5,
        window_s: float = 300.0,
        stop_timeout_s: float = 30.0,
        spawn: Callable[..., subprocess.Popen] = subprocess.Popen,
    ) -> None:
        self.members = list(members)
        self.restart_delay_s = restart_delay_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.stop_timeout_s = stop_timeout_s
        self.spawn = spawn
        self.running: dict[int, _Running] = {}
        self.given_up: set[int] = set()
        self._stop = False

    def _start(self, member: Member) -> subprocess.Popen:
        env = {**os.environ, **member.env}
        process = self.spawn(list(member.argv), env=env)
        log.info(
            "fleet_worker_started slot=%d device=%s name=%s pid=%d",
            member.slot,
            member.device or "cpu",
            member.name,
            process.pid,
        )
        return process

    def start(self) -> None:
        for member in self.members:
            self.running[member.slot] = _Running(member, self._start(member))

    def poll(self, now: float | None = None) -> list[int]:
        """Restart every member that exited (unless it restarts too often); the slots
        restarted."""
        now = time.monotonic() if now is None else now
        restarted = []
        for slot, run in self.running.items():
            code = run.process.poll()
            if code is None or slot in self.given_up or self._stop:
                continue
            run.restarts = [t for t in run.restarts if now - t < self.window_s]
            if len(run.restarts) >= self.max_restarts:
                self.given_up.add(slot)
                log.error(
                    "fleet_worker_given_up slot=%d name=%s code=%s restarts=%d window_s=%g",
                    slot,
                    run.member.name,
                    code,
                    len(run.restarts),
                    self.window_s,
                )
                continue
            log.warning("fleet_worker_exited slot=%d name=%s code=%s", slot, run.member.name, code)
            if self.restart_delay_s:
                time.sleep(self.restart_delay_s)
            run.process = self._start(run.member)
            run.restarts.append(now)
            restarted.append(slot)
        return restarted

    def stop(self) -> None:
        """SIGTERM every worker (Celery finishes or returns its task), SIGKILL the ones still
        there after ``stop_timeout_s``."""
        self._stop = True
        for run in self.running.values():
            if run.process.poll() is None:
                run.process.terminate()
        deadline = time.monotonic() + self.stop_timeout_s
        for run in self.running.values():
            try:
                run.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("fleet_worker_killed name=%s", run.member.name)
                run.process.kill()
                run.process.wait()
        log.info("fleet_stopped workers=%d", len(self.running))

    def request_stop(self, *_: object) -> None:
        self._stop = True

    def run(self, interval_s: float = 1.0) -> int:
        """Start, supervise until SIGTERM / SIGINT, stop. Exit code 0, or 1 when every
        worker was given up on."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        while not self._stop:
            self.poll()
            if self.given_up and len(self.given_up) == len(self.running):
                log.error("fleet_all_workers_given_up")
                self.stop()
                return 1
            time.sleep(interval_s)
        self.stop()
        return 0
