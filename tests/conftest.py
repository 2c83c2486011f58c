"""Shared fixtures. Real data lives in ../shared beside the checkout; point
SQUISH_SHARED at another copy to override."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SQUISH_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent (set SQUISH_SHARED)")
    return SHARED


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def squish_cache(tmp_path, monkeypatch) -> Path:
    """A private image cache ($SQUISH_CACHE) for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("SQUISH_CACHE", str(path))
    return path
