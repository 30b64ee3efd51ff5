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
