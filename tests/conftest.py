"""Shared test setup.

Deterministic by default: every test starts from a seed fixed by its own name (set
``CONTNET_TEST_SEED`` to run all of them from another), and the property-based tests run
under the derandomized hypothesis profile ``ci``, so ``make test`` runs the same cases
every time. ``make fuzz`` selects the profile ``fuzz`` (fresh seeds, many more cases) and
prints how to replay what fails. CUDA tests skip without a GPU.
"""

import os
import random
import zlib

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

import contnet

from .helpers import CASES

# module-level randomness of the test files (parameter lists) is fixed too
torch.manual_seed(0)
random.seed(0)

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
# the suite: the same cases on every run, no example database to replay from
settings.register_profile("ci", derandomize=True, database=None, max_examples=150, **_COMMON)
# make fuzz: fresh seeds, many cases, failures printed with their reproduction blob
settings.register_profile(
    "fuzz",
    derandomize=False,
    database=None,
    max_examples=2500,
    print_blob=True,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    **_COMMON,
)
settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _seed_of(nodeid: str) -> int:
    env = os.environ.get("CONTNET_TEST_SEED")
    return int(env) if env else zlib.crc32(nodeid.encode())


@pytest.fixture(autouse=True)
def fixed_seed(request):
    seed = _seed_of(request.node.nodeid)
    torch.manual_seed(seed)
    random.seed(seed)
    request.node.contnet_seed = seed
    yield seed


@pytest.fixture(autouse=True)
def fixed_cost_latency(monkeypatch):
    """Tests time nothing: compression's latency is a fixed cost instead (the blocks' rate
    evaluations, weighted by their nodes), so its choices are the same on every run."""

    def latency(model, x, min_run_time=0.3):
        return 1e-3 * sum(
            contnet.schemes.get(b.scheme).stages * b.n_steps * (1 + b.unit.n_basis / 100)
            for b in contnet.block.blocks_of(model)
        )

    monkeypatch.setattr(contnet.evaluation.compression, "measure_latency", latency)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "contnet_seed", None)
    if report.failed and seed is not None:
        report.sections.append(("seed", f"this test ran from seed {seed} (CONTNET_TEST_SEED)"))


def pytest_terminal_summary(terminalreporter, config):
    """How many property-based cases ran per target; under ``fuzz``, how to replay."""
    if CASES:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(CASES.items()))
        terminalreporter.write_line(
            f"property-based cases run: {sum(CASES.values())} ({counts}); "
            f"hypothesis profile {settings.get_current_profile_name()}"
        )
    seed = config.getoption("hypothesis_seed", None)
    if settings.get_current_profile_name() != "fuzz":
        return
    failed = [r.nodeid for r in terminalreporter.stats.get("failed", [])]
    terminalreporter.write_line(f"fuzz seed {seed}: {len(failed)} failing target(s)")
    for nodeid in failed:
        terminalreporter.write_line(
            "replay: python -m pytest -p no:cacheprovider "
            f"'{nodeid}' --hypothesis-profile=fuzz --hypothesis-seed={seed}"
        )
