"""The published figures: README blocks generated from committed results that record
where they come from, and miniatures of each published run that give their committed
figures (bench/figures.py)."""

import importlib.util
import json
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("figures", ROOT / "bench" / "figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)


def test_every_generated_readme_block_is_what_its_result_gives():
    text = figures.README.read_text()
    blocks = figures.readme_blocks(text)
    assert set(blocks) == set(figures.BLOCKS)
    for name, body in blocks.items():
        assert body == figures.BLOCKS[name](), f"README block {name!r} is stale: make figures"


@pytest.mark.parametrize("name", sorted({f for fs in figures.FILES.values() for f in fs}))
def test_every_published_result_records_where_it_comes_from(name):
    d = json.loads((figures.RESULTS / name).read_text())
    prov = d.get("provenance", d)  # the benchmarks keep it at the top level
    missing = [k for k in figures.PROVENANCE if not prov.get(k)]
    assert not missing, f"{name} lacks {missing}"
    assert prov["command"].startswith("contnet ")
    assert "+dirty" not in prov["commit"], f"{name} was made from uncommitted code"


def _close(got, want, where="figures"):
    """Equal, numbers to 1e-6 relative (accuracies differ by a whole image or not at all;
    drifts, errors and sums carry a float's rounding across machines)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            _close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("name", list(figures.MINIATURES))
def test_a_miniature_of_each_published_run_gives_its_committed_figures(name, tmp_path):
    committed = json.loads((figures.MINI / f"{name}.json").read_text())
    _close(figures.run_miniature(name, tmp_path), committed["figures"], name)
