"""Fixtures for the deploy checks: the repository, the built binaries and what they accept.

The binaries come from CALLBRIDGE_BIN_DIR (default: target/debug of this checkout); build them
with `cargo build -p bridge -p agent -p devroom --bins`.
"""

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import drift  # noqa: E402

REPO = HERE.parent.parent
DEPLOY = REPO / "deploy"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def deploy_dir() -> Path:
    return DEPLOY


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    d = Path(os.environ.get("CALLBRIDGE_BIN_DIR", REPO / "target" / "debug"))
    missing = [b for b in drift.BINARIES if not (d / b).is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not built in {d}: cargo build -p bridge -p agent -p devroom --bins")
    return d


@pytest.fixture(scope="session")
def binaries(bin_dir, repo):
    return drift.load_binaries(bin_dir, repo)


@pytest.fixture(scope="session")
def metric_names(repo):
    return drift.defined_metrics(repo)
