#!/usr/bin/env python3
"""First run of the harness on a machine: one command, one JSON document on stdout.

Run through `scripts/device-check.sh` (which finds the harness binary and this machine's torch).
What it measures, in order (progress goes to stderr):

1. `harness doctor` (libtorch, CUDA, devices), parsed into key/value pairs.
2. A short KD suite on generated CIFAR-100-format data: one teacher, then four students
   (ce, kd, dkd, dist) in `train.precision` (bf16 by default), trained once as a cohort of 4
   and once alone (`--no-cohort`), from the same teacher; wall time of each and the students'
   last-epoch top-1 side by side (bit-identical on the CPU; on CUDA, cuDNN may differ).
3. Runs per device: the four students alone again with 1, 2 and 4 concurrent runs per GPU
   (`--per-gpu`; on the CPU `--jobs`), wall time and students per hour.
4. `harness bench --cohort 4 --json` in bf16 and fp16 against the PyTorch references (this
   python's torch), raw JSON kept (`--quick`: bf16 only, on tiny models).

A failed step is recorded under "errors" with its command and output tail; the others still run.
Exit status: 0 when every step succeeded, 1 when one failed, 2 on bad usage.
"""

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

METHODS = ["ce", "kd", "dkd", "dist"]

# Full sizes for a GPU; --quick shrinks everything so the CPU path runs in a test.
FULL = dict(teacher="resnet32x4", student="resnet8x4", train=5000, test=1000, epochs=2, batch=64,
            bench=[], bench_precisions=["bf16", "fp16"], per_device=[1, 2, 4])
QUICK = dict(teacher="resnet8x4", student="resnet8x4", train=200, test=100, epochs=1, batch=32,
             bench=["--teacher", "resnet8x4", "--student", "resnet8x4", "--batch", "8", "--steps", "2",
                    "--warmup", "1", "--rounds", "1", "--images", "200"],
             # fp16 autocast on a CPU runs at a few images/s: the GPU path measures it.
             bench_precisions=["bf16"], per_device=[1, 2])


def log(msg):
    print(f"device-check: {msg}", file=sys.stderr, flush=True)


class Checker:
    def __init__(self, harness, python, device, work):
        self.harness, self.python, self.device, self.work = harness, python, device, work
        self.errors = []

    def sh(self, step, args, timeout=1800):
        """Runs the harness; returns (ok, stdout, wall seconds). Failures go to `errors`."""
        cmd = [self.harness] + args
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=self.work, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.errors.append({"step": step, "command": cmd, "error": f"timed out after {timeout} s"})
            return False, "", time.monotonic() - t0
        wall = time.monotonic() - t0
        if p.returncode != 0:
            tail = (p.stdout + p.stderr)[-3000:]
            self.errors.append({"step": step, "command": cmd, "exit": p.returncode, "output_tail": tail})
            return False, p.stdout, wall
        return True, p.stdout, wall


def parse_doctor(text):
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
        elif line.strip():
            out.setdefault("version", line.strip())
    return out


def write_suite(path, name, data_dir, cfg, precision):
    methods = ", ".join(f'"{m}"' for m in METHODS)
    with open(path, "w") as f:
        f.write(f"""[suite]
name = "{name}"
dataset = "cifar100"
seeds = [0]
data_dir = "{data_dir}"

[train]
epochs = {cfg['epochs']}
batch_size = {cfg['batch']}
lr = 0.05
milestones = []
precision = "{precision}"

[teachers.t]
model = "{cfg['teacher']}"

[grid]
pair = [{{ teacher = "t", student = "{cfg['student']}" }}]
method = [{methods}]
""")


def students(results, name):
    """Last-epoch top-1 of each student, by method."""
    out = {}
    for s in glob.glob(os.path.join(results, name, "runs", "*", "summary.json")):
        run = os.path.dirname(s)
        with open(os.path.join(run, "config.json")) as f:
            method = json.load(f).get("method")
        with open(s) as f:
            top1 = json.load(f).get("last_top1")
        if method in METHODS:
            out[method] = top1
    return out


def device_flags(device, k):
    """k concurrent runs: per GPU on CUDA, CPU jobs otherwise."""
    if device == "cpu":
        return ["--devices", "cpu", "--jobs", str(k)]
    return ["--devices", device, "--per-gpu", str(k)]


def suite_phase(c, cfg, precision, report):
    name = "devcheck"
    data = os.path.join(c.work, "data")
    ok, _, _ = c.sh("synth", ["data", "synth", "--out", data, "--classes", "100", "--train", str(cfg["train"]),
                              "--test", str(cfg["test"])])
    if not ok:
        return
    suite = os.path.join(c.work, "devcheck.toml")
    write_suite(suite, name, data, cfg, precision)
    base = os.path.join(c.work, "r-teacher")
    log(f"teacher {cfg['teacher']} ({precision}, {cfg['epochs']} epochs)")
    ok, _, wall = c.sh("teacher", ["run", suite, "--results", base, "--quiet", "--only", "role=teacher"] + device_flags(c.device, 1))
    report["suite"] = {"precision": precision, "teacher": cfg["teacher"], "student": cfg["student"], "methods": METHODS,
                       "train_images": cfg["train"], "epochs": cfg["epochs"], "batch": cfg["batch"], "teacher_wall_s": wall}
    if not ok:
        return

    def students_run(tag, flags):
        results = os.path.join(c.work, f"r-{tag}")
        shutil.copytree(base, results)
        log(f"4 students, {tag}")
        ok, _, wall = c.sh(tag, ["run", suite, "--results", results, "--quiet"] + flags)
        return {"wall_s": wall, "ok": ok, "last_top1": students(results, name)}

    cohort = students_run("cohort4", device_flags(c.device, 1) + ["--cohort", "4"])
    alone = students_run("alone", device_flags(c.device, 1) + ["--no-cohort"])
    report["suite"]["cohort4"] = cohort
    report["suite"]["alone"] = alone
    if cohort["ok"] and alone["ok"] and cohort["wall_s"] > 0:
        report["suite"]["cohort_speedup"] = alone["wall_s"] / cohort["wall_s"]
        diffs = [abs(cohort["last_top1"][m] - alone["last_top1"][m]) for m in METHODS
                 if m in cohort["last_top1"] and m in alone["last_top1"]]
        report["suite"]["max_top1_diff_cohort_vs_alone"] = max(diffs) if diffs else None
    rows = []
    for k in cfg["per_device"]:
        r = students_run(f"per-device-{k}", device_flags(c.device, k) + ["--no-cohort"])
        r["runs_per_device"] = k
        if r["ok"] and r["wall_s"] > 0:
            r["students_per_hour"] = len(METHODS) * 3600.0 / r["wall_s"]
        rows.append(r)
    report["runs_per_device"] = rows


def bench_phase(c, cfg, report):
    report["bench"] = {}
    for precision in cfg["bench_precisions"]:
        log(f"bench, cohort of 4, {precision}")
        args = ["bench", "--cohort", "4", "--precision", precision, "--json", "--python", c.python,
                "--device", c.device] + cfg["bench"]
        ok, out, _ = c.sh(f"bench-{precision}", args)
        if ok:
            try:
                report["bench"][precision] = json.loads(out)
            except json.JSONDecodeError as e:
                c.errors.append({"step": f"bench-{precision}", "error": f"output is not JSON: {e}"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--harness", required=True, help="the harness binary")
    ap.add_argument("--device", default="auto", help="auto (cuda when doctor sees a GPU, else cpu), cpu, cuda, cuda:N")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"], help="the suite's train.precision")
    ap.add_argument("--quick", action="store_true", help="tiny models and data (the CPU path, as the tests run it)")
    ap.add_argument("--skip", action="append", default=[], choices=["suite", "bench"], help="leave out a phase")
    ap.add_argument("--keep", help="work in this folder (kept) instead of a temporary one")
    a = ap.parse_args()
    if not (os.path.isfile(a.harness) and os.access(a.harness, os.X_OK)):
        print(f"error: --harness {a.harness}: not an executable file", file=sys.stderr)
        return 2
    cfg = QUICK if a.quick else FULL
    work = a.keep or tempfile.mkdtemp(prefix="kd-device-check-")
    os.makedirs(work, exist_ok=True)
    c = Checker(os.path.abspath(a.harness), sys.executable, a.device, work)
    t0 = time.monotonic()
    report = {"schema": 1, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": a.quick,
              "host": platform.node(), "python": sys.executable, "harness": c.harness}
    try:
        import torch
        report["torch"] = torch.__version__
        report["torch_cuda_devices"] = torch.cuda.device_count()
    except ImportError:
        report["torch"] = None
    ok, out, _ = c.sh("doctor", ["doctor"], timeout=120)
    report["doctor"] = parse_doctor(out) if ok else None
    if a.device == "auto":
        cuda = ok and report["doctor"].get("CUDA available") == "true"
        c.device = "cuda" if cuda else "cpu"
    report["device"] = c.device
    if ok:
        if "suite" not in a.skip:
            suite_phase(c, cfg, a.precision, report)
        if "bench" not in a.skip:
            bench_phase(c, cfg, report)
    report["wall_s"] = time.monotonic() - t0
    report["errors"] = c.errors
    print(json.dumps(report, indent=2))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if c.errors else 0


if __name__ == "__main__":
    sys.exit(main())
