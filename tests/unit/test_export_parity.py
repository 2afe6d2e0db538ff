"""The export parity verdict (``whisper_tune.export.parity.compare``): one-sided, in WER points."""

from __future__ import annotations

from typing import Any

import pytest

from whisper_tune.export.parity import METRIC, compare


def scored(wer: float, texts: list[str]) -> dict[str, Any]:
    return {"metrics": {METRIC: wer}, "texts": texts}


@pytest.mark.parametrize(
    ("export_wer", "passed"),
    [(20.0, True), (22.0, True), (22.01, False), (15.0, True), (float("nan"), False)],
)
def test_an_export_fails_only_when_it_is_worse_than_the_tolerance(export_wer: float, passed: bool) -> None:
    verdict = compare(scored(20.0, ["a b", "c"]), scored(export_wer, ["a b", "d"]), tolerance=2.0)
    assert verdict["passed"] is passed
    assert verdict["source_wer"] == 20.0 and verdict["tolerance"] == 2.0
    assert verdict["identical_transcripts"] == 1 and verdict["clips"] == 2
    if passed:
        assert verdict["delta"] == pytest.approx(export_wer - 20.0)
