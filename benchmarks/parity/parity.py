"""Step-by-step parity of ffsd-tf's training step with the authors' PyTorch trainer.

The same initial weights (drawn by torch, copied into our Keras networks), the same batches (real
CIFAR-10 when ``--data`` exists, else seeded noise; optionally the same crop/flip parameters applied
by each side's own augmentation), the same learning-rate drops. After every step it compares, per
quantity, the relative error ``||ours - torch|| / ||torch||``:

* the losses of every network (our per-step logs vs their ``loss.item()``),
* every gradient (ours from a tape on the same forward pass, theirs from ``.grad``),
* every weight, BatchNorm running statistic and optimizer slot (SGD momentum, Adam moments).

The first quantity that leaves float32 noise names the cause. ``--mode=single`` is one ResNet
trained by cross-entropy (``--num_students=1 --noleader --nomutual_learning --diversity=none
--self_distillation=none``); ``--mode=ffsd`` the whole cohort (n students, leader, fusion, decoders
and their four optimizers) at the paper's loss weights.

    .venv/bin/pip install -r requirements-parity.txt        # CPU torch, dev only
    .venv/bin/python benchmarks/parity/parity.py --mode=single --steps=200
    .venv/bin/python benchmarks/parity/parity.py --mode=ffsd --steps=200
    # their network classes instead of torch_reference's (fetch SJLeo/FFSD; never commit it):
    .venv/bin/python benchmarks/parity/parity.py --mode=ffsd --code=/tmp/FFSD

Exit status 1 when any quantity exceeds ``--tolerance`` (default 1e-4) at any step.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, HERE]
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10", "cifar10_yoongikim_jpeg.npz")
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)

# Keras layer name -> torch module name, per kind of network (ours: ffsd_tf/networks, fusion.py,
# self_distillation.py; theirs: models/resnet_cifar.py, fusion_module.py, self_distillation.py).
_RENAMES = {
    "resnet": [(r"^stem_conv$", "conv1"), (r"^stem_bn$", "bn1"), (r"^fc$", "fc"),
               (r"^layer(\d)_(\d+)_down_conv$", r"layer\1.\2.downsample.0"),
               (r"^layer(\d)_(\d+)_down_bn$", r"layer\1.\2.downsample.1"),
               (r"^layer(\d)_(\d+)_(conv1|bn1|conv2|bn2)$", r"layer\1.\2.\3")],
    "trans_fusion": [(r"^dw_conv$", "trans_fusion_module.conv1"), (r"^dw_bn$", "trans_fusion_module.bn1"),
                     (r"^pw_conv$", "trans_fusion_module.conv1_1"), (r"^pw_bn$", "trans_fusion_module.bn1_1")],
    "fusion": [(r"^dw_conv$", "conv1"), (r"^dw_bn$", "bn1"), (r"^pw_conv$", "conv1_1"), (r"^pw_bn$", "bn1_1"),
               (r"^fc$", "fc2")],
    "decoder": [(r"^block(\d)_convT$", r"layer\1.convtranpose"), (r"^block(\d)_bn$", r"layer\1.norm")],
}
_BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def torch_module_name(kind: str, layer: str) -> str:
    for pattern, repl in _RENAMES[kind]:
        if re.match(pattern, layer):
            return re.sub(pattern, repl, layer)
    raise KeyError(f"no torch name for {kind} layer {layer!r}")


def to_keras(layer, field: str, tensor) -> np.ndarray:
    """A torch parameter/buffer as the value of the Keras variable ``field`` of ``layer``."""
    import keras

    a = tensor.detach().cpu().numpy()
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, k, k) -> (k, k, C, 1)
        return a.transpose(2, 3, 0, 1)
    if isinstance(layer, keras.layers.Conv2DTranspose) and field == "kernel":  # (in, out, k, k) -> (k, k, out, in)
        return a.transpose(2, 3, 1, 0)
    if isinstance(layer, keras.layers.Conv2D) and field == "kernel":  # (out, in, k, k) -> (k, k, in, out)
        return a.transpose(2, 3, 1, 0)
    if isinstance(layer, keras.layers.Dense) and field == "kernel":
        return a.T
    return a


def pairs(kind: str, keras_model, torch_module):
    """(label, keras variable, torch tensor getter, keras layer, field) for every variable of the network."""
    tensors = dict(torch_module.named_parameters())
    tensors.update(dict(torch_module.named_buffers()))
    out = []
    for layer in keras_model.layers:
        if not layer.weights:
            continue
        base = torch_module_name(kind, layer.name)
        for var in layer.weights:
            field = var.path.split("/")[-1]
            tname = f"{base}.{_BN_FIELDS.get(field, 'weight' if field in ('kernel', 'depthwise_kernel') else field)}"
            if tname not in tensors:
                raise KeyError(f"{keras_model.name}/{layer.name}/{field}: torch has no {tname}")
            out.append((f"{keras_model.name}/{layer.name}/{field}", var, tensors[tname], layer, field))
    sigma = "trans_fusion_module."  # the leader's torch module holds sigma; ours is its own network
    n_torch = sum(1 for k in tensors
                  if not k.endswith("num_batches_tracked") and k.startswith(sigma) == (kind == "trans_fusion"))
    if len(out) != n_torch:
        raise ValueError(f"{keras_model.name}: {len(out)} Keras variables vs {n_torch} torch tensors")
    return out


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / denom) if denom > 0 else float(np.linalg.norm(a - b))


class Harness:
    """Our FFSD model and the torch reference, built from the same weights."""

    def __init__(self, *, mode, model, num_students, lr, milestones, steps_per_epoch, seed, code=None,
                 float64=True):
        import keras
        import tensorflow as tf
        import torch

        # float64 on both sides: float32 round-off is amplified by ill-conditioned gradients (BN
        # betas: sums that cancel) to ~1e-3, which would hide a real difference of that size.
        self.dtype = np.float64 if float64 else np.float32
        keras.config.set_floatx("float64" if float64 else "float32")
        keras.config.set_dtype_policy("float64" if float64 else "float32")  # a global policy overrides floatx
        torch.set_default_dtype(torch.float64 if float64 else torch.float32)

        from ffsd_tf.optimizers import TorchAdam, TorchSGD
        from ffsd_tf.schedules import MultiStepLR
        from ffsd_tf.trainer import FFSD, FFSDConfig
        import torch_reference as ref

        self.tf, self.torch = tf, torch
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(seed)
        ffsd = mode == "ffsd"
        n = num_students if ffsd else 1
        blocks = {"resnet8": 1, "resnet20": 3, "resnet32": 5, "resnet56": 9}[model]
        make_net = (lambda leader: ref.CifarResNet(blocks, 10, leader, n)) if code is None else their_factory(code, blocks, n)
        self.ref = ref.Cohort(make_net, num_students=n, ffsd=ffsd, lr=lr)
        if code is not None:
            self.ref = their_modules(code, self.ref, n)
        config = FFSDConfig(model=model, num_classes=10, input_shape=(32, 32, 3), num_students=n,
                            mutual_learning=ffsd, leader=ffsd, fusion=ffsd,
                            diversity="attention" if ffsd else "none", self_distillation="both" if ffsd else "none")
        self.model = FFSD(config, loss_weights="paper")  # not the default (the user recipe: no mutual KL)
        self.model.set_epoch(1000)  # every scheduled weight at its full value: the paper's weights

        def schedule(base):
            return MultiStepLR(base, milestones, 0.1, steps_per_epoch=steps_per_epoch)

        opts = {"students": TorchSGD(schedule(lr), 0.9, True, 1e-4, name="students_sgd")}
        if ffsd:
            opts.update(leader=TorchSGD(schedule(lr), 0.9, True, 1e-4, name="leader_sgd"),
                        fusion=TorchSGD(schedule(lr), 0.9, True, 1e-5, name="fusion_sgd"),
                        decoders=TorchAdam(schedule(1e-3), weight_decay=1e-4, name="decoders_adam"))
        self.model.compile(opts)
        self.milestones, self.steps_per_epoch = list(milestones), steps_per_epoch

        # Every variable paired with its torch twin; role of each for the optimizer-slot checks.
        m, r = self.model, self.ref
        nets = [("resnet", s, t, "students", o) for s, t, o in zip(m.common_students, r.students, r.opts)]
        if ffsd:
            nets += [("resnet", m.leader, r.leader, "leader", r.leader_opt),
                     ("trans_fusion", m.trans_fusion, r.leader, "leader", r.leader_opt),
                     ("fusion", m.fusion, r.fusion, "fusion", r.fusion_opt)]
            owners = [f"student{i + 1}" for i in range(1, n)] + ["leader"]
            nets += [("decoder", m.sd_decoders[o], d, "decoders", opt)
                     for o, d, opt in zip(owners, r.decoders, r.decoder_opts)]
        self.pairs = []  # (label, keras var, torch tensor, role, torch optimizer, layer, field)
        for kind, knet, tnet, role, topt in nets:
            for label, var, tensor, layer, field in pairs(kind, knet, tnet):
                self.pairs.append((label, var, tensor, role, topt, layer, field))
        for label, var, tensor, role, topt, layer, field in self.pairs:
            var.assign(to_keras(layer, field, tensor))
        self._variables = [v for r in self.model.active_roles for v in self.model.role_variables(r)]
        self._train = tf.function(lambda x, y: self.model.train_step((x, y)))
        self._grads = tf.function(self._gradients)

    def _gradients(self, x, y):
        tf = self.tf
        roles = self.model.active_roles
        with tf.GradientTape() as tape:
            per_role, _, _ = self.model.compute_losses(x, y, training=True)
            total = tf.add_n([per_role[r] for r in roles])
        return tape.gradient(total, self._variables)

    def lr_factor(self, step: int) -> float:
        epoch0 = step // self.steps_per_epoch
        return 0.1 ** sum(epoch0 >= m for m in self.milestones)

    def step(self, step: int, x_nhwc: np.ndarray, y: np.ndarray, x_nchw: np.ndarray) -> dict:
        """One step on both sides; returns {quantity: relative error}."""
        torch, tf = self.torch, self.tf
        x_nhwc, x_nchw = x_nhwc.astype(self.dtype), x_nchw.astype(self.dtype)
        # Gradients on the step's starting weights: BN moving statistics are saved and put back,
        # since this extra forward pass in training mode would otherwise move them twice.
        moving = [v for v in self.model.non_trainable_variables]
        saved = [v.numpy() for v in moving]
        grads = self._grads(tf.constant(x_nhwc), tf.constant(y))
        grads = {id(v): g.numpy() for v, g in zip(self._variables, grads)}
        for v, s in zip(moving, saved):
            v.assign(s)
        self.model.reset_metrics()
        logs = {k: float(v) for k, v in self._train(tf.constant(x_nhwc), tf.constant(y)).items()}
        self.ref.set_lr(self.lr_factor(step))
        theirs = self.ref.step(torch.from_numpy(x_nchw), torch.from_numpy(y.astype(np.int64)))

        errors = {}
        for name, value in theirs.items():
            errors[f"loss {name}"] = abs(logs[name] - value) / max(abs(value), 1e-12)
        for label, var, tensor, role, topt, layer, field in self.pairs:
            errors[f"weight {label}"] = rel(var.numpy(), to_keras(layer, field, tensor))
            if not var.trainable:
                continue
            grad = tensor.grad
            errors[f"grad {label}"] = rel(grads[id(var)], to_keras(layer, field, grad))
            opt = self.model.optimizers[role]
            slots = topt.state[tensor]
            index = opt._get_variable_index(var)
            if "momentum_buffer" in slots:
                errors[f"sgd momentum {label}"] = rel(opt.momentums[index].numpy(),
                                                      to_keras(layer, field, slots["momentum_buffer"]))
            if "exp_avg" in slots:
                errors[f"adam m {label}"] = rel(opt._momentums[index].numpy(), to_keras(layer, field, slots["exp_avg"]))
                errors[f"adam v {label}"] = rel(opt._velocities[index].numpy(),
                                                to_keras(layer, field, slots["exp_avg_sq"]))
        return errors

    def sync(self):
        """Copies torch's whole state (weights, BN statistics, optimizer slots) into ours."""
        for label, var, tensor, role, topt, layer, field in self.pairs:
            var.assign(to_keras(layer, field, tensor))
            if not var.trainable:
                continue
            opt, slots = self.model.optimizers[role], topt.state[tensor]
            index = opt._get_variable_index(var)
            if "momentum_buffer" in slots:
                opt.momentums[index].assign(to_keras(layer, field, slots["momentum_buffer"]))
            if "exp_avg" in slots:
                opt._momentums[index].assign(to_keras(layer, field, slots["exp_avg"]))
                opt._velocities[index].assign(to_keras(layer, field, slots["exp_avg_sq"]))


def their_factory(code: str, blocks: int, n: int):
    """Their ``models.resnet_cifar.ResNet``, adapted to return (logits, [layer1..3], sigma)."""
    sys.path.insert(0, code)
    from models import resnet_cifar as R

    class Adapted(R.ResNet):
        def forward(self, x):
            out = super().forward(x)
            logits, sigma = out if self.leader else (out, None)
            return logits, list(self.total_feature_maps.values()), sigma

    return lambda leader: Adapted(R.BasicBlock, [blocks] * 3, num_classes=10, leader=leader,
                                  trans_fusion_info=(64, n) if leader else None)


def their_modules(code: str, cohort, n: int):
    """Swaps in their FusionModule and SelfDistillationModel (same state-dict names as ours)."""
    if not cohort.ffsd:
        return cohort
    import torch

    from models.fusion_module import FusionModule
    from models.self_distillation import SelfDistillationModel

    class Fusion(FusionModule):
        def forward(self, x):
            logits = super().forward(x)
            return logits, list(self.total_feature_maps.values())[-1]

    class Decoder(SelfDistillationModel):
        def forward(self, x):
            super().forward(x)
            return list(self.total_feature_maps.values())[::-1]

    cohort.fusion = Fusion(64, 10, 8, model_num=n)
    cohort.fusion_opt = torch.optim.SGD(cohort.fusion.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5, nesterov=True)
    cohort.decoders = [Decoder(64, 2) for _ in range(n)]
    cohort.decoder_opts = [torch.optim.Adam(d.parameters(), weight_decay=1e-4) for d in cohort.decoders]
    return cohort


def batches(data: str | None, steps: int, batch: int, seed: int, augment: bool):
    """(NHWC normalised for us, int32 labels, NCHW for torch) per step, both from the same pixels.

    With ``augment`` the crop offsets and flips are drawn once and applied by each side's own
    code: ours ``DataBundle.augment_batch`` (tf ops), theirs a NumPy reflect-pad + crop + flip.
    """
    rng = np.random.default_rng(seed)
    if data and os.path.exists(data):
        d = np.load(data)
        x_all, y_all = d["x_train"], d["y_train"].astype(np.int32).ravel()
    else:
        x_all = rng.integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)
        y_all = rng.integers(0, 10, 4096).astype(np.int32)
    if augment:
        import tensorflow as tf

        from ffsd_tf.data.pipeline import DataBundle

        bundle = DataBundle("parity", 10, (32, 32, 3), tuple(CIFAR10_MEAN), tuple(CIFAR10_STD), [], batch, batch,
                            x_all[:1], y_all[:1], x_all[:1], y_all[:1])
    for _ in range(steps):
        idx = rng.choice(len(y_all), batch, replace=False)
        pixels, y = x_all[idx], y_all[idx]
        ours = pixels
        theirs = pixels.astype(np.float32)
        if augment:
            dy, dx = rng.integers(0, 9, batch), rng.integers(0, 9, batch)
            flip = rng.integers(0, 2, batch)
            ours = bundle.augment_batch(tf.constant(pixels), tf.constant(dy, tf.int32), tf.constant(dx, tf.int32),
                                        tf.constant(flip, tf.int32)).numpy()
            padded = np.pad(pixels, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
            theirs = np.stack([p[a:a + 32, b:b + 32] for p, a, b in zip(padded, dy, dx)])
            theirs = np.where(flip[:, None, None, None] == 1, theirs[:, :, ::-1], theirs).astype(np.float32)
        ours = ((ours.astype(np.float32) / 255.0 - CIFAR10_MEAN) / CIFAR10_STD).astype(np.float32)
        theirs = ((theirs / 255.0 - CIFAR10_MEAN) / CIFAR10_STD).astype(np.float32)
        yield ours, y, np.ascontiguousarray(theirs.transpose(0, 3, 1, 2))


def run(mode="single", model="resnet20", steps=200, batch=32, num_students=2, lr=0.1, milestones=(2, 3),
        steps_per_epoch=None, seed=0, augment=True, data=DEFAULT_DATA, code=None, tolerance=1e-4,
        float64=True, resync=False, report_every=20, out=print):
    """Runs the comparison; returns (worst error over all steps, its quantity, first step over tolerance or None).

    ``resync``: after each step, torch's state is copied into ours, so every step starts from
    identical state (one-step parity, free of the dynamics' amplification of round-off).
    """
    steps_per_epoch = steps_per_epoch or max(steps // 4, 1)  # lr x0.1 after 1/2 and 3/4 of the steps
    h = Harness(mode=mode, model=model, num_students=num_students, lr=lr, milestones=milestones,
                steps_per_epoch=steps_per_epoch, seed=seed, code=code, float64=float64)
    worst, worst_name, first_bad = 0.0, "", None
    for step, (x, y, x_t) in enumerate(batches(data, steps, batch, seed, augment)):
        errors = h.step(step, x, y, x_t)
        if resync:
            h.sync()
        name = max(errors, key=errors.get)
        if errors[name] > worst:
            worst, worst_name = errors[name], name
        if first_bad is None and errors[name] > tolerance:
            first_bad = step + 1
            out(f"step {step + 1}: first quantity over {tolerance:g}: {name} = {errors[name]:.3g}")
        if (step + 1) % report_every == 0 or step == 0 or step + 1 == steps:
            by_kind = {}
            for k, v in errors.items():
                kind = k.split(" ")[0] if not k.startswith(("sgd", "adam")) else "slots"
                by_kind[kind] = max(by_kind.get(kind, 0.0), v)
            out(f"step {step + 1:4d} lr x{h.lr_factor(step):g}: " +
                "  ".join(f"{k} {v:.2e}" for k, v in by_kind.items()) + f"   (worst: {name})")
    return worst, worst_name, first_bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["single", "ffsd"], default="single")
    ap.add_argument("--model", default="resnet20", choices=["resnet8", "resnet20", "resnet32", "resnet56"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--num_students", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noaugment", action="store_true", help="feed un-augmented batches")
    ap.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 .npz (x_train, y_train); noise if missing")
    ap.add_argument("--code", default=None, help="checkout of SJLeo/FFSD: use their network classes")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--float32", action="store_true", help="compare in float32 (default: float64 on both sides)")
    ap.add_argument("--resync", action="store_true", help="copy torch's state into ours after every step")
    args = ap.parse_args()
    worst, name, first_bad = run(mode=args.mode, model=args.model, steps=args.steps, batch=args.batch,
                                 num_students=args.num_students, lr=args.lr, seed=args.seed,
                                 augment=not args.noaugment, data=args.data, code=args.code, tolerance=args.tolerance,
                                 float64=not args.float32, resync=args.resync)
    verdict = "PARITY" if first_bad is None else f"DRIFT from step {first_bad}"
    print(f"{verdict}: worst relative error {worst:.3g} ({name}) over {args.steps} steps, tolerance {args.tolerance:g}")
    sys.exit(0 if first_bad is None else 1)


if __name__ == "__main__":
    main()
