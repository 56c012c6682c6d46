"""infra/docker/Dockerfile against the repository: packages, pins and the rules in CONVENTIONS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "infra" / "docker" / "Dockerfile.dockerignore"


def instructions(text: str) -> list[str]:
    """Logical instructions: comments dropped, continuation lines joined."""
    out: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            out.append(re.sub(r"\s+", " ", current).strip())
            current = ""
    return out


@pytest.fixture(scope="module")
def stages() -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    name = ""
    for ins in instructions(DOCKERFILE.read_text()):
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", ins, re.I)
        if m:
            name = m.group(2) or m.group(1)
            result[name] = [ins]
        elif name:
            result[name].append(ins)
    return result


def makefile_packages() -> list[str]:
    m = re.search(r"^PACKAGES\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile has no PACKAGES"
    return m.group(1).split()


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("==")[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_stages_and_base_image(stages: dict[str, list[str]]) -> None:
    assert {"base", "cpu", "gpu"} <= set(stages)
    assert stages["cpu"][0].endswith("FROM base AS cpu") and stages["gpu"][0].endswith("FROM base AS gpu")
    assert "python:3.11-slim" in DOCKERFILE.read_text()


def test_system_libraries_for_text_rendering(stages: dict[str, list[str]]) -> None:
    apt = " ".join(i for i in stages["base"] if "apt-get install" in i)
    for package in ("fonts-noto-core", "fonts-dejavu-core", "libfribidi0", "libraqm0"):
        assert package in apt.split(), package


def test_every_package_is_built_into_the_image(stages: dict[str, list[str]]) -> None:
    body = " ".join(ins for stage in stages.values() for ins in stage)
    for package in makefile_packages():
        assert re.search(rf"COPY {re.escape(package)}/? ", body), f"{package} is not copied"
        assert re.search(rf"\./{re.escape(package)}(\s|$)", body), f"{package} is not built"
        assert (ROOT / package / "pyproject.toml").is_file(), f"{package}/pyproject.toml is missing: the build fails"
    assert " -e " not in body, "the image installs packages, not editable checkouts"


def test_torch_pin_and_source(stages: dict[str, list[str]]) -> None:
    torch = [i for i in stages["gpu"] if re.search(r"pip install .*\btorch==", i)]
    assert len(torch) == 1, "gpu: exactly one torch install"
    assert f"torch=={pinned('torch')}" in torch[0] and "-c " in torch[0]
    assert "download.pytorch.org/whl/cpu" not in torch[0], "gpu: PyPI's CUDA build"


def test_each_image_installs_only_its_roles(stages: dict[str, list[str]]) -> None:
    """The CPU image carries no torch/diffusers (no GPU package); the GPU image no database layer."""
    cpu = " ".join(re.findall(r"pip install [^&]*", " ".join(stages["cpu"])))
    gpu = " ".join(re.findall(r"pip install [^&]*", " ".join(stages["gpu"])))
    assert not re.search(r"\btorch\b", cpu) and "atelier[gpu]" not in cpu and "*.whl" not in cpu
    assert "find_spec('torch')" in " ".join(stages["cpu"]), "the CPU image checks it carries no torch"
    assert '"atelier[api,orchestrator,planner,renderer]"' in cpu
    assert '"atelier[gpu]"' in gpu and "*.whl" not in gpu
    extras = (ROOT / "atelier" / "pyproject.toml").read_text()
    gpu_extra = re.search(r'^gpu = \[(.*)\]$', extras, re.M)
    assert gpu_extra and set(re.findall(r'"([^"]+)"', gpu_extra.group(1))) == {"atelier-gpu", "atelier-provenance"}


def test_no_torchvision_anywhere() -> None:
    assert not any("torchvision" in ins for ins in instructions(DOCKERFILE.read_text()))


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_runtime_stage(stages: dict[str, list[str]], target: str) -> None:
    body = stages[target]
    installs = " ".join(i for i in body if "pip install" in i)
    if target == "gpu":  # the watermark role's cross-check decoder, without its GUI OpenCV
        assert f"--no-deps invisible-watermark=={pinned('invisible-watermark')}" in installs
    assert "-c /etc/atelier/constraints.txt" in installs
    users = [i.split()[1] for i in body if i.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), f"{target} runs as root"
    assert [i for i in body if i.startswith("ENTRYPOINT")] == ['ENTRYPOINT ["atelier"]']


def test_dockerignore_keeps_the_venv_out_and_the_packages_in() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "**", "exclude everything, then re-include what the image needs"
    for package in ["constraints.txt", *makefile_packages()]:
        top = package.split("/")[0]
        assert f"!{top}/" in lines or f"!{top}" in lines, f"{top} is not re-included"
    assert "!.venv" not in lines and "**/*.egg-info" in lines
