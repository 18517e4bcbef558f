"""Every code example of the documentation runs as written.

* The ``python`` blocks of README.md and docs/*.md, in order, one namespace
  per file (a later block may use an earlier one's names), in a temporary
  working directory (examples may write files).
* The docstring examples (``>>>``) of the public modules, by doctest.
"""
import doctest
import importlib
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
MODULES = ["fastlista._lasso", "fastlista._lipschitz", "fastlista._solvers",
           "fastlista._networks._parameters", "fastlista._networks._lista",
           "fastlista.datasets", "fastlista.estimators", "fastlista.distributed",
           "fastlista.dictionary"]


@pytest.mark.parametrize("path", [p for p in DOCS if BLOCK.search(p.read_text())],
                         ids=lambda p: p.name)
def test_markdown_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(BLOCK.findall(path.read_text())):
        with warnings.catch_warnings():
            # the examples show results, not warnings (a ConvergenceWarning
            # of a deliberately short run is part of what they teach)
            warnings.simplefilter("ignore")
            exec(compile(block, f"{path.name}[block {i}]", "exec"), namespace)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    if name in ("fastlista.estimators",):
        pytest.importorskip("sklearn")
    if name == "fastlista.distributed":
        pytest.importorskip("dask")
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE
                             | doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
    if name not in ("fastlista.datasets",):
        assert result.attempted > 0, f"no example in {name}"
