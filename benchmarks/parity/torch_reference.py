"""A PyTorch reference of the authors' CIFAR trainer (SJLeo/FFSD ``CIFARTrainer.py``), written for
the parity harness. Not a runtime dependency of ffsd_tf: only ``benchmarks/parity`` and its test
import it, and only where CPU torch is installed (``requirements-parity.txt``).

What it mirrors, module by module (their file names):

* ``models/resnet_cifar.py``: ResNet-8/20/32/56 with conv1x1+BN shortcuts; ``forward`` returns the
  logits and the three stage outputs (their forward hooks), plus the TransFusionModule output for
  the leader.
* ``models/fusion_module.py``: ``FusionModule`` and ``TransFusionModule``.
* ``models/self_distillation.py``: ``SelfDistillationModel`` (ConvTranspose2d-BN-ReLU blocks).
* ``CIFARTrainer.train_with_test``: one iteration, in their order: the leader's forward, every
  student's forward, the fusion forward; then per student CE + T^2 KL / (n-1) + diversity +
  SD-diversity, ``zero_grad / backward / step``; the fusion module; the leader; then every
  decoder's own training. Loss weights are passed in (their ``lambda_warmup`` values).

``--code=<checkout of SJLeo/FFSD>`` in ``parity.py`` swaps in their network classes; the loop and
the losses here are the ones their trainer runs (re-typed, not copied).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------- networks
def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + identity)


class TransFusionModule(nn.Module):
    def __init__(self, channel, model_num=2):
        super().__init__()
        self.conv1 = nn.Conv2d(channel, channel, 3, 1, 1, groups=channel, bias=False)
        self.bn1 = nn.BatchNorm2d(channel)
        self.conv1_1 = nn.Conv2d(channel, channel * model_num, 1, bias=False)
        self.bn1_1 = nn.BatchNorm2d(channel * model_num)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn1_1(self.conv1_1(x)))


class CifarResNet(nn.Module):
    """Their ``ResNet(BasicBlock, [n, n, n])``; ``forward`` -> (logits, [layer1, layer2, layer3], sigma)."""

    def __init__(self, blocks, num_classes=10, leader=False, model_num=2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        inplanes = 16
        for stage, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            layer = []
            for b in range(blocks):
                layer.append(BasicBlock(inplanes, planes, stride if b == 0 else 1))
                inplanes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.fc = nn.Linear(64, num_classes)
        self.trans_fusion_module = TransFusionModule(64, model_num) if leader else None
        _init(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        sigma = self.trans_fusion_module(f3) if self.trans_fusion_module is not None else None
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(f3, 1), 1))
        return logits, [f1, f2, f3], sigma


class FusionModule(nn.Module):
    def __init__(self, channel, num_classes, spatial, model_num=2):
        super().__init__()
        c = channel * model_num
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv1_1 = nn.Conv2d(c, channel, 1, bias=False)
        self.bn1_1 = nn.BatchNorm2d(channel)
        self.avgpool2d = nn.AvgPool2d(spatial)
        self.fc2 = nn.Linear(channel, num_classes)
        _init(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        fused = F.relu(self.bn1_1(self.conv1_1(x)))
        return self.fc2(torch.flatten(self.avgpool2d(fused), 1)), fused


class SelfDistillationModel(nn.Module):
    """``forward`` -> decoder outputs shallow to deep (their hook list, reversed)."""

    def __init__(self, input_channel=64, layer_num=2):
        super().__init__()
        self.layer_num = layer_num
        c = input_channel
        for i in range(layer_num):
            block = nn.Module()
            block.convtranpose = nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=False)
            block.norm = nn.BatchNorm2d(c // 2)
            setattr(self, f"layer{i}", block)
            c //= 2

    def forward(self, x):
        outs = []
        for i in range(self.layer_num):
            block = getattr(self, f"layer{i}")
            x = F.relu(block.norm(block.convtranpose(x)))
            outs.append(x)
        return outs[::-1]


# ----------------------------------------------------------------------------------- losses
def attention(f):
    return f.pow(2).mean(1, keepdim=True)


def attention_loss(x, y):  # their attention_loss / fusion_loss
    x = F.normalize(x.reshape(x.size(0), -1))
    y = F.normalize(y.reshape(y.size(0), -1))
    return (x - y).pow(2).mean()


def diversity_loss(x, y):
    norm_y = torch.norm(y.reshape(y.size(0), -1), dim=1, keepdim=True)
    x = F.normalize(x.reshape(x.size(0), -1))
    y = F.normalize(y.reshape(y.size(0), -1))
    threshold = y.topk(int(y.size(1) / 3), largest=False)[0][:, -1].unsqueeze(-1)
    y = (norm_y / 2 - y) * torch.sign(y - threshold) + norm_y / 2
    return (x - y).pow(2).mean()


def diversity_target(y):
    a = attention(y)
    size = a.size()
    norm_y = torch.norm(a.reshape(a.size(0), -1), dim=1, keepdim=True)
    a = F.normalize(a.reshape(a.size(0), -1))
    threshold = a.topk(int(a.size(1) / 3), largest=False)[0][:, -1].unsqueeze(-1)
    target = (norm_y / 2 - a) * torch.sign(a - threshold) + norm_y / 2
    return y + ((target - a) * norm_y / y.size(1)).reshape(size)


def kl(student, teacher, t):
    return t * t * F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher.detach() / t, 1), reduction="batchmean")


# ----------------------------------------------------------------------------------- the loop
class Cohort:
    """Their trainer's state: n students (+ leader, fusion, decoders) and one optimizer each.

    ``ffsd=False`` is the plain network (CE only, one student): their code with ``model_num=1``
    and every other term off, i.e. ``nn.CrossEntropyLoss`` + SGD.
    """

    def __init__(self, make_net, *, num_students=2, num_classes=10, ffsd=True, lr=0.1, temperature=2.0):
        self.n, self.ffsd, self.t = num_students, ffsd, temperature
        self.students = [make_net(leader=False) for _ in range(num_students)]

        def sgd(params, wd):
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)

        self.opts = [sgd(s.parameters(), 1e-4) for s in self.students]
        self.decoders, self.decoder_opts = [], []
        if ffsd:
            self.leader = make_net(leader=True)
            self.leader_opt = sgd(self.leader.parameters(), 1e-4)
            self.fusion = FusionModule(64, num_classes, 8, num_students)
            self.fusion_opt = sgd(self.fusion.parameters(), 1e-5)
            # n-1 student decoders (students 2..n), then the leader's: their order.
            self.decoders = [SelfDistillationModel() for _ in range(num_students)]
            self.decoder_opts = [torch.optim.Adam(d.parameters(), lr=1e-3, weight_decay=1e-4) for d in self.decoders]

    @property
    def optimizers(self):
        opts = list(self.opts)
        if self.ffsd:
            opts += [self.leader_opt, self.fusion_opt] + self.decoder_opts
        return opts

    def set_lr(self, factor):
        """Their MultiStepLR: every optimizer's lr = its initial lr x factor."""
        for opt in self.optimizers:
            for g in opt.param_groups:
                g.setdefault("initial_lr", g["lr"])
                g["lr"] = g["initial_lr"] * factor

    def step(self, x, y, w=None):
        """One iteration of their ``train_with_test``; returns the losses by our metric names."""
        w = w or {"diversity": 1e-5, "fusion": 10.0, "self_distillation": 1000.0}
        for m in self.students + ([self.leader, self.fusion] + self.decoders if self.ffsd else []):
            m.train()
        out = {}
        if self.ffsd:
            leader_logits, leader_feats, sigma = self.leader(x)
        outs = [s(x) for s in self.students]
        logits = [o[0] for o in outs]
        feats = [o[1] for o in outs]
        if self.ffsd:
            fusion_in = torch.cat([f[-1].detach() for f in feats], 1)
            fusion_logits, fused = self.fusion(fusion_in)
            ensemble = sum(logits) / self.n
        for i in range(self.n):
            loss = F.cross_entropy(logits[i], y)
            out[f"student{i + 1}/ce"] = loss.item()
            if self.ffsd and self.n > 1:
                kl_sum = sum(kl(logits[i], logits[j], self.t) for j in range(self.n) if j != i)
                loss = loss + kl_sum / (self.n - 1)
                if i != 0:
                    prev = feats[i - 1][-1].detach()
                    loss = loss + w["diversity"] * diversity_loss(attention(feats[i][-1]), attention(prev))
                    dec = self.decoders[i - 1]
                    dec.eval()
                    targets = dec(diversity_target(prev).detach())
                    sd = sum(attention_loss(attention(f), attention(t.detach())) for f, t in zip(feats[i][:-1], targets))
                    loss = loss + w["diversity"] * sd
            out[f"student{i + 1}/loss"] = loss.item()
            self.opts[i].zero_grad()
            loss.backward()
            self.opts[i].step()
        if not self.ffsd:
            return out
        loss = F.cross_entropy(fusion_logits, y) + kl(fusion_logits, ensemble, self.t)
        out["fusion/loss"] = loss.item()
        self.fusion_opt.zero_grad()
        loss.backward()
        self.fusion_opt.step()

        fused_d = fused.detach()
        loss = F.cross_entropy(leader_logits, y) + kl(leader_logits, fusion_logits, self.t)
        loss = loss + w["fusion"] * attention_loss(attention(leader_feats[-1]), attention(fused_d))
        loss = loss + w["fusion"] * attention_loss(attention(sigma), attention(fusion_in))
        dec = self.decoders[-1]
        dec.eval()
        targets = dec(fused_d)
        sd = sum(attention_loss(attention(f), attention(t.detach())) for f, t in zip(leader_feats[:-1], targets))
        loss = loss + w["fusion"] * sd
        out["leader/loss"] = loss.item()
        self.leader_opt.zero_grad()
        loss.backward()
        self.leader_opt.step()

        owners = [(f"sd_student{i + 1}", feats[i]) for i in range(1, self.n)] + [("sd_leader", leader_feats)]
        for (name, own), dec, opt in zip(owners, self.decoders, self.decoder_opts):
            dec.train()
            decoded = dec(own[-1].detach())
            loss = sum(
                w["self_distillation"] * (attention_loss(s, f.detach()) + attention_loss(attention(s), attention(f.detach())))
                for s, f in zip(decoded, own[:-1])
            )
            out[f"{name}/loss"] = loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return out
