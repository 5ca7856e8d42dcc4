"""``lstm-fast-output``: a literal block holding what an ``lstm-fast`` command prints.

The command runs when the page is built, with the interpreter that runs Sphinx
(``python -m lstm_fast ARGS``), so numbers in the documentation cannot drift from
the library's. A non-zero exit status or anything on stderr fails the build::

    .. lstm-fast-output:: explain
"""

import os
import shlex
import subprocess
import sys

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective


class LstmFastOutput(SphinxDirective):
    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {"lines": directives.unchanged}

    def run(self):
        args = shlex.split(self.arguments[0])
        cmd = [sys.executable, "-m", "lstm_fast", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "COLUMNS": "88"})
        if proc.returncode or proc.stderr.strip():
            raise self.error(f"`lstm-fast {self.arguments[0]}` exited with {proc.returncode}: "
                             f"{proc.stderr.strip()[-2000:]}")
        text = "$ lstm-fast " + self.arguments[0] + "\n" + proc.stdout.rstrip()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("lstm-fast-output", LstmFastOutput)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
