"""How fast early training amplifies round-off: torch against itself (docs/parity.md).

Two float64 copies of the authors' ResNet (``torch_reference``), one with every weight scaled by
``1 + --perturb``, trained side by side on the same batches (their optimizer: SGD nesterov 0.9, wd
1e-4; the parity harness's batches and augmentation). Prints the largest relative weight difference
over the network's tensors every 20 steps. If it reaches 1e-4 within N steps, no two implementations
can agree over N free-running steps at that learning rate, however exact each step is.

    .venv/bin/python benchmarks/parity/chaos.py --lr=0.1 --batch=32 --steps=200
"""

import argparse
import copy
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--perturb", type=float, default=1e-13)
    ap.add_argument("--blocks", type=int, default=3, help="blocks per stage: 3 = ResNet-20")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    import parity
    import torch_reference as ref

    torch.manual_seed(args.seed)
    torch.set_default_dtype(torch.float64)
    a = ref.CifarResNet(args.blocks, 10)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1 + args.perturb)
    nets = (a, b)
    opts = [torch.optim.SGD(n.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4, nesterov=True) for n in nets]
    for step, (_, y, x) in enumerate(parity.batches(parity.DEFAULT_DATA, args.steps, args.batch, args.seed, True)):
        x, y = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y.astype(np.int64))
        for net, opt in zip(nets, opts):
            net.train()
            loss = F.cross_entropy(net(x)[0], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (step + 1) % 20 == 0 or step < 3:
            with torch.no_grad():
                diff = max(float((p - q).norm() / q.norm()) for p, q in zip(b.parameters(), a.parameters()))
            print(f"step {step + 1:4d}: largest relative weight difference {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
