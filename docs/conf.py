"""Sphinx configuration of the lstm_fast documentation.

Build (from the repository root; warnings are errors, cross-references checked)::

    tools/build_docs.sh            # doctest builder (every example runs), then HTML

The API pages come from the docstrings (numpydoc form) through autosummary; the
guides are MyST Markdown in ``guides/``. No network is used: no intersphinx, and
``-n`` (nitpicky) makes every unresolved cross-reference an error.
"""

import os
import sys

import lstm_fast

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "lstm_fast"
author = "the lstm_fast developers"
copyright = "2026, the lstm_fast developers"
version = release = lstm_fast.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "numpydoc",
    "myst_parser",
    "lstm_fast_docs",        # _ext/: `lstm-fast-output` runs an lstm-fast command at build time
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path = ["_templates"]
nitpicky = True
default_role = "autolink"        # `name`: a link where the name is documented, else emphasis

# --- API reference: docstrings are the single source -----------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"                 # numpydoc sections carry the types
autodoc_inherit_docstrings = False         # lstm_fast.torch.LSTM: not torch's own docstrings
autodoc_default_options = {"member-order": "bysource"}
numpydoc_show_class_members = False        # the class template lists members itself
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False           # types are text (numpy, torch: no network inventory)
numpydoc_attributes_as_param_list = True
# Every public docstring is checked: parameters documented (PR01) and none unknown (PR02),
# a Returns section where something is returned (RT01), a summary line (SS01, SS03), a
# docstring (GL08). tests/test_docstring_examples.py requires an example of every public
# function and class.
numpydoc_validation_checks = {"PR01", "PR02", "PR10", "RT01", "SS01", "SS03", "GL08"}
numpydoc_validation_exclude = {
    r"\._[a-z]\w*$",                 # private helpers
    r"\.__\w+__$",                   # dunder methods
    r"\.LSTM(Result|Grads|Cache|Config)(\.\w+)?$",   # NamedTuples: fields in Attributes
}

# --- examples: `>>>` blocks in docstrings and guides run under the doctest builder ------
doctest_global_setup = """
import numpy as np
import lstm_fast
np.set_printoptions(precision=4, suppress=True)
"""
doctest_default_flags = (__import__("doctest").ELLIPSIS
                         | __import__("doctest").NORMALIZE_WHITESPACE)

# --- MyST guides -----------------------------------------------------------------------
myst_enable_extensions = ["colon_fence"]   # no math: MathJax would need the network
myst_heading_anchors = 3

# --- HTML ------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"lstm_fast {release}"
html_static_path = ["_static"]
html_css_files = ["lstm_fast.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_show_sourcelink = False
