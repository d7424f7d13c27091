"""Replays a traced harness run with the official training loops, in PyTorch, for the
trajectory-parity test (tests/parity.rs).

usage: trajectory.py TRACE_RUN_DIR CONFIG_JSON CIFAR_BIN_DIR TEACHER.safetensors OUT_DIR [knobs]
       trajectory.py --jobs FILE    (one such argument list per line, whitespace-separated)
       trajectory.py --make-teacher MODEL CLASSES OUT.safetensors

The harness, run with KD_HARNESS_TRACE (harness/src/train/trace.rs), writes the run's initial
variables, per step the batch's dataset indices, crop offsets, flips, loss terms and the method's
random draws (CRD's negatives), and its state after the update (weights, BN buffers, momentum
buffers, CRD's banks). This script starts
from the same initial weights and builds every batch itself from the CIFAR-100 binary files and
the traced draws, as the official data pipeline does (torchvision `RandomCrop(32, padding=4)`:
zero padding then a crop at the drawn offset; `RandomHorizontalFlip`; `ToTensor`; `Normalize`
with the CIFAR-100 mean/std: mdistiller/dataset/cifar100.py `get_cifar100_train_transform`,
RepDistiller dataset/cifar100.py). It then trains as the official loops do:
- ce, kd, dkd, dist: mdistiller/engine/trainer.py `train_epoch`/`train_iter`:
  `adjust_learning_rate(epoch)` at the start of each 1-based epoch (mdistiller/engine/utils.py:
  `steps = np.sum(epoch > np.asarray(LR_DECAY_STAGES))`), then per batch `zero_grad`, forward
  (teacher under no_grad, `Distiller.train()` keeps the teacher in eval mode:
  mdistiller/distillers/_base.py), `loss = sum(l.mean() for l in losses_dict.values())`,
  `backward`, `step`; `optim.SGD(get_learnable_parameters(), lr, momentum, weight_decay)`
  (`init_optimizer`: every parameter decayed, no Nesterov).
- crd: RepDistiller train_student.py (SGD over `trainable_list` = student + embed_s + embed_t;
  `adjust_learning_rate` of helper/util.py, the same rule) and helper/loops.py `train_distill`:
  `loss = gamma*loss_cls + alpha*loss_div + beta*loss_kd`, then `zero_grad`, `backward`, `step`.
The losses are the official functions, copied below with their files.

Every step starts from the harness's state after the previous step (teacher forcing: weights,
BN buffers, momentum buffers, CRD's banks and Z; the first from `init.safetensors`), so each of
the steps is checked on its own. Free-running replays (`--free-running`) cannot be compared at
1e-4: this small network is chaotic, and a 1e-7 relative perturbation of the initial weights
(about one fp32 ulp; torch's SGD adds with an FMA, `add(alpha=)`, where tch rounds twice) grows
to 1e-3 in the loss and to >0.4 relative in some momentum buffers within 30 steps of the
reference alone. OUT_DIR/step-<k>.safetensors holds the state after step k under the harness's
names (`model.<param/buffer>`, `aux.<crd module>`, `momentum.<param>`), the official loss
(`ref.loss.total`, `ref.loss.ce`) and `ref.x_maxdiff` (largest difference between this script's
batch and the harness's).

Knobs that make the replay deliberately wrong (the test asserts that each one breaks parity):
--nesterov, --no-wd-on-bn (BN weight/bias without weight decay), --milestone-zero-based
(`epoch >= milestone`), --pad-mode reflect, --warmup-zero-based (DKD factor min((epoch-1)/warmup, 1)).

Needs only torch and numpy (no torchvision).
"""
import argparse
import glob
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
import st

MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)


# --- mdistiller/distillers/KD.py ------------------------------------------------------------
def kd_loss(logits_student, logits_teacher, temperature):
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    loss_kd *= temperature**2
    return loss_kd


# --- mdistiller/distillers/DKD.py (size_average=False written as reduction="sum") -----------
def dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = F.kl_div(log_pred_student, pred_teacher, reduction="sum") * (temperature**2) / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * (temperature**2) / target.shape[0]
    return alpha * tckd_loss + beta * nckd_loss


def _get_gt_mask(logits, target):
    target = target.reshape(-1)
    return torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()


def _get_other_mask(logits, target):
    target = target.reshape(-1)
    return torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()


def cat_mask(t, mask1, mask2):
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    return torch.cat([t1, t2], dim=1)


# --- hunto/image_classification_sota lib/models/losses/dist_kd.py (DIST_KD's classification
# submodule); CIFAR-100: kd = dist_t4 (DIST(beta=1, gamma=1, tau=4)) with loss weight 2, which is
# DIST(beta=2, gamma=2, tau=4), the harness's parameters. -------------------------------------
def cosine_similarity(a, b, eps=1e-8):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_correlation(a, b, eps=1e-8):
    return cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def inter_class_relation(y_s, y_t):
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s, y_t):
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def dist_loss(z_s, z_t, beta, gamma, tau):
    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


# --- RepDistiller distiller_zoo/KD.py (DistillKL) and crd/criterion.py, crd/memory.py ----------
def distill_kl(y_s, y_t, T):
    p_s = F.log_softmax(y_s / T, dim=1)
    p_t = F.softmax(y_t / T, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * (T**2) / y_s.shape[0]


class Normalize(nn.Module):
    def __init__(self, power=2):
        super().__init__()
        self.power = power

    def forward(self, x):
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1.0 / self.power)
        return x.div(norm)


class Embed(nn.Module):
    def __init__(self, dim_in=1024, dim_out=128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.l2norm = Normalize(2)

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        return self.l2norm(self.linear(x))


class ContrastMemory(nn.Module):
    """The official memory; the banks come from the harness's initial state instead of
    `torch.rand` (same U(-stdv, stdv) law), and `idx` (contrast_idx) is always given."""

    def __init__(self, inputSize, outputSize, K, T=0.07, momentum=0.5):
        super().__init__()
        self.nLem = outputSize
        self.K = K
        self.register_buffer("params", torch.tensor([K, T, -1, -1, momentum]))
        stdv = 1.0 / math.sqrt(inputSize / 3)
        self.register_buffer("memory_v1", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))

    def forward(self, v1, v2, y, idx=None):
        K = int(self.params[0].item())
        T = self.params[1].item()
        Z_v1 = self.params[2].item()
        Z_v2 = self.params[3].item()
        momentum = self.params[4].item()
        batchSize = v1.size(0)
        outputSize = self.memory_v1.size(0)
        inputSize = self.memory_v1.size(1)
        weight_v1 = torch.index_select(self.memory_v1, 0, idx.view(-1)).detach()
        weight_v1 = weight_v1.view(batchSize, K + 1, inputSize)
        out_v2 = torch.bmm(weight_v1, v2.view(batchSize, inputSize, 1))
        out_v2 = torch.exp(torch.div(out_v2, T))
        weight_v2 = torch.index_select(self.memory_v2, 0, idx.view(-1)).detach()
        weight_v2 = weight_v2.view(batchSize, K + 1, inputSize)
        out_v1 = torch.bmm(weight_v2, v1.view(batchSize, inputSize, 1))
        out_v1 = torch.exp(torch.div(out_v1, T))
        if Z_v1 < 0:
            self.params[2] = out_v1.mean() * outputSize
            Z_v1 = self.params[2].clone().detach().item()
        if Z_v2 < 0:
            self.params[3] = out_v2.mean() * outputSize
            Z_v2 = self.params[3].clone().detach().item()
        out_v1 = torch.div(out_v1, Z_v1).contiguous()
        out_v2 = torch.div(out_v2, Z_v2).contiguous()
        with torch.no_grad():
            l_pos = torch.index_select(self.memory_v1, 0, y.view(-1))
            l_pos.mul_(momentum)
            l_pos.add_(torch.mul(v1, 1 - momentum))
            l_norm = l_pos.pow(2).sum(1, keepdim=True).pow(0.5)
            self.memory_v1.index_copy_(0, y, l_pos.div(l_norm))
            ab_pos = torch.index_select(self.memory_v2, 0, y.view(-1))
            ab_pos.mul_(momentum)
            ab_pos.add_(torch.mul(v2, 1 - momentum))
            ab_norm = ab_pos.pow(2).sum(1, keepdim=True).pow(0.5)
            self.memory_v2.index_copy_(0, y, ab_pos.div(ab_norm))
        return out_v1, out_v2


class ContrastLoss(nn.Module):
    def __init__(self, n_data):
        super().__init__()
        self.n_data = n_data

    def forward(self, x):
        eps = 1e-7
        bsz = x.shape[0]
        m = x.size(1) - 1
        Pn = 1 / float(self.n_data)
        P_pos = x.select(1, 0)
        log_D1 = torch.div(P_pos, P_pos.add(m * Pn + eps)).log_()
        P_neg = x.narrow(1, 1, m)
        log_D0 = torch.div(P_neg.clone().fill_(m * Pn), P_neg.add(m * Pn + eps)).log_()
        return -(log_D1.sum(0) + log_D0.view(-1, 1).sum(0)) / bsz


class CRDLoss(nn.Module):
    def __init__(self, s_dim, t_dim, feat_dim, n_data, nce_k, nce_t, nce_m):
        super().__init__()
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.contrast = ContrastMemory(feat_dim, n_data, nce_k, nce_t, nce_m)
        self.criterion_t = ContrastLoss(n_data)
        self.criterion_s = ContrastLoss(n_data)

    def forward(self, f_s, f_t, idx, contrast_idx=None):
        f_s = self.embed_s(f_s)
        f_t = self.embed_t(f_t)
        out_s, out_t = self.contrast(f_s, f_t, idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)


# --- harness names of the CRD module's state ---------------------------------------------------
CRD_NAMES = {
    "embed_s.weight": "embed_s.linear.weight",
    "embed_s.bias": "embed_s.linear.bias",
    "embed_t.weight": "embed_t.linear.weight",
    "embed_t.bias": "embed_t.linear.bias",
    "memory_s": "contrast.memory_v1",
    "memory_t": "contrast.memory_v2",
}


def adjust_learning_rate(epoch, base_lr, milestones, rate, optimizer, zero_based):
    """mdistiller/engine/utils.py and RepDistiller helper/util.py (identical rule)."""
    steps = np.sum(epoch >= np.asarray(milestones)) if zero_based else np.sum(epoch > np.asarray(milestones))
    if steps > 0:
        new_lr = base_lr * (rate**steps)
        for param_group in optimizer.param_groups:
            param_group["lr"] = new_lr
        return new_lr
    return base_lr


def read_cifar100_bin(folder):
    """CIFAR-100 binary layout: per image a coarse and a fine label byte, then 3072 CHW bytes."""
    raw = np.fromfile(os.path.join(folder, "train.bin"), dtype=np.uint8).reshape(-1, 2 + 3072)
    return torch.from_numpy(raw[:, 2:].reshape(-1, 3, 32, 32).copy()), torch.from_numpy(raw[:, 1].astype(np.int64))


def make_batch(images, idx, oy, ox, flip, pad_mode):
    """torchvision RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, at the
    traced offsets (top-left corner (oy, ox) of the padded image) and flips."""
    mean = torch.as_tensor(MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(STD, dtype=torch.float32)[:, None, None]
    out = []
    for k, i in enumerate(idx.tolist()):
        img = images[i].to(torch.float32)
        img = F.pad(img[None], (4, 4, 4, 4), mode=pad_mode)[0] if pad_mode == "reflect" else F.pad(img, (4, 4, 4, 4))
        y0, x0 = int(oy[k]), int(ox[k])
        img = img[:, y0:y0 + 32, x0:x0 + 32]
        if flip is not None and int(flip[k]):
            img = img.flip(2)
        out.append((img.div(255) - mean) / std)
    return torch.stack(out)


def load_state(path, state, student, crd, opt, named):
    """Sets the student (weights and BN buffers), CRD's modules, banks and Z, and the momentum
    buffers from a harness state (harness names)."""
    sd = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = student.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{path}: student state mismatch: missing {missing}, unexpected {unexpected}")
    if crd is not None:
        crd.load_state_dict({CRD_NAMES[k[len("aux."):]]: v for k, v in state.items() if k[len("aux."):] in CRD_NAMES}, strict=False)
        z = state["aux.z"]
        with torch.no_grad():
            # The harness marks an unset Z with 0, the official memory with -1.
            crd.contrast.params[2:4] = torch.where(z == 0, torch.full_like(z, -1.0), z)
    for n, t in named:
        buf = state.get(f"momentum.{n}")
        if buf is not None:
            opt.state[t]["momentum_buffer"] = buf.clone()


def state_of(student, crd, opt, named):
    out = {f"model.{k}": v.clone() for k, v in student.state_dict().items() if not k.endswith("num_batches_tracked")}
    if crd is not None:
        st_ = crd.state_dict()
        out.update({f"aux.{k}": st_[v].clone() for k, v in CRD_NAMES.items()})
        out["aux.z"] = st_["contrast.params"][2:4].clone()
    for n, t in named:
        buf = opt.state[t].get("momentum_buffer") if t in opt.state else None
        if buf is not None:
            out[f"momentum.{n}"] = buf.clone()
    return out


def losses_of(method, params, epoch, a, student_out, teacher_out, target, idx, s, crd):
    """The official loss dict of one batch."""
    logit_s, f_s = student_out
    logit_t, f_t = teacher_out if teacher_out is not None else (None, None)
    if method == "crd":
        contrast_idx = torch.cat([idx[:, None], s["draw.crd_negatives"]], 1)
        loss_cls = F.cross_entropy(logit_s, target)
        loss_div = distill_kl(logit_s, logit_t, params["tau"])
        loss_kd = crd(f_s, f_t.detach(), idx, contrast_idx)
        # RepDistiller helper/loops.py: loss = gamma*loss_cls + alpha*loss_div + beta*loss_kd
        return {"ce": params["ce_weight"] * loss_cls, "div": params["kd_weight"] * loss_div, "crd": params["beta"] * loss_kd}
    ce = F.cross_entropy(logit_s, target)
    if method == "ce":
        return {"ce": ce}
    if method == "kd":
        return {"ce": params["ce_weight"] * ce, "kd": params["kd_weight"] * kd_loss(logit_s, logit_t, params["tau"])}
    if method == "dkd":
        e = epoch - 1 if a.warmup_zero_based else epoch
        w = min(e / params["warmup"], 1.0) if params["warmup"] > 0 else 1.0
        return {"ce": params["ce_weight"] * ce, "kd": w * dkd_loss(logit_s, logit_t, target, params["alpha"], params["beta"], params["tau"])}
    if method == "dist":
        return {"ce": params["ce_weight"] * ce, "kd": dist_loss(logit_s, logit_t, params["beta"], params["gamma"], params["tau"])}
    raise SystemExit(f"no reference for method {method}")


def main(a):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = json.load(open(a.config))
    method, params, recipe = cfg["method"], cfg["params"], cfg["train"]
    images, labels = read_cifar100_bin(a.data)
    classes = 100
    init_path = os.path.join(a.trace, "init.safetensors")
    init = st.load(init_path)
    student = models.build(cfg["model"], classes)
    teacher = None
    if cfg["teachers"]:
        teacher = models.build(cfg["teachers"][0]["model"], classes)
        teacher.load_state_dict(st.load(a.teacher), strict=False)
        teacher.eval()
    crd = None
    modules = [student]
    if method == "crd":
        with torch.no_grad():
            probe = torch.zeros(2, 3, 32, 32)
            s_dim = student(probe)[3].shape[1]
            t_dim = teacher(probe)[3].shape[1]
        crd = CRDLoss(s_dim, t_dim, params["feat_dim"], len(labels), params["nce_k"], params["nce_t"], params["nce_m"])
        modules += [crd.embed_s, crd.embed_t]
    named = list(student.named_parameters())
    if crd is not None:
        inv = {v: k for k, v in CRD_NAMES.items()}
        named += [(f"aux.{inv[n]}", t) for n, t in crd.named_parameters()]
    decay = recipe["weight_decay"]
    if a.no_wd_on_bn:
        bn = {id(p) for m in student.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)}
        groups = [{"params": [t for _, t in named if id(t) not in bn]}, {"params": [t for _, t in named if id(t) in bn], "weight_decay": 0.0}]
    else:
        groups = [t for _, t in named]
    opt = torch.optim.SGD(groups, lr=recipe["lr"], momentum=recipe["momentum"], weight_decay=decay, nesterov=a.nesterov)
    load_state(init_path, init, student, crd, opt, named)
    if a.channels_last:
        # The harness's default layout (KD_HARNESS_CHANNELS_LAST): same values, other summation order.
        student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)

    os.makedirs(a.out, exist_ok=True)
    steps = sorted(glob.glob(os.path.join(a.trace, "step-*.safetensors")))
    only = {int(k) for k in a.steps.split(",")} if a.steps else None
    if only is not None and a.free_running:
        raise SystemExit("--steps needs teacher forcing (each step starts from the harness's state)")
    prev = None
    for k, path in enumerate(steps, 1):
        if only is not None and k not in only:
            continue
        s = st.load(path)
        if k > 1 and not a.free_running:
            # Teacher forcing: start this step from the harness's state after the previous one.
            prev = prev if prev is not None and prev[0] == steps[k - 2] else (steps[k - 2], st.load(steps[k - 2]))
            load_state(prev[0], prev[1], student, crd, opt, named)
        epoch = int(s["epoch"][0])
        # Each epoch starts with adjust_learning_rate and train mode (idempotent within it).
        adjust_learning_rate(epoch, recipe["lr"], recipe["milestones"], recipe["gamma"], opt, a.milestone_zero_based)
        for m in modules:
            m.train()
        if teacher is not None:
            teacher.eval()
        idx = s["idx"]
        target = labels[idx]
        if not torch.equal(target, s["y"]):
            raise SystemExit(f"{path}: labels at the traced indices differ from the traced labels")
        if recipe["augment"]:
            x = make_batch(images, idx, s["draw.crop_y"].view(-1), s["draw.crop_x"].view(-1), s.get("draw.flip", None), a.pad_mode)
        else:
            # No augmentation: the crop at offset (pad, pad) of the padded image is the image itself.
            four = torch.full((len(idx),), 4)
            x = make_batch(images, idx, four, four, None, a.pad_mode)
        if a.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad()
        logit_s, _, _, f_s = student(x)
        teacher_out = None
        if teacher is not None:
            with torch.no_grad():
                logit_t, _, _, f_t = teacher(x)
            teacher_out = (logit_t, f_t)
        losses = losses_of(method, params, epoch, a, (logit_s, f_s), teacher_out, target, idx, s, crd)
        loss = sum([l.mean() for l in losses.values()])
        loss.backward()
        opt.step()
        out = state_of(student, crd, opt, named)
        out["ref.loss.total"] = torch.tensor([loss.item()], dtype=torch.float64)
        out["ref.loss.ce"] = torch.tensor([losses["ce"].item()], dtype=torch.float64)
        out["ref.x_maxdiff"] = torch.tensor([(x - s["x"]).abs().max().item()], dtype=torch.float64)
        st.save(out, os.path.join(a.out, os.path.basename(path)))
        prev = (path, s)


def make_teacher(name, classes, path):
    """A teacher checkpoint with non-trivial BN statistics: the official init (seeded), then a few
    train-mode forward passes over random inputs (no gradient steps)."""
    torch.manual_seed(1)
    m = models.build(name, classes)
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(16, 3, 32, 32))
    st.save({k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}, path)


def parser():
    p = argparse.ArgumentParser()
    for n in ["trace", "config", "data", "teacher", "out"]:
        p.add_argument(n)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--no-wd-on-bn", action="store_true")
    p.add_argument("--milestone-zero-based", action="store_true")
    p.add_argument("--warmup-zero-based", action="store_true")
    p.add_argument("--pad-mode", default="constant", choices=["constant", "reflect"])
    p.add_argument("--channels-last", action="store_true", help="run the convolutions channels-last, as the harness does by default")
    p.add_argument("--steps", default="", help="comma-separated 1-based steps to replay (default: all)")
    p.add_argument("--free-running", action="store_true", help="no teacher forcing (see the module doc)")
    return p


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--make-teacher":
        make_teacher(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "--jobs":
        # One command line per line of the file: one torch start-up for many replays.
        for line in open(sys.argv[2]):
            if line.strip():
                main(parser().parse_args(line.split()))
    else:
        main(parser().parse_args())
