"""bfloat16 weights (issue 16) against our own float32, in the same run: B = 1 streaming
(``Stream.step``, H = 512 and 1024, where every step re-reads the weights: bf16 halves
that traffic) and the large forward (32, 64, 256, 256) (compute bound), 1 and 2 threads.

Competitors: ``float32`` (the c backend's plain layer), ``bfloat16`` (what
``weight_dtype="bfloat16"`` runs: AMX, native vdpbf16ps or the emulation, chosen per shape
by lstm.c), and where the CPU has AVX512_BF16 both forced, ``bfloat16-native`` and
``bfloat16-emulated`` (the same bits; the rule in lstm.c comes from this comparison), and
where it has AMX-BF16 ``bfloat16-amx`` (tdpbf16ps at every B, ``set_bf16_amx(True)``;
``bfloat16`` uses it automatically from B = 4).
Each benchmark first checks its outputs against the float32 layer's (within bf16's
accuracy). Under ``--benchmark-disable`` (the test suite) one untimed call on small shapes.
Shapes, runner and body: benchmarks/low_precision.py (shared with bench_int8.py).

    flock -x /tmp/lstm_cpu.lock python -m pytest benchmarks/bench_bf16.py --benchmark-enable \
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group
"""

import pytest

from . import low_precision

ck = pytest.importorskip("lstm_fast.backends._c")


WEIGHTS = ("float32", "bfloat16") + (("bfloat16-native", "bfloat16-emulated")
                                     if ck.cpu_has_avx512bf16() else ()) + \
    (("bfloat16-amx",) if ck.cpu_has_amx_bf16() else ())
MODE = {"bfloat16": None, "bfloat16-native": True, "bfloat16-emulated": False}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("name", list(low_precision.CASES))
def test_bf16(benchmark, request, name, weights, threads):
    ck.set_bf16_native(MODE.get(weights))
    ck.set_bf16_amx(True if weights == "bfloat16-amx" else None)
    try:
        low_precision.run(benchmark, request, name, weights, threads, "bf16", 2e-2,
                          lambda B, I, H: dict(bf16_path=ck.bf16_path(B, I, H)))
    finally:
        ck.set_bf16_native(None)
        ck.set_bf16_amx(None)
