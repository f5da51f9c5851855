"""eval/preemption_ratio.py: with a cache that holds the whole batch nothing is preempted, so the
ratio is exactly 1; with a small one Sarathi preempts and is never costlier than reserving each
request's whole length by more than rounding."""
from __future__ import annotations

import pytest

from eval import preemption_ratio

pytestmark = pytest.mark.usefixtures("shared_data")


def test_ratio_is_one_when_everything_fits_and_the_report_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(preemption_ratio, "KV_BLOCKS", (256, 8192))
    assert preemption_ratio.main(["--requests", "12", "--seeds", "2", "--workers", "2", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "preemption.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| conversation") or line.startswith("| summarisation")]
    assert len(rows) == 4
    for row in rows:
        on, off = (float(row.split("|")[i].split()[0]) for i in (8, 9))
        assert float(row.split("|")[11]) <= on  # the bound is never above a schedule
        for ratio in (on, off):
            assert ratio == 1.0 if "| 8192 |" in row else ratio <= 1.05
    assert "## What it shows" in text and "nothing is preempted" in text
    assert (tmp_path / "img" / "preemption_ratio.png").stat().st_size > 1000
