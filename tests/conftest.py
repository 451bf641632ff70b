"""pytest configuration: one seeded random generator for every test.

The seed is printed in the report header.  Override it with the environment
variable GLUON_HMM_TEST_SEED (an integer, or "random" to draw a fresh one),
e.g. to reproduce a failure seen elsewhere.
"""

import os
import zlib

import numpy as np
import pytest

_DEFAULT_SEED = 20240611


def _session_seed():
    value = os.environ.get("GLUON_HMM_TEST_SEED", "").strip()
    if not value:
        return _DEFAULT_SEED
    if value.lower() == "random":
        return int(np.random.SeedSequence().entropy % (2 ** 31))
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(
            f"GLUON_HMM_TEST_SEED must be an integer or 'random', got {value!r}") from None


SEED = _session_seed()


def pytest_report_header(config):
    return f"gluon_hmm test seed: {SEED} (set GLUON_HMM_TEST_SEED to override)"


@pytest.fixture
def rng(request):
    """numpy Generator seeded from the session seed and the test's id.

    Each test gets its own stream, independent of which other tests run.
    """
    return np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])
