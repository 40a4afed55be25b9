"""Test-wide settings: hypothesis runs derandomised, so every run of the
suite draws the same examples (CI is never flaky because of a new draw);
``HYPOTHESIS_PROFILE=explore`` draws fresh ones locally."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
