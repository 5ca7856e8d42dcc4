"""The model, data and training steps of tests/test_torch_ddp.py; run as a script it is one
DistributedDataParallel process: ``python _ddp_worker.py RANK WORLD_SIZE PORT OUT``."""

import gc
import sys
from datetime import timedelta

import torch

import lstm_fast.torch as ltorch

T, B, I, H = 5, 4, 3, 6
STEPS = 2


class Net(torch.nn.Module):
    """An LSTM stack, a cell stepped by hand over its outputs, a linear head."""

    def __init__(self):
        super().__init__()
        self.lstm = ltorch.LSTM(I, H, num_layers=2)
        self.cell = ltorch.LSTMCell(H, H)
        self.head = torch.nn.Linear(H, 1)

    def forward(self, x):
        y, _ = self.lstm(x)
        state = None
        for t in range(y.shape[0]):
            state = self.cell(y[t], state)
        return self.head(state[0])


def model():
    torch.manual_seed(0)
    return Net().double()


def data():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(T, B, I, generator=g, dtype=torch.float64),
            torch.randn(B, 1, generator=g, dtype=torch.float64))


def train(net, x, target):
    """STEPS SGD steps of the mean squared error; every step's gradients by name."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    grads = []
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), target).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
        opt.step()
    return grads


def main(rank, world, port, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world,
                                         timeout=timedelta(seconds=60))
    try:
        net = model()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        x, target = data()
        per = B // world
        rows = slice(rank * per, (rank + 1) * per)
        grads = train(ddp, x[:, rows], target[rows])
        # names without DDP's "module." prefix
        torch.save([{k.removeprefix("module."): v for k, v in g.items()} for g in grads], out)
    finally:
        # DDP's reducer holds the process group: drop it first, so that destroy_process_group
        # destroys the group (and joins gloo's worker threads) while the interpreter is alive.
        # Otherwise a gloo thread can free its last allreduce work during interpreter shutdown,
        # need the GIL for a Python object in it and abort the process ("terminate called
        # without an active exception": pytorch/pytorch#190489, a torch bug, about 1 run in 10).
        ddp = None
        gc.collect()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
