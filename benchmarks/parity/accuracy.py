"""Accuracy parity: one ResNet-20 trained by cross-entropy, by ffsd-tf and by the authors' loop, on
the same protocol (issue "Train as well as the authors' code").

Protocol: real CIFAR-10 (``--data``), training subset ``np.random.RandomState(seed).permutation(50000)
[:5000]`` (5,000 = 39 x 128 + 8: an 8-image remainder), the full test set, batch 128, SGD nesterov
0.9, coupled weight decay 1e-4, LR 0.1 divided by 10 after 5/8 and 7/8 of the epochs (8 epochs:
after 5 and 7; 30 epochs: after 20 and 25), reflect-pad-4 random crop per image + horizontal flip,
CIFAR-10 normalisation.

* ``ours``: ``python -m ffsd_tf.run --flagfile=experiments/parity/cifar10_5k_ce.flags`` on that
  subset (written as an .npz under ``--work``), with its default partial-batch policy
  (``drop_small``: the 8-image remainder is dropped each epoch); ``ours_keep`` adds
  ``--partial_batch=keep`` (the authors' behaviour).
* ``torch``: their loop (DataLoader order ``torch.randperm`` per epoch, the partial batch kept,
  per-image augmentation, ``nn.CrossEntropyLoss``, ``optim.SGD``, ``MultiStepLR`` stepped per epoch,
  eval each epoch), with their ``models/resnet_cifar.resnet20`` when ``--code`` is given, else
  ``torch_reference``'s copy of it.

    .venv/bin/python benchmarks/parity/accuracy.py --which=ours,torch --epochs=8,30 --seeds=0,1,2 \\
        [--code=/tmp/FFSD]

Prints one line per run (train accuracy per epoch, final test accuracy, wall time) and a summary
table (mean +- std over seeds); ``--json`` appends every run to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10", "cifar10_yoongikim_jpeg.npz")
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def milestones(epochs: int) -> list[int]:
    return [5, 7] if epochs == 8 else [round(epochs * 2 / 3), round(epochs * 5 / 6)]


def subset_npz(data: str, seed: int, work: str) -> str:
    path = os.path.join(work, f"cifar10_5k_s{seed}.npz")
    if not os.path.exists(path):
        d = np.load(data)
        keep = np.random.RandomState(seed).permutation(len(d["y_train"]))[:5000]
        os.makedirs(work, exist_ok=True)
        np.savez(path + ".tmp.npz", x_train=d["x_train"][keep], y_train=d["y_train"][keep],
                 x_test=d["x_test"], y_test=d["y_test"])
        os.replace(path + ".tmp.npz", path)
    return path


def run_ours(data, seed, epochs, work, keep=False) -> dict:
    name = f"ours{'_keep' if keep else ''}_e{epochs}_s{seed}"
    out = os.path.join(work, name)
    cmd = [sys.executable, "-m", "ffsd_tf.run", "--flagfile=experiments/parity/cifar10_5k_ce.flags",
           f"--data_dir={subset_npz(data, seed, work)}", f"--seed={seed}", f"--epochs={epochs}",
           f"--milestones={','.join(map(str, milestones(epochs)))}", f"--output_dir={out}", "--verbose=quiet",
           "--noresume"]
    if keep:
        cmd.append("--partial_batch=keep")
    if os.path.exists(os.path.join(out, "results.json")):
        wall = None
    else:
        start = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True)
        wall = time.time() - start
    history = json.load(open(os.path.join(out, "history.json")))
    return {"which": "ours_keep" if keep else "ours", "seed": seed, "epochs": epochs, "wall_s": wall,
            "train_acc": [100 * h["student1/acc"] for h in history], "test_acc": 100 * history[-1]["val_student1/acc"],
            "command": " ".join(cmd[1:])}


def run_torch(data, seed, epochs, code=None, threads=2) -> dict:
    import torch
    import torch.nn as nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    d = np.load(data)
    keep = np.random.RandomState(seed).permutation(len(d["y_train"]))[:5000]
    x_train = ((d["x_train"][keep].astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2)
    y_train = torch.from_numpy(d["y_train"][keep].astype(np.int64))
    x_test = torch.from_numpy(np.ascontiguousarray(((d["x_test"].astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2)))
    y_test = torch.from_numpy(d["y_test"].astype(np.int64))
    padded = torch.from_numpy(np.pad(x_train, ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect"))
    if code:
        sys.path.insert(0, code)
        from models.resnet_cifar import resnet20

        net = resnet20(num_classes=10)
        forward = net
    else:
        import torch_reference as ref

        net = ref.CifarResNet(3, 10)

        def forward(x):
            return net(x)[0]
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(epochs), 0.1)
    ce = nn.CrossEntropyLoss()
    train_acc = []
    start = time.time()
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(y_train))
        correct = 0
        for b in range(0, len(order), 128):  # the partial last batch is kept (drop_last=False)
            idx = order[b:b + 128]
            oy, ox = torch.randint(0, 9, (2, len(idx)))
            rows = (oy[:, None] + torch.arange(32))[:, None, :, None].expand(-1, 3, 32, 40)
            x = torch.gather(padded[idx], 2, rows)
            cols = (ox[:, None] + torch.arange(32))[:, None, None, :].expand(-1, 3, 32, 32)
            x = torch.gather(x, 3, cols)
            flip = torch.rand(len(idx)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            out = forward(x)
            loss = ce(out, y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += (out.argmax(1) == y_train[idx]).sum().item()
        train_acc.append(100 * correct / len(order))
        sched.step()
    net.eval()
    with torch.no_grad():
        hits = sum((forward(x_test[i:i + 500]).argmax(1) == y_test[i:i + 500]).sum().item() for i in range(0, 10000, 500))
    return {"which": "torch", "seed": seed, "epochs": epochs, "wall_s": time.time() - start, "train_acc": train_acc,
            "test_acc": 100 * hits / len(y_test), "command": f"accuracy.py --which=torch --code={code}"}


def summary(runs: list[dict]) -> str:
    lines = ["| code | epochs | seeds | train acc, last epoch | test acc (mean ± std) | per seed | wall / run |",
             "|---|---:|---|---:|---:|---|---:|"]
    keys = sorted({(r["which"], r["epochs"]) for r in runs}, key=lambda k: (k[1], k[0]))
    for which, epochs in keys:
        rs = sorted((r for r in runs if r["which"] == which and r["epochs"] == epochs), key=lambda r: r["seed"])
        test = np.array([r["test_acc"] for r in rs])
        train = np.array([r["train_acc"][-1] for r in rs])
        lines.append(f"| {which} | {epochs} | {','.join(str(r['seed']) for r in rs)} | {train.mean():.2f} | "
                     f"{test.mean():.2f} ± {test.std(ddof=1) if len(rs) > 1 else 0:.2f} | "
                     f"{' / '.join(f'{t:.2f}' for t in test)} | "
                     f"{np.mean([r['wall_s'] for r in rs if r['wall_s']] or [0]) / 60:.1f} min |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--which", default="ours,torch", help="comma list of ours, ours_keep, torch")
    ap.add_argument("--epochs", default="8,30")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--code", default=None, help="checkout of SJLeo/FFSD (their resnet20)")
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "parity"))
    ap.add_argument("--json", default=None, help="append every run as a JSON line to this file")
    ap.add_argument("--summarize", nargs="*", default=None, help="only print the table of these JSON-lines files")
    args = ap.parse_args()
    if args.summarize is not None:
        print(summary([json.loads(line) for path in args.summarize for line in open(path) if line.strip()]))
        return
    runs = []
    for epochs in [int(e) for e in args.epochs.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for which in args.which.split(","):
                if which == "torch":
                    r = run_torch(args.data, seed, epochs, args.code)
                else:
                    r = run_ours(args.data, seed, epochs, args.work, keep=which == "ours_keep")
                runs.append(r)
                print(f"{which:9s} e{epochs} s{seed}: train {' '.join(f'{a:.1f}' for a in r['train_acc'])} | "
                      f"test {r['test_acc']:.2f} | {r['wall_s'] or 0:.0f}s", flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
    print(summary(runs))


if __name__ == "__main__":
    main()
