//! `harness bench`: the fixed KD workload (teacher resnet32x4 → student resnet8x4, batch 64,
//! synthetic CIFAR-100) timed side by side with PyTorch references of the same step
//! (`scripts/reference/bench_kd.py`, run by the venv's python), alternating harness and
//! references in every round so machine noise hits all of them; medians over rounds.
//!
//! - **Harness side**: a cohort of K students sharing one teacher forward per batch (in this
//!   file's own step code), in `--precision`; reported as `per_student_images_per_s` = K·B
//!   images per step ÷ step time, the throughput comparable with one run's images/s.
//! - **References**: PyTorch eager fp32 (NCHW, mdistiller's way) and PyTorch's best single run
//!   (channels-last + `torch.autocast` bf16 on the CPU; on CUDA the faster of fp16 and bf16).
//! - **Upper bound** per precision: `peak ÷ FLOPs per student-image`, where FLOPs per image come
//!   from PyTorch's FLOP counter (teacher forward ÷ K + student forward and backward; only
//!   convolutions and matmuls count) and `peak` is the highest throughput measured on this device
//!   for those same kernels ([`peak_kernels`]): dense matmul at large sizes and the workload's own
//!   3×3 convolutions (its three stage widths at batch B), forward and forward+backward, NCHW and
//!   channels-last, in fp32 and in the low dtype (a bf16 run also runs fp32 kernels, so its peak
//!   is the maximum over both). A real step runs those kernels at most at their best measured
//!   rate and spends extra time on everything else (BN, activations, losses, optimiser), so it
//!   cannot exceed the bound; the report shows each side as a fraction of it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tch::{Device, Tensor};

use crate::data::Dataset;
use crate::distill::{self, Step};
use crate::train::precision::{Amp, LossScaler, Precision};
use crate::train::{Net, build, sgd::Sgd};

/// Workload and measurement settings.
#[derive(Clone, Debug, Serialize)]
pub struct BenchOpts {
    pub teacher: String,
    pub student: String,
    pub batch: i64,
    pub steps: usize,
    pub warmup: usize,
    pub rounds: usize,
    pub threads: i32,
    /// DataLoader workers of the references (mdistiller's scripts use several; on a small CPU
    /// machine they compete with the compute threads).
    pub ref_workers: usize,
    /// Harness side: conv weights and inputs channels-last.
    pub channels_last: bool,
    /// Students sharing each teacher forward on the harness side.
    pub cohort: usize,
    /// Harness side's forward arithmetic.
    pub precision: Precision,
    #[serde(skip)]
    pub device: Device,
    /// Python with torch for the references; `None` measures the harness alone.
    #[serde(skip)]
    pub python: Option<PathBuf>,
}

/// One side's images/s per round and their median.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub rounds: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Series {
    fn of(v: Vec<f64>) -> Series {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        let median = match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        let (min, max) = (s.first().copied().unwrap_or(f64::NAN), s.last().copied().unwrap_or(f64::NAN));
        Series { rounds: v, median, min, max }
    }
}

/// Training step alone (one fixed batch) and with the data pipeline.
#[derive(Clone, Debug, Serialize)]
pub struct StepData<T> {
    pub step: T,
    pub data: T,
}

/// A PyTorch reference configuration (`bench_kd.py --layout --amp`).
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Variant {
    pub layout: &'static str,
    pub amp: &'static str,
}

impl Variant {
    const EAGER: Variant = Variant { layout: "nchw", amp: "none" };

    pub fn name(&self) -> String {
        format!("{} {}", if self.layout == "cl" { "channels-last" } else { "NCHW" }, if self.amp == "none" { "fp32" } else { self.amp })
    }

    fn precision(&self) -> Precision {
        Precision::parse(if self.amp == "none" { "fp32" } else { self.amp }).unwrap_or_default()
    }

    /// Candidates for PyTorch's best single run on a device.
    fn best_candidates(device: Device) -> Vec<Variant> {
        match device {
            Device::Cuda(_) => vec![Variant { layout: "cl", amp: "fp16" }, Variant { layout: "cl", amp: "bf16" }],
            _ => vec![Variant { layout: "cl", amp: "bf16" }],
        }
    }
}

/// A reference variant's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct Reference {
    pub variant: Variant,
    pub name: String,
    pub images_per_s: StepData<Series>,
}

/// One measured kernel.
#[derive(Clone, Debug, Serialize)]
pub struct Kernel {
    pub name: String,
    pub precision: Precision,
    pub flops_per_s: f64,
}

/// FLOPs per image of the workload (PyTorch's FLOP counter).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Flops {
    pub teacher_fwd: f64,
    pub student_fwd_bwd: f64,
}

/// The upper bound for one precision.
#[derive(Clone, Debug, Serialize)]
pub struct Bound {
    pub precision: Precision,
    /// Best kernel throughput among fp32 and this precision's kernels.
    pub peak_flops_per_s: f64,
    pub peak_kernel: String,
    /// peak ÷ (teacher_fwd / K + student_fwd_bwd): the harness side's cohort.
    pub per_student_images_per_s: f64,
    /// peak ÷ (teacher_fwd + student_fwd_bwd): one run alone (the references).
    pub single_images_per_s: f64,
}

/// Everything `harness bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub opts: BenchOpts,
    pub device: String,
    /// Harness: K·B images per step ÷ step time.
    pub per_student_images_per_s: StepData<Series>,
    pub reference_eager: Option<Reference>,
    /// The best candidate (highest median step throughput) and every candidate measured.
    pub reference_best: Option<Reference>,
    pub reference_candidates: Vec<Reference>,
    /// Harness per-student ÷ reference (medians).
    pub ratio_vs_eager: Option<StepData<f64>>,
    pub ratio_vs_best: Option<StepData<f64>>,
    pub kernels: Vec<Kernel>,
    pub flops_per_image: Option<Flops>,
    pub bounds: Vec<Bound>,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Best throughput of `f` (doing `flops` FLOPs) over a few repetitions after one warm-up.
fn best_rate(device: Device, flops: f64, mut f: impl FnMut()) -> f64 {
    f();
    sync(device);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        f();
        sync(device);
        best = best.max(flops / t.elapsed().as_secs_f64());
    }
    best
}

/// Throughput of the kernels a KD step runs, in each precision: dense matmul (2n³ FLOPs) at
/// n = 1024 and 2048, and 3×3 stride-1 convolutions over `convs` = (channels, side) at batch
/// `batch` (2·B·C²·9·side² FLOPs forward, 3× with backward), NCHW and channels-last.
pub fn peak_kernels(device: Device, precisions: &[Precision], batch: i64, convs: &[(i64, i64)]) -> Vec<Kernel> {
    let mut out = Vec::new();
    for &p in precisions {
        let kind = p.kind();
        for n in [1024i64, 2048] {
            let a = Tensor::randn([n, n], (kind, device));
            let b = Tensor::randn([n, n], (kind, device));
            let r = best_rate(device, 2.0 * (n * n * n) as f64, || {
                let _ = a.matmul(&b);
            });
            out.push(Kernel { name: format!("matmul {n}"), precision: p, flops_per_s: r });
        }
        for &(c, side) in convs {
            for cl in [false, true] {
                let layout = |t: Tensor| if cl { crate::models::to_channels_last(&t) } else { t };
                let x = layout(Tensor::randn([batch, c, side, side], (kind, device)));
                let w = layout(Tensor::randn([c, c, 3, 3], (kind, device)));
                let fwd = 2.0 * (batch * c * c * 9 * side * side) as f64;
                let conv = |x: &Tensor, w: &Tensor| x.conv2d(w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
                let r = best_rate(device, fwd, || tch::no_grad(|| drop(conv(&x, &w))));
                let lay = if cl { "channels-last" } else { "NCHW" };
                out.push(Kernel { name: format!("conv3x3 {c}ch {side}x{side} {lay} fwd"), precision: p, flops_per_s: r });
                let (xg, wg) = (x.set_requires_grad(true), w.set_requires_grad(true));
                let r = best_rate(device, 3.0 * fwd, || conv(&xg, &wg).sum(kind).backward());
                out.push(Kernel { name: format!("conv3x3 {c}ch {side}x{side} {lay} fwd+bwd"), precision: p, flops_per_s: r });
            }
        }
    }
    out
}

/// The bound for `p` from the measured kernels (fp32's count for every precision).
fn bound(p: Precision, kernels: &[Kernel], f: Flops, cohort: usize) -> Option<Bound> {
    let best = kernels.iter().filter(|k| k.precision == p || k.precision.is_fp32()).max_by(|a, b| a.flops_per_s.total_cmp(&b.flops_per_s))?;
    let peak = best.flops_per_s;
    Some(Bound {
        precision: p,
        peak_flops_per_s: peak,
        peak_kernel: format!("{} {}", best.name, best.precision),
        per_student_images_per_s: peak / (f.teacher_fwd / cohort as f64 + f.student_fwd_bwd),
        single_images_per_s: peak / (f.teacher_fwd + f.student_fwd_bwd),
    })
}

/// One student of the benchmark's cohort.
struct Learner {
    net: Net,
    opt: Sgd,
    kd: Box<dyn distill::Distiller>,
    scaler: Option<LossScaler>,
}

/// The harness's KD step for a cohort: the teacher forward once, then each student's forward,
/// loss and update, all in the run's precision as the training loop runs them. Per-student
/// images/s (K·B per step) over `steps` steps after `warmup`, either on one fixed batch
/// (`with_data = false`) or drawing shuffled, augmented batches from the device-resident dataset.
pub fn harness_images_per_s(o: &BenchOpts, data: &Dataset, with_data: bool) -> anyhow::Result<f64> {
    tch::manual_seed(0);
    let amp = Amp::new(o.device, o.precision)?;
    let teacher = build(&o.teacher, data, o.device)?;
    let info = distill::find("kd").context("kd is registered")?;
    let mut cohort = Vec::new();
    for _ in 0..o.cohort {
        let net = build(&o.student, data, o.device)?;
        if o.channels_last {
            crate::models::vs_channels_last(&net.vs);
        }
        let opt = Sgd::new(&net.vs, 0.05, 0.9, 5e-4, false);
        cohort.push(Learner { net, opt, kd: info.instantiate(&info.defaults())?, scaler: amp.scaler() });
    }
    if o.channels_last {
        crate::models::vs_channels_last(&teacher.vs);
    }
    let layout = |x: Tensor| if o.channels_last { crate::models::to_channels_last(&x) } else { x };
    let (fx, fy, _) = data.train_batches(o.batch, true, 0).next().context("the benchmark dataset is empty")??;
    let fixed = (layout(fx), fy);
    let mut step = |x: &Tensor, y: &Tensor| -> anyhow::Result<()> {
        let t = [tch::no_grad(|| amp.forward(teacher.model.as_ref(), x, false))?];
        for l in cohort.iter_mut() {
            let s = amp.forward(l.net.model.as_ref(), x, true)?;
            let terms = l.kd.losses(&Step::new(&s, &t, y, 1))?;
            let total = terms.iter().map(|(_, t)| t.shallow_clone()).reduce(|a, b| a + b).context("kd returned no terms")?;
            match l.scaler.as_mut() {
                Some(sc) => {
                    sc.backward_step(&mut l.opt, &total)?;
                }
                None => l.opt.backward_step(&total)?,
            }
        }
        Ok(())
    };
    let mut timed = None;
    let mut done = 0usize;
    while done < o.warmup + o.steps {
        if with_data {
            for batch in data.train_batches(o.batch, true, done as u64) {
                let (x, y, _) = batch?;
                if x.size()[0] != o.batch {
                    continue; // the last partial batch would change the work per step
                }
                if done == o.warmup {
                    sync(o.device);
                    timed = Some(Instant::now());
                }
                step(&layout(x), &y)?;
                done += 1;
                if done == o.warmup + o.steps {
                    break;
                }
            }
        } else {
            if done == o.warmup {
                sync(o.device);
                timed = Some(Instant::now());
            }
            step(&fixed.0, &fixed.1)?;
            done += 1;
        }
    }
    sync(o.device);
    let dt = timed.map(|t| t.elapsed().as_secs_f64()).context("no timed steps")?;
    Ok((o.cohort * o.steps) as f64 * o.batch as f64 / dt)
}

/// Runs the reference script once; returns its JSON.
fn reference(o: &BenchOpts, py: &Path, data_dir: &Path, mode: &str, v: Variant, flops: bool) -> anyhow::Result<serde_json::Value> {
    let script = reference_script()?;
    let mut c = std::process::Command::new(py);
    c.arg(&script)
        .args(["--data", &data_dir.to_string_lossy(), "--teacher", &o.teacher, "--student", &o.student, "--mode", mode])
        .args(["--batch", &o.batch.to_string(), "--steps", &o.steps.to_string(), "--warmup", &o.warmup.to_string()])
        .args(["--threads", &o.threads.to_string(), "--workers", &o.ref_workers.to_string()])
        .args(["--layout", v.layout, "--amp", v.amp])
        .args(["--device", if matches!(o.device, Device::Cuda(_)) { "cuda" } else { "cpu" }]);
    if flops {
        c.arg("--flops");
    }
    let out = c.output().with_context(|| format!("running {}", py.display()))?;
    if !out.status.success() {
        anyhow::bail!("reference benchmark ({}) failed ({}): {}", v.name(), script.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("reading the reference's output {line:?}"))
}

fn images_per_s(v: &serde_json::Value) -> anyhow::Result<f64> {
    v["images_per_s"].as_f64().context("reference printed no images_per_s")
}

/// `scripts/reference/bench_kd.py` next to the binary's source tree, or under $KD_HARNESS_SCRIPTS.
fn reference_script() -> anyhow::Result<PathBuf> {
    let candidates = [
        std::env::var_os("KD_HARNESS_SCRIPTS").map(|d| PathBuf::from(d).join("reference/bench_kd.py")),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference/bench_kd.py")),
        Some(PathBuf::from("scripts/reference/bench_kd.py")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file()).context("scripts/reference/bench_kd.py not found (set KD_HARNESS_SCRIPTS to the repo's scripts/)")
}

/// Per-round measurements of one side.
#[derive(Default)]
struct Rounds {
    step: Vec<f64>,
    data: Vec<f64>,
}

impl Rounds {
    fn series(self) -> StepData<Series> {
        StepData { step: Series::of(self.step), data: Series::of(self.data) }
    }
}

/// The whole benchmark.
pub fn run(o: &BenchOpts, data: &Dataset, data_dir: &Path, progress: &mut dyn FnMut(&str)) -> anyhow::Result<BenchResult> {
    tch::set_num_threads(o.threads);
    if let Device::Cuda(_) = o.device {
        tch::Cuda::cudnn_set_benchmark(true); // as training does
    }
    let variants: Vec<Variant> = match &o.python {
        Some(_) => std::iter::once(Variant::EAGER).chain(Variant::best_candidates(o.device)).collect(),
        None => Vec::new(),
    };
    let mut h = Rounds::default();
    let mut refs: Vec<Rounds> = variants.iter().map(|_| Rounds::default()).collect();
    let mut flops = None;
    for round in 0..o.rounds {
        for mode in ["step", "data"] {
            let v = harness_images_per_s(o, data, mode == "data")?;
            progress(&format!("round {}: harness {mode} {v:.1} img/s per student (cohort {}, {})", round + 1, o.cohort, o.precision));
            if mode == "step" { &mut h.step } else { &mut h.data }.push(v);
            for (variant, r) in variants.iter().zip(refs.iter_mut()) {
                let py = o.python.as_deref().context("references need python")?;
                let first = round == 0 && mode == "step" && *variant == Variant::EAGER;
                let out = reference(o, py, data_dir, mode, *variant, first)?;
                if first {
                    let f = |k: &str| out[k].as_f64();
                    flops = f("teacher_fwd_flops_per_image").zip(f("student_fwd_bwd_flops_per_image")).map(|(t, s)| Flops { teacher_fwd: t, student_fwd_bwd: s });
                }
                let ips = images_per_s(&out)?;
                progress(&format!("round {}: pytorch {} {mode} {ips:.1} img/s", round + 1, variant.name()));
                if mode == "step" { &mut r.step } else { &mut r.data }.push(ips);
            }
        }
    }
    let mut precisions = vec![Precision::Fp32, Precision::Bf16];
    if o.precision == Precision::Fp16 || matches!(o.device, Device::Cuda(_)) {
        precisions.push(Precision::Fp16);
    }
    // Bounds need the FLOP count, which comes from the reference side.
    let kernels = match flops {
        Some(_) => {
            progress("measuring kernel peaks");
            peak_kernels(o.device, &precisions, o.batch, &[(64, 32), (128, 16), (256, 8)])
        }
        None => Vec::new(),
    };
    let bounds: Vec<Bound> = flops.map(|f| precisions.iter().filter_map(|p| bound(*p, &kernels, f, o.cohort)).collect()).unwrap_or_default();
    let mine = h.series();
    let mut measured: Vec<Reference> =
        variants.iter().zip(refs).map(|(v, r)| Reference { variant: *v, name: v.name(), images_per_s: r.series() }).collect();
    let eager = (!measured.is_empty()).then(|| measured.remove(0));
    let best = measured.iter().max_by(|a, b| a.images_per_s.step.median.total_cmp(&b.images_per_s.step.median)).cloned();
    let ratio = |r: &Reference| StepData {
        step: mine.step.median / r.images_per_s.step.median,
        data: mine.data.median / r.images_per_s.data.median,
    };
    Ok(BenchResult {
        opts: o.clone(),
        device: format!("{:?}", o.device),
        ratio_vs_eager: eager.as_ref().map(ratio),
        ratio_vs_best: best.as_ref().map(ratio),
        per_student_images_per_s: mine,
        reference_eager: eager,
        reference_best: best,
        reference_candidates: measured,
        kernels,
        flops_per_image: flops,
        bounds,
    })
}

impl BenchResult {
    fn bound_for(&self, p: Precision) -> Option<&Bound> {
        self.bounds.iter().find(|b| b.precision == p)
    }

    /// One table row: median, spread over rounds, and the share of the relevant upper bound.
    fn row(&self, label: &str, s: &Series, p: Precision, cohort: bool) -> String {
        let of = self
            .bound_for(p)
            .map(|b| {
                let lim = if cohort { b.per_student_images_per_s } else { b.single_images_per_s };
                format!("{:>5.1}% of {lim:.0} ({p})", 100.0 * s.median / lim)
            })
            .unwrap_or_default();
        format!("{label:<46} {:>9.1}  {:>7.1}–{:<7.1} {of}\n", s.median, s.min, s.max)
    }

    pub fn text(&self) -> String {
        let o = &self.opts;
        let mut s = format!(
            "workload: {} → {} KD (τ = 4), batch {}, {} student(s) per teacher forward, harness in {}, {}, {} threads, \
             {} timed steps after {} warm-up, median of {} rounds\n",
            o.teacher, o.student, o.batch, o.cohort, o.precision, self.device, o.threads, o.steps, o.warmup, o.rounds
        );
        s.push_str(&format!("{:<46} {:>9}  {:^15} {}\n", "", "images/s", "min–max", "upper bound"));
        let h = &self.per_student_images_per_s;
        let refs: Vec<&Reference> = self.reference_eager.iter().chain(self.reference_candidates.iter()).collect();
        for (mode, label) in [("step", "step"), ("data", "step + data")] {
            let pick = |x: &StepData<Series>| if mode == "step" { x.step.clone() } else { x.data.clone() };
            s.push_str(&self.row(&format!("harness {label} (per student)"), &pick(h), o.precision, true));
            for r in &refs {
                let what = if mode == "step" { label.to_string() } else { format!("DataLoader ({} workers)", o.ref_workers) };
                s.push_str(&self.row(&format!("pytorch {} {what}", r.name), &pick(&r.images_per_s), r.variant.precision(), false));
            }
        }
        for (name, r) in [("eager", &self.ratio_vs_eager), ("best", &self.ratio_vs_best)] {
            if let Some(r) = r {
                s.push_str(&format!("harness ÷ pytorch {name}: step {:.2}×, with data {:.2}×\n", r.step, r.data));
            }
        }
        if let Some(f) = &self.flops_per_image {
            s.push_str(&format!(
                "FLOPs per image: teacher forward {:.3} G + student forward/backward {:.3} G; bound = peak ÷ (teacher/K + student)\n",
                f.teacher_fwd / 1e9,
                f.student_fwd_bwd / 1e9
            ));
        }
        for b in &self.bounds {
            s.push_str(&format!(
                "{} peak {:.1} GFLOP/s ({}) → {:.1} img/s per student (K = {}), {:.1} alone\n",
                b.precision,
                b.peak_flops_per_s / 1e9,
                b.peak_kernel,
                b.per_student_images_per_s,
                o.cohort,
                b.single_images_per_s
            ));
        }
        s
    }
}
