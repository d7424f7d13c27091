"""PyTorch eager reference of the `harness bench` workload, as mdistiller/RepDistiller scripts run
it: a `torch.utils.data.DataLoader` over uint8 CIFAR arrays with the standard transforms (zero-pad 4
+ random crop 32, horizontal flip, to float, normalise) written out with torch ops (torchvision is
not installed), teacher forward under no_grad in eval mode, student forward/backward, mdistiller's
KD loss (0.1·CE + 0.9·τ²·KL, τ = 4), SGD(0.05, momentum 0.9, wd 5e-4).

Variants: `--layout nchw --amp none` is mdistiller's eager fp32 run; `--layout cl` puts weights and
inputs channels-last, `--amp bf16|fp16` runs both forward passes under
`torch.autocast(device, dtype)` with the logits cast to fp32 for the loss (fp16 with
`torch.amp.GradScaler`), the fastest single run PyTorch offers without compiling.

usage: bench_kd.py --data DIR --teacher T --student S --batch B --steps N --warmup W
                   --mode step|data --threads K [--workers W] [--device cpu|cuda] [--flops]
                   [--layout nchw|cl] [--amp none|bf16|fp16]
Prints one JSON line: images_per_s (and FLOPs per image with --flops).
"""
import argparse
import json
import os
import pickle
import time

import torch
import torch.nn.functional as F

import models

MEAN = torch.tensor([0.5071, 0.4867, 0.4408]).view(3, 1, 1)
STD = torch.tensor([0.2675, 0.2565, 0.2761]).view(3, 1, 1)


def read_cifar100_binary(d):
    """`harness data synth` writes CIFAR-100's binary layout: <coarse><fine><3072 bytes>."""
    raw = open(os.path.join(d, "cifar-100-binary", "train.bin"), "rb").read()
    rec = 2 + 3072
    n = len(raw) // rec
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(n, rec)
    return t[:, 2:].reshape(n, 3, 32, 32).clone(), t[:, 1].long().clone()


class CifarTrain(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = F.pad(self.x[i], (4, 4, 4, 4))
        oy, ox = torch.randint(0, 9, (2,)).tolist()
        img = img[:, oy:oy + 32, ox:ox + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        return (img.float() / 255.0 - MEAN) / STD, self.y[i]


def kd_loss(s, t, y, tau=4.0):
    kl = F.kl_div(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1), reduction="none").sum(1).mean() * tau ** 2
    return 0.1 * F.cross_entropy(s, y) + 0.9 * kl


def main():
    ap = argparse.ArgumentParser()
    for k in ("data", "teacher", "student", "mode", "device"):
        ap.add_argument("--" + k, default="cpu" if k == "device" else None)
    ap.add_argument("--layout", choices=("nchw", "cl"), default="nchw")
    ap.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    for k in ("batch", "steps", "warmup", "threads", "workers"):
        ap.add_argument("--" + k, type=int, default=0)
    ap.add_argument("--flops", action="store_true")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as mdistiller's train.py
    torch.manual_seed(0)
    fmt = torch.channels_last if a.layout == "cl" else torch.contiguous_format
    teacher = models.build(a.teacher).to(dev, memory_format=fmt).eval()
    student = models.build(a.student).to(dev, memory_format=fmt).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = read_cifar100_binary(a.data)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.amp]
    scaler = torch.amp.GradScaler(dev.type) if a.amp == "fp16" else None

    def step(xb, yb):
        xb = xb.contiguous(memory_format=fmt)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            with torch.no_grad():
                t = teacher(xb)[0]
            s = student(xb)[0]
        loss = kd_loss(s.float(), t.float(), yb)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    out = {}
    if a.flops:
        from torch.utils.flop_counter import FlopCounterMode
        xb = torch.randn(a.batch, 3, 32, 32, device=dev)
        yb = torch.randint(0, 100, (a.batch,), device=dev)
        with FlopCounterMode(display=False) as fc:
            with torch.no_grad():
                teacher(xb)
        out["teacher_fwd_flops_per_image"] = fc.get_total_flops() / a.batch
        with FlopCounterMode(display=False) as fc:
            kd_loss(student(xb)[0], torch.zeros(a.batch, 100, device=dev), yb).backward()
        out["student_fwd_bwd_flops_per_image"] = fc.get_total_flops() / a.batch
        student.zero_grad(set_to_none=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if a.mode == "step":
        xb = ((x[:a.batch].float() / 255.0 - MEAN) / STD).to(dev)
        yb = y[:a.batch].to(dev)
        for _ in range(a.warmup):
            step(xb, yb)
        sync()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step(xb, yb)
        sync()
        dt = time.perf_counter() - t0
    else:
        loader = torch.utils.data.DataLoader(CifarTrain(x, y), batch_size=a.batch, shuffle=True, num_workers=a.workers,
                                             pin_memory=dev.type == "cuda", persistent_workers=a.workers > 0)
        done, t0 = 0, None
        while done < a.warmup + a.steps:
            for xb, yb in loader:
                if done == a.warmup:
                    sync()
                    t0 = time.perf_counter()
                step(xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True))
                done += 1
                if done == a.warmup + a.steps:
                    break
        sync()
        dt = time.perf_counter() - t0
    out["images_per_s"] = a.steps * a.batch / dt
    print(json.dumps(out))


if __name__ == "__main__":
    main()
