"""Images/s of the authors' PyTorch FFSD code (SJLeo/FFSD, unmodified) on this machine: BENCHMARKS.md.

Times one body of their ``CIFARTrainer.Trainer.train_with_test`` loop (4 network forwards, 4 SD
forwards, every loss, 6 backward passes and 6 optimizer steps at epoch 10's loss weights) over
random CIFAR-100-shaped batches, and one plain ResNet-32 trained with CE and their SGD. Two
import-time stand-ins only: a no-op ``utils.visualizer`` (theirs needs visdom) and a
``data.cifar100`` whose loaders yield pre-generated batches (no torchvision, no data cost).

    git clone https://github.com/SJLeo/FFSD /tmp/FFSD && git -C /tmp/FFSD checkout d5cfda9
    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch==2.13.0 numpy
    /tmp/torch/bin/python benchmarks/authors_code/speed.py --code=/tmp/FFSD --iters=20 --warmup=3

Compare with ``make bench`` run just before or after on the same idle machine.
"""
import argparse, atexit, logging, shutil, sys, tempfile, time, types
import torch
torch.set_num_threads(2); torch.set_num_interop_threads(2)

# Stand-ins: no visdom visualiser, no torchvision data.
vis = types.ModuleType("utils.visualizer")
class Visualizer:
    def __init__(self, opt): pass
    def plot_current_losses(self, *a, **k): pass
vis.Visualizer = Visualizer
sys.modules["utils.visualizer"] = vis

ap = argparse.ArgumentParser()
ap.add_argument("--code", required=True, help="checkout of SJLeo/FFSD")
ap.add_argument("--iters", type=int, default=20)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--mode", default="both", choices=["both", "ffsd", "single"])
args = ap.parse_args()
sys.path.insert(0, args.code)
BS = 128
TOTAL = args.iters + args.warmup
stamps = []

class Loader:
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(BS, 3, 32, 32, generator=g), torch.randint(0, 100, (BS,), generator=g)) for _ in range(n)]
        self.dataset = range(BS * 1000)  # print_freq = 100: the logging branch never runs
    def __iter__(self):
        for b in self.batches:
            stamps.append(time.perf_counter())
            yield b
        stamps.append(time.perf_counter())
    def __len__(self): return len(self.batches)

data = types.ModuleType("data.cifar100")
class Data:
    def __init__(self, opt):
        self.trainLoader = Loader(TOTAL); self.testLoader = Loader(1)
data.Data = Data
import data as data_pkg  # noqa
sys.modules["data.cifar100"] = data

from options import options
# Their option parser writes <checkpoints_dir>/<name>/config.txt: keep it out of the working tree.
scratch = tempfile.mkdtemp(prefix="ffsd-authors-")
atexit.register(shutil.rmtree, scratch, ignore_errors=True)
sys.argv = ["cifar.py", "--dataroot", "/nonexistent", "--gpu_ids", "-1", "--display_id", "0", "--model", "resnet32",
            "--checkpoints_dir", scratch]
opt = options.parse()
logger = logging.getLogger("ffsd"); logger.addHandler(logging.NullHandler())

def rate(label):
    ts = stamps[args.warmup:args.warmup + args.iters + 1]
    dt = (ts[-1] - ts[0]) / args.iters
    print(f"{label}: {dt*1000:.0f} ms/it, {BS/dt:.1f} img/s", flush=True)
    return BS / dt

out = {}
if args.mode in ("both", "ffsd"):
    from CIFARTrainer import Trainer
    tr = Trainer(opt, logger)
    tr.lambda_warmup(10)
    tr.train_with_test(10)
    out["ffsd"] = rate("official FFSD step (2 students + leader + fusion + 2 SD)")
if args.mode in ("both", "single"):
    from models import create_model
    import torch.nn as nn
    stamps.clear()
    net = create_model(opt)
    optim = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    ce = nn.CrossEntropyLoss(); net.train()
    for x, y in Loader(TOTAL):
        loss = ce(net(x), y)
        optim.zero_grad(); loss.backward(); optim.step()
    out["single"] = rate("official ResNet-32, CE, SGD")
if len(out) == 2:
    print(f"ratio FFSD/single cost: {out['single']/out['ffsd']:.2f}x")
