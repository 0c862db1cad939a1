"""Reading a pre-training run's log back, for the tests that re-run it."""

from __future__ import annotations

from training.pretrain import PretrainSettings
from training.synthetic.generate import SplitSizes


def logged_settings(fields: dict) -> PretrainSettings:
    """The settings `write_log` recorded (`asdict` turned the tuples into lists)."""
    return PretrainSettings(**{**fields, "sizes": SplitSizes(**fields["sizes"]),
                               "mix": tuple((name, float(w)) for name, w in fields["mix"])})
