"""Hypothesis settings for the whole suite.

No deadline (a first NumPy or regex call can be slow) and the failing example is
printed so it can be replayed. Under CI (CI=true) the examples are derandomized:
each run of CI tries the same examples, so its verdict is reproducible; local runs
keep drawing new ones, which is how new edge cases get found.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "project", deadline=None, print_blob=True, derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.load_profile("project")
