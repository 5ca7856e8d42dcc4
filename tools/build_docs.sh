#!/usr/bin/env bash
# Build the documentation site into docs/_build/html, warnings as errors.
#   1. Sphinx's doctest builder: every example runs (the Examples of the public
#      docstrings, the doctest blocks of the guides);
#   2. the HTML builder.
# Both with -W --keep-going (every warning reported, then the build fails) and -n
# (nitpicky: every cross-reference, :doc:, :ref: and Python object, must resolve;
# nothing is fetched from the network). The worked example (`lstm-fast explain`)
# and the C example run while the pages are built. Needs the docs extra:
#   pip install ".[docs,torch]"   (after pip install torch==2.13.0)
# Usage: tools/build_docs.sh [PYTHON]   (default: python)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python}"
rm -rf docs/_build docs/api/generated
"$py" -m sphinx -W --keep-going -n -q -d docs/_build/doctrees -b doctest docs docs/_build/doctest
grep -E "^ +[0-9]+ tests$|failures? in tests" docs/_build/doctest/output.txt
"$py" -m sphinx -W --keep-going -n -q -d docs/_build/doctrees -b html docs docs/_build/html
echo "docs: docs/_build/html/index.html"
