"""The C contract's argument rule for bfloat16 training's saved arrays (lstm.h,
``lstm_variant.bf16_gates``): checked at the C level, where the Python layer cannot
send the combinations it never builds. A small C program (tests/c/bf16_gates_rules.c)
compiles against csrc/ alone and calls ``lstm_backward_ex_f32`` once per case."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests", "c", "bf16_gates_rules.c")
CSRC = os.path.join(ROOT, "csrc")
CC = os.environ.get("CC", "cc")
LSTM_OK, LSTM_ERR_ARG = 0, 1


@pytest.mark.skipif(not os.path.isdir(CSRC), reason="a source checkout (csrc/) is needed")
@pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler {CC!r}")
def test_bf16_gates_only_with_bf16_grads_and_no_other_variant(tmp_path):
    exe = str(tmp_path / "rules")
    subprocess.run([CC, "-O1", "-std=c11", "-Wall", "-Werror", "-I" + CSRC,
                    *(os.path.join(CSRC, f) for f in ("cpu.c", "pool.c", "lstm.c")), SRC,
                    "-o", exe, "-lpthread", "-ldl", "-lm"], check=True, capture_output=True)
    out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    got = {name: (int(s), int(f)) for name, s, f in (line.split() for line in out.splitlines())}
    assert got.pop("valid") == (LSTM_OK, 1)       # the rule lets the real case through
    assert set(got) == {"gates_without_c", "c_without_gates", "without_bf16_grads", "peephole",
                        "clip", "cell_clip", "cifg", "rdrop", "zoneout", "layer_norm",
                        "projection"}
    assert {name: s for name, (s, _) in got.items()} == {name: LSTM_ERR_ARG for name in got}
