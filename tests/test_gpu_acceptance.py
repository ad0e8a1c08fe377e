"""benchmarks/gpu_acceptance.py in its reduced CPU form (--device cpu), so that the GPU acceptance command
cannot rot between the times someone has a GPU: every part runs and writes its table."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_reduced_acceptance_report_has_every_part(tmp_path: Path) -> None:
    acceptance = runpy.run_path(str(ROOT / "benchmarks" / "gpu_acceptance.py"))
    report = tmp_path / "REPORT.md"
    assert acceptance["main"](["--device", "cpu", "--out", str(report)]) == 0
    text = report.read_text()
    assert "torch " in text and "device: CPU" in text
    for part in ("1. Tests", "2. Training step", "3. Seeds in one process", "4. Graphed against eager",
                 "5. Resume on this device"):
        assert f"## {part}" in text and f"{part}" in text
    assert text.count(": ok\n") == 5
    assert "| vector | fp32 | eager |" in text and "| atari | fp32 | eager |" in text
    assert "| graphed |" in text and "| eager |" in text
    assert text.count("| yes | finished 120 steps |") == 2
    assert text.rstrip().endswith("every part ok")
