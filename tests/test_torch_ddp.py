"""DistributedDataParallel with lstm_fast.torch.LSTM and LSTMCell: 2 processes (gloo, loopback),
each on half the batch, give every gradient of the single-process run on the whole batch,
also after an optimizer step (the packed weights follow DDP's and the optimizer's writes)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import _ddp_worker as worker  # noqa: E402
from _support import assert_close  # noqa: E402

WORLD = 2
TIMEOUT = 120   # seconds for both processes, start to end


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_ddp_two_processes_give_the_whole_batch_gradients(tmp_path):
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = [tmp_path / f"grads{r}.pt" for r in range(WORLD)]
    procs = [subprocess.Popen([sys.executable, worker.__file__, str(r), str(WORLD), str(port),
                               str(outs[r])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    expected = worker.train(worker.model(), *worker.data())
    for r in range(WORLD):
        got = torch.load(outs[r])
        assert len(got) == len(expected) == worker.STEPS
        for step, (g, e) in enumerate(zip(got, expected)):
            assert g.keys() == e.keys()
            for name in e:
                assert_close(g[name].numpy(), e[name].numpy(), np.float64, f"step {step} {name}")
