"""Shared test setup: every test draws fresh random inputs from a seed that is printed
when it fails (set CONTNET_TEST_SEED to replay one); CUDA tests skip without a GPU."""

import os
import random
import sys

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_seed(request):
    seed = int(os.environ.get("CONTNET_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(seed)
    random.seed(seed)
    request.node.contnet_seed = seed
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "contnet_seed", None)
    if report.failed and seed is not None:
        report.sections.append(("seed", f"replay with CONTNET_TEST_SEED={seed}"))


def pytest_terminal_summary(terminalreporter):
    """How many property-based cases ran (tests/test_properties.py)."""
    mod = sys.modules.get("tests.test_properties")
    if mod is not None and mod.CASES:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(mod.CASES.items()))
        terminalreporter.write_line(f"property-based cases run: {counts}")
