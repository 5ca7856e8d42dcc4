"""Output generated when the page is built, so numbers in the documentation cannot
drift from the library's. A non-zero exit status or anything on stderr fails the build.

``lstm-fast-output``: what an ``lstm-fast`` command prints, run with the interpreter
that runs Sphinx (``python -m lstm_fast ARGS``)::

    .. lstm-fast-output:: explain --backend numpy

``c-example-output``: compiles a C file of docs/ against the kernel sources in
csrc/ (``$CC``, default ``cc``) and shows what the program prints::

    .. c-example-output:: examples/forward.c
"""

import os
import shlex
import subprocess
import sys
import tempfile

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


class CExampleOutput(SphinxDirective):
    required_arguments = 1

    def run(self):
        src = os.path.normpath(os.path.join(os.path.dirname(self.env.doc2path(self.env.docname)),
                                            self.arguments[0]))
        root = os.path.normpath(os.path.join(self.env.srcdir, os.pardir))
        csrc = os.path.join(root, "csrc")
        self.env.note_dependency(src)
        with tempfile.TemporaryDirectory() as tmp:
            exe = os.path.join(tmp, "example")
            cc = os.environ.get("CC", "cc")
            cmd = [cc, "-O2", "-std=c11", "-I" + csrc] + \
                [os.path.join(csrc, f) for f in ("cpu.c", "pool.c", "lstm.c")] + \
                [src, "-o", exe, "-lpthread", "-ldl", "-lm"]
            comp = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if comp.returncode:
                raise self.error(f"compiling {self.arguments[0]} failed: {comp.stderr[-2000:]}")
            proc = subprocess.run([exe], capture_output=True, text=True, timeout=60)
        if proc.returncode or proc.stderr.strip():
            raise self.error(f"{self.arguments[0]} exited with {proc.returncode}: {proc.stderr}")
        text = "$ ./example\n" + proc.stdout.rstrip()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("lstm-fast-output", LstmFastOutput)
    app.add_directive("c-example-output", CExampleOutput)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
