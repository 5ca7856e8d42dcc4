"""The Examples sections of the public docstrings run and print what they say.

The same examples appear on the documentation site's API pages (docs/, numpydoc),
where the docs build runs them again with Sphinx's doctest builder; running them
here too keeps them honest in the ordinary test command.
"""

import contextlib
import doctest
import importlib

import numpy as np
import pytest

import lstm_fast

MODULES = ["lstm_fast.functional", "lstm_fast.layer", "lstm_fast.streaming", "lstm_fast.optim",
           "lstm_fast.adapters", "lstm_fast.backends", "lstm_fast.torch"]
# what a module's examples import beyond the kernel library (skipped without it)
NEEDS = {"lstm_fast.torch": ("torch",), "lstm_fast.adapters": ("onnx", "torch")}


PUBLIC = ["lstm_fast", "lstm_fast.optim", "lstm_fast.adapters", "lstm_fast.torch"]


@pytest.mark.parametrize("modname", PUBLIC)
def test_every_public_name_has_an_example(modname):
    """Every function and class in a public module's __all__ shows an example (the API
    reference's pages are these docstrings; docs/api/index.rst lists every such name)."""
    for need in NEEDS.get(modname, ()):
        pytest.importorskip(need)
    mod = importlib.import_module(modname)
    names = [n for n in mod.__all__ if callable(getattr(mod, n))]
    assert names
    missing = [n for n in names if ">>> " not in (getattr(mod, n).__doc__ or "")]
    assert not missing, f"{modname}: no Examples section in {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    for need in NEEDS.get(name, ()):
        pytest.importorskip(need)
    mod = importlib.import_module(name)
    threads = lstm_fast.get_num_threads()
    # the examples seed torch's global generator: the other tests keep their stream
    rng = pytest.importorskip("torch").random.fork_rng() if name == "lstm_fast.torch" \
        else contextlib.nullcontext()
    try:
        with rng:
            result = doctest.testmod(mod, extraglobs={"np": np, "lstm_fast": lstm_fast},
                                     optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                                     raise_on_error=False, report=True)
    finally:
        lstm_fast.set_num_threads(threads)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
