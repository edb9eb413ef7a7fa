"""The first epoch of DML in the authors' PyTorch code (RESULTS.md, follow-up 3).

Two of their ``models.resnet_cifar.resnet20``, their loss (CE + T^2 KLDivLoss(batchmean) of
log_softmax(z_i/T) to softmax(z_j/T) detached, T = 2) and their loop (all forwards, then one
backward and SGD step per student: lr 0.1, momentum 0.9, nesterov, wd 1e-4), on a seeded
class-balanced 5k subset of CIFAR-10 with the paper's augmentation, batch 128, 40 steps. Prints
per seed the largest step loss (the sum of both students' losses) and the epoch-1 accuracy.

    /tmp/torch/bin/python benchmarks/authors_code/dml_first_steps.py --code=/tmp/FFSD \
        --data=../shared/data/cifar10/cifar10_yoongikim_jpeg.npz --seeds=0,1,2,3 [--lambda_kl=0]

(setup as in ``speed.py``). ffsd-tf shows the same with
``--flagfile=experiments/cpu_study/cifar10_5k_dml.flags --model=resnet20``.
"""
import argparse, sys
import numpy as np
ap = argparse.ArgumentParser()
ap.add_argument("--code", required=True, help="checkout of SJLeo/FFSD")
ap.add_argument("--data", required=True, help="CIFAR-10 .npz (x_train, y_train)")
ap.add_argument("--seeds", default="0,1,2,3")
ap.add_argument("--lambda_kl", type=float, default=1.0)
args = ap.parse_args()
sys.path.insert(0, args.code)
import torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2)
from models.resnet_cifar import resnet20
d = np.load(args.data)
x_all, y_all = d["x_train"], d["y_train"].astype(np.int64).ravel()
# CIFAR-10 channel statistics, as ffsd_tf.data uses (not imported: this runs in a torch-only venv).
mean = np.array([0.4914, 0.4822, 0.4465], np.float32); std = np.array([0.2470, 0.2435, 0.2616], np.float32)
KL = nn.KLDivLoss(reduction="batchmean"); CE = nn.CrossEntropyLoss(); T = 2.0
lam = args.lambda_kl
for seed in [int(s) for s in args.seeds.split(",")]:
    rng = np.random.default_rng(seed); torch.manual_seed(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y_all == c), 500, replace=False) for c in range(10)])
    x = ((x_all[idx].astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2); y = y_all[idx]
    nets = [resnet20(num_classes=10) for _ in range(2)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True) for n in nets]
    for n in nets: n.train()
    order = rng.permutation(len(y)); losses = []; correct = [0, 0]; seen = 0
    for b in range(40):
        bi = order[b * 128:(b + 1) * 128]
        xb = np.pad(x[bi], ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
        off = rng.integers(0, 9, (len(bi), 2))  # a random 32x32 crop per image
        xb = np.stack([im[:, oy:oy + 32, ox:ox + 32] for im, (oy, ox) in zip(xb, off)])
        flip = rng.random(len(bi)) < 0.5; xb[flip] = xb[flip][..., ::-1]
        xb = torch.from_numpy(np.ascontiguousarray(xb)); yb = torch.from_numpy(y[bi])
        outs = [n(xb) for n in nets]
        tot = 0.0
        for i in range(2):
            j = 1 - i
            l = CE(outs[i], yb) + lam * T * T * KL(F.log_softmax(outs[i] / T, 1), F.softmax(outs[j].detach() / T, 1))
            opts[i].zero_grad(); l.backward(); opts[i].step(); tot += l.item()
            correct[i] += (outs[i].argmax(1) == yb).sum().item()
        seen += len(bi); losses.append(tot)
    print(f"lambda_kl={lam} seed {seed}: max step loss {max(losses):.1f} (step {int(np.argmax(losses))+1}), "
          f"last-10 mean {np.mean(losses[-10:]):.2f}, epoch-1 train acc {100*correct[0]/seen:.1f} / {100*correct[1]/seen:.1f}", flush=True)
    print("   first steps:", " ".join(f"{v:.1f}" for v in losses[:8]), flush=True)
