"""scripts/gpu-check.sh (the GPU record) on a machine without an NVIDIA GPU: a clear refusal.

``NVIDIA_SMI`` names the nvidia-smi the script asks; here it is one that is missing, one that
fails (a driver without a GPU) and one that lists no GPU. The GPU run itself is recorded in
docs/gpu.md by whoever runs the script on a GPU machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("smi", ["/nonexistent/nvidia-smi", "false", "echo"])
def test_refuses_without_a_gpu(smi: str, tmp_path: Path) -> None:
    record = ROOT / "docs" / "gpu.md"
    before = record.read_bytes() if record.exists() else None
    out = _run(NVIDIA_SMI=smi, GPU_CHECK_WORKDIR=str(tmp_path / "work"))
    assert out.returncode == 3
    assert "no NVIDIA GPU here" in out.stderr and "--cpu-dry-run" in out.stderr
    assert out.stdout == ""  # refused before doing anything
    assert not (tmp_path / "work").exists()
    assert (record.read_bytes() if record.exists() else None) == before


def test_refuses_an_unknown_argument() -> None:
    out = _run("--gpu", NVIDIA_SMI="/nonexistent/nvidia-smi")
    assert out.returncode == 2 and "unknown argument '--gpu'" in out.stderr
