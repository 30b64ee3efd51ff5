"""The API image installs deploy/api-requirements.txt, not the project: every dependency the
pyproject lists for the service (the torch-free part) must be there too, or the image starts
without /docs assets, checkpoint headers or report pages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_api_image_requirements_cover_the_service_dependencies() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    deps = tomllib.loads(text)["project"]["dependencies"]
    block = text.split("dependencies = [", 1)[1].split("# compute", 1)[0]
    service = [d for d in deps if f'"{d}"' in block]
    assert "fastapi>=0.110" in service and not any(_name(d) == "torch" for d in service)
    lines = (ROOT / "deploy" / "api-requirements.txt").read_text().splitlines()
    image = {_name(line) for line in lines if line.strip() and not line.startswith("#")}
    missing = sorted(_name(d) for d in service if _name(d) not in image)
    assert not missing, f"deploy/api-requirements.txt lacks {missing}"
    assert "torch" not in image


def _compose() -> list[str] | None:
    """``docker compose`` (the plugin) or ``docker-compose`` (v1), whichever is here."""
    import shutil
    import subprocess

    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_accepts_the_file_and_gives_the_worker_every_gpu(tmp_path) -> None:
    """``docker compose config`` validates the file against the compose schema (no engine
    needed); the worker reserves all GPUs and runs one pinned worker per GPU (camdrift fleet),
    not ``--scale`` replicas that all land on the first GPU."""
    import subprocess

    from tests.ci import skip_or_fail

    compose = _compose()
    if compose is None:
        skip_or_fail("neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run(
        [*compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    import yaml

    config = yaml.safe_load(result.stdout)
    (device,) = config["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == "all" and device["capabilities"] == ["gpu"]
    dockerfile = (ROOT / "deploy" / "worker.Dockerfile").read_text()
    assert 'CMD ["camdrift", "fleet"]' in dockerfile
    broken = tmp_path / "compose.yml"
    broken.write_text(
        (ROOT / "docker-compose.yml").read_text().replace("reservations:", "reservatons:")
    )
    bad = subprocess.run(
        [*compose, "-f", str(broken), "config", "-q"], capture_output=True, timeout=60, cwd=ROOT
    )
    assert bad.returncode != 0  # the check can fail
