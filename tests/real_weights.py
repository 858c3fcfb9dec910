"""The one gate for tests that check values against the real, cached weight files.

Locally a missing file skips the test with the command that fetches it; in CI (``CI`` set,
as `.ci/run` runs) it fails, because `make test` fetches the files before pytest runs.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from csa import weights


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_cached(name: str, *, required_in_ci: bool = True) -> list[Path]:
    """The cached files of weight ``name``, or skip / fail as above."""
    paths = weights.cached_paths(name)
    if not paths or not all(p.is_file() for p in paths):
        if in_ci() and required_in_ci:
            pytest.fail(f"CI runs the value tests: `{weights.fetch_command(name)}` must run before pytest (make test does)")
        pytest.skip(f"the {name} weights are not cached: {weights.fetch_command(name)}")
    return paths
