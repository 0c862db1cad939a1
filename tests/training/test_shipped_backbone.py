"""The pre-trained `small` backbone the repository ships (assets/backbone-small, what
`make demo` uses) is what its log says: it loads, its weights are the ones the run saved,
and its recorded command moves the same way when re-run for a few steps.

Skipped where no backbone is shipped.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from pretrain_helpers import logged_settings

from modeling.backbone import CONFIG_FILE, VLBackbone
from modeling.config import preset
from training.pretrain import LOG_FILE, prepare, train_losses

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "backbone-small"
CHECKED_STEPS = 3
# Relative: float sums in another order (thread count, SIMD width) move a loss by ~1e-6
# after 3 steps; a different seed, data or recipe moves it by far more than 1e-3.
LOSS_TOLERANCE = 1e-3

pytestmark = pytest.mark.skipif(not (SHIPPED / CONFIG_FILE).is_file(),
                                reason="no backbone shipped in assets/backbone-small")


def _log() -> dict:
    return json.loads((SHIPPED / LOG_FILE).read_text())


def test_the_shipped_backbone_loads_with_the_fingerprint_its_run_recorded():
    backbone = VLBackbone.from_pretrained(SHIPPED)
    log = _log()
    assert backbone.config.to_dict() == preset("small").to_dict()
    assert backbone.fingerprint() == log["fingerprint"]
    settings = logged_settings(log["settings"])
    assert len(log["loss"]) == settings.steps
    assert log["command"].startswith("train-adapter pretrain ")
    assert f"--steps {settings.steps} " in log["command"]
    report = json.loads((SHIPPED / "pretrain_report.json").read_text())
    assert set(report) == {"vqa", "gqa", "tvc"} and "motion" in report["tvc"]


def test_a_short_pretrain_from_the_recorded_settings_reproduces_the_first_losses(tmp_path):
    log = _log()
    settings = logged_settings(log["settings"])
    backbone, cache, train = prepare(tmp_path, settings)
    losses = list(itertools.islice(train_losses(backbone, cache, train, settings),
                                   CHECKED_STEPS))
    assert losses == pytest.approx(log["loss"][:CHECKED_STEPS], rel=LOSS_TOLERANCE)
