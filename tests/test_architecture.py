"""The layering of docs/architecture.md: each module imports only from the layers below it, and the
public surface is exactly `asynctts.__all__` (plus `asynctts.testing`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import asynctts
import asynctts.testing

PACKAGE = Path(asynctts.__file__).parent

# module (or package prefix) -> the asynctts modules it may import
ALLOWED: dict[str, set[str]] = {
    "asynctts.protocols": set(),
    "asynctts.errors": set(),
    "asynctts.ledger": set(),
    "asynctts.answers": set(),
    "asynctts.logs": set(),
    "asynctts.hub": set(),
    "asynctts.gc_tuning": {"asynctts.errors"},
    "asynctts.endpoint": {"asynctts.errors"},
    "asynctts.concurrency": {"asynctts.errors", "asynctts.endpoint"},
    # answers: the probe of compute_optimal groups its samples' answers (pure text logic)
    "asynctts.search": {
        "asynctts.protocols",
        "asynctts.errors",
        "asynctts.search",
        "asynctts.answers",
    },
    "asynctts.calibration": {
        "asynctts.search",
        "asynctts.protocols",
        "asynctts.errors",
        "asynctts.endpoint",
    },
    # allocation: pure, over the calibration table's cells
    "asynctts.allocation": {"asynctts.calibration", "asynctts.errors", "asynctts.search"},
    "asynctts.batch_budget": {
        "asynctts.allocation",
        "asynctts.backends",
        "asynctts.calibration",
        "asynctts.errors",
        "asynctts.search",
    },
    "asynctts.url_pool": set(),
    "asynctts.transport": {
        "asynctts.errors",
        "asynctts.ledger",
        "asynctts.endpoint",
        "asynctts.concurrency",
        "asynctts.url_pool",
    },
    "asynctts.equivalence": {"asynctts.answers", "asynctts.errors"},
    "asynctts.progress": {"asynctts.ledger"},
    # metrics: imported by api only when a Solver is given a metrics port (prometheus_client
    # stays optional); it reads ledger records and transport statistics, and sends nothing
    "asynctts.metrics": {
        "asynctts.errors",
        "asynctts.ledger",
        "asynctts.solution",
        "asynctts.transport",
    },
    # run as `python -m` by equivalence, which must not import it (runpy would warn of two copies)
    "asynctts.verify_worker": set(),
    "asynctts.backends": {
        "asynctts.backends",
        "asynctts.protocols",
        "asynctts.errors",
        "asynctts.ledger",
        "asynctts.endpoint",
        "asynctts.hub",
    },
    "asynctts.testing": {"asynctts.testing", "asynctts.protocols", "asynctts.errors"},
    # trace_plot: imported lazily when a picture is asked for (matplotlib stays optional)
    "asynctts.trace": {
        "asynctts.answers",
        "asynctts.errors",
        "asynctts.protocols",
        "asynctts.trace_plot",
    },
    "asynctts.trace_plot": {"asynctts.trace", "asynctts.errors", "asynctts.protocols"},
    # pooled: over journals and their reports alone (runner only for the journal's file name)
    "asynctts.eval.pooled": {
        "asynctts.errors",
        "asynctts.eval.bootstrap",
        "asynctts.eval.equal_spend",
        "asynctts.eval.report",
        "asynctts.eval.runner",
    },
}
THIRD_PARTY_BANNED_IN_SEARCH = {"aiohttp", "orjson", "tenacity", "transformers", "structlog"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def rule_for(module: str) -> set[str] | None:
    matches = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    return ALLOWED[max(matches, key=len)] if matches else None


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_layers(path: Path) -> None:
    module = module_name(path)
    allowed = rule_for(module)
    if allowed is None:
        return  # api, solution, cli, eval: the wiring layers may import anything below
    internal = {m for m in imports_of(path) if m == "asynctts" or m.startswith("asynctts.")}
    bad = {m for m in internal if not any(m == a or m.startswith(a + ".") for a in allowed)}
    assert not bad, f"{module} imports {sorted(bad)}; allowed: {sorted(allowed)}"


@pytest.mark.parametrize(
    "path", sorted((PACKAGE / "search").rglob("*.py")), ids=lambda p: module_name(p)
)
def test_search_has_no_io(path: Path) -> None:
    roots = {m.split(".")[0] for m in imports_of(path)}
    assert not roots & THIRD_PARTY_BANNED_IN_SEARCH, f"{module_name(path)} imports I/O: {roots}"


def test_public_surface() -> None:
    assert sorted(asynctts.__all__) == sorted(set(asynctts.__all__))
    for name in asynctts.__all__:
        assert getattr(asynctts, name) is not None, name
    for name in ("solve", "solve_many", "Endpoint", "Solution"):
        assert name in asynctts.__all__
    assert set(asynctts.STRATEGIES) == {
        "majority",
        "best_of_n",
        "weighted_best_of_n",
        "beam_search",
        "dvts",
        "particle_filter",
        "rebase",
        "revise",
    }
    for name in asynctts.testing.__all__:
        assert getattr(asynctts.testing, name) is not None, name


def test_importing_asynctts_loads_no_heavy_optional_dependency() -> None:
    """`pip install asynctts` stays light: tokenizers, plotting and data sets load on use."""
    code = "import asynctts, sys; print(sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    heavy_modules = ("transformers", "matplotlib", "datasets", "torch", "sympy", "math_verify")
    for heavy in (*heavy_modules, "prometheus_client"):
        assert f"'{heavy}'" not in loaded, heavy
