//! `harness bench`: the fixed KD workload (teacher resnet32x4 → student resnet8x4, batch 64,
//! synthetic CIFAR-100) timed side by side with a PyTorch eager reference of the same step
//! (`scripts/reference/bench_kd.py`, run by the venv's python), alternating harness and
//! reference in every round so machine noise hits both; medians over rounds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::distill::{self, Step};
use crate::train::{build, sgd::Sgd};

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
    /// DataLoader workers of the reference (mdistiller's scripts use several; on a small CPU
    /// machine they compete with the compute threads).
    pub ref_workers: usize,
    /// Harness side: conv weights and inputs channels-last.
    pub channels_last: bool,
    #[serde(skip)]
    pub device: Device,
    /// Python with torch for the reference; `None` measures the harness alone.
    #[serde(skip)]
    pub python: Option<PathBuf>,
}

/// One side's images/s per round and their median.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub rounds: Vec<f64>,
    pub median: f64,
}

impl Series {
    fn of(mut v: Vec<f64>) -> Series {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        let median = if s.is_empty() {
            f64::NAN
        } else if s.len() % 2 == 1 {
            s[s.len() / 2]
        } else {
            (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
        };
        v.shrink_to_fit();
        Series { rounds: v, median }
    }
}

/// Everything `harness bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub opts: BenchOpts,
    pub device: String,
    pub harness_step: Series,
    pub harness_data: Series,
    pub reference_step: Option<Series>,
    pub reference_data: Option<Series>,
    /// harness ÷ reference (medians).
    pub ratio_step: Option<f64>,
    pub ratio_data: Option<f64>,
    /// Measured dense float32 matmul throughput of this device (FLOP/s).
    pub peak_matmul_flops: f64,
    /// Teacher forward + student forward and backward, per image (PyTorch's FLOP counter).
    pub flops_per_image: Option<f64>,
    /// `peak_matmul_flops / flops_per_image`: images/s if every FLOP ran at matmul speed.
    pub flop_limit_images_per_s: Option<f64>,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Dense matmul FLOP/s (2n³ per product), best of a few repetitions.
pub fn peak_matmul(device: Device) -> f64 {
    let n = 1024i64;
    let a = Tensor::randn([n, n], (Kind::Float, device));
    let b = Tensor::randn([n, n], (Kind::Float, device));
    let _ = a.matmul(&b);
    sync(device);
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..4 {
            let _ = a.matmul(&b);
        }
        sync(device);
        best = best.max(4.0 * 2.0 * (n * n * n) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// The harness's KD training step, as the training loop runs it; images/s over `steps` steps
/// after `warmup`, either on one fixed batch (`with_data = false`) or drawing shuffled,
/// augmented batches from the device-resident dataset.
pub fn harness_images_per_s(o: &BenchOpts, data: &Dataset, with_data: bool) -> anyhow::Result<f64> {
    tch::manual_seed(0);
    let teacher = build(&o.teacher, data, o.device)?;
    let student = build(&o.student, data, o.device)?;
    if o.channels_last {
        crate::models::vs_channels_last(&teacher.vs);
        crate::models::vs_channels_last(&student.vs);
    }
    let layout = |x: Tensor| if o.channels_last { crate::models::to_channels_last(&x) } else { x };
    let mut opt = Sgd::new(&student.vs, 0.05, 0.9, 5e-4, false);
    let info = distill::find("kd").context("kd is registered")?;
    let mut kd = info.instantiate(&info.defaults())?;
    let (fx, fy, _) = data.train_batches(o.batch, true, 0).next().context("the benchmark dataset is empty")??;
    let fixed = (layout(fx), fy);
    let mut step = |x: &Tensor, y: &Tensor| -> anyhow::Result<()> {
        let t = [tch::no_grad(|| teacher.model.forward(x, false))];
        let s = student.model.forward(x, true);
        let terms = kd.losses(&Step::new(&s, &t, y, 1))?;
        let total = terms.iter().map(|(_, t)| t.shallow_clone()).reduce(|a, b| a + b).context("kd returned no terms")?;
        opt.backward_step(&total)?;
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
    Ok((o.steps as i64 * o.batch) as f64 / dt)
}

/// Runs the reference script once; returns its JSON.
fn reference(o: &BenchOpts, py: &Path, data_dir: &Path, mode: &str, flops: bool) -> anyhow::Result<serde_json::Value> {
    let script = reference_script()?;
    let mut c = std::process::Command::new(py);
    c.arg(&script)
        .args(["--data", &data_dir.to_string_lossy(), "--teacher", &o.teacher, "--student", &o.student, "--mode", mode])
        .args(["--batch", &o.batch.to_string(), "--steps", &o.steps.to_string(), "--warmup", &o.warmup.to_string()])
        .args(["--threads", &o.threads.to_string(), "--workers", &o.ref_workers.to_string()])
        .args(["--device", if matches!(o.device, Device::Cuda(_)) { "cuda" } else { "cpu" }]);
    if flops {
        c.arg("--flops");
    }
    let out = c.output().with_context(|| format!("running {}", py.display()))?;
    if !out.status.success() {
        anyhow::bail!("reference benchmark failed ({}): {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("reading the reference's output {line:?}"))
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

/// The whole benchmark.
pub fn run(o: &BenchOpts, data: &Dataset, data_dir: &Path, progress: &mut dyn FnMut(&str)) -> anyhow::Result<BenchResult> {
    tch::set_num_threads(o.threads);
    let peak = peak_matmul(o.device);
    let (mut hs, mut hd, mut rs, mut rd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut flops = None;
    for round in 0..o.rounds {
        hs.push(harness_images_per_s(o, data, false)?);
        progress(&format!("round {}: harness step {:.1} img/s", round + 1, hs[round]));
        if let Some(py) = &o.python {
            let v = reference(o, py, data_dir, "step", round == 0)?;
            if round == 0 {
                let f = |k: &str| v[k].as_f64();
                flops = f("teacher_fwd_flops_per_image").zip(f("student_fwd_bwd_flops_per_image")).map(|(a, b)| a + b);
            }
            rs.push(v["images_per_s"].as_f64().context("reference printed no images_per_s")?);
            progress(&format!("round {}: pytorch step {:.1} img/s", round + 1, rs[round]));
        }
        hd.push(harness_images_per_s(o, data, true)?);
        progress(&format!("round {}: harness step+data {:.1} img/s", round + 1, hd[round]));
        if let Some(py) = &o.python {
            let v = reference(o, py, data_dir, "data", false)?;
            rd.push(v["images_per_s"].as_f64().context("reference printed no images_per_s")?);
            progress(&format!("round {}: pytorch step+data {:.1} img/s", round + 1, rd[round]));
        }
    }
    let (hs, hd) = (Series::of(hs), Series::of(hd));
    let (rs, rd) = if o.python.is_some() { (Some(Series::of(rs)), Some(Series::of(rd))) } else { (None, None) };
    Ok(BenchResult {
        opts: o.clone(),
        device: format!("{:?}", o.device),
        ratio_step: rs.as_ref().map(|r| hs.median / r.median),
        ratio_data: rd.as_ref().map(|r| hd.median / r.median),
        harness_step: hs,
        harness_data: hd,
        reference_step: rs,
        reference_data: rd,
        peak_matmul_flops: peak,
        flops_per_image: flops,
        flop_limit_images_per_s: flops.map(|f| peak / f),
    })
}

impl BenchResult {
    pub fn text(&self) -> String {
        let o = &self.opts;
        let lim = self.flop_limit_images_per_s;
        let pct = |x: f64| lim.map(|l| format!("{:>6.1}%", 100.0 * x / l)).unwrap_or_default();
        let mut s = format!(
            "workload: {} → {} KD (τ = 4), batch {}, {}, {} threads, {} timed steps after {} warm-up, median of {} rounds\n",
            o.teacher, o.student, o.batch, self.device, o.threads, o.steps, o.warmup, o.rounds
        );
        s.push_str(&format!("{:<40} {:>10}  {}\n", "", "images/s", if lim.is_some() { "of FLOP limit" } else { "" }));
        s.push_str(&format!("{:<40} {:>10.1}  {}\n", "harness step", self.harness_step.median, pct(self.harness_step.median)));
        if let Some(r) = &self.reference_step {
            s.push_str(&format!("{:<40} {:>10.1}  {}\n", "pytorch eager step", r.median, pct(r.median)));
        }
        s.push_str(&format!("{:<40} {:>10.1}  {}\n", "harness step + data (on-device augment)", self.harness_data.median, pct(self.harness_data.median)));
        if let Some(r) = &self.reference_data {
            s.push_str(&format!("{:<40} {:>10.1}  {}\n", format!("pytorch step + DataLoader ({} workers)", o.ref_workers), r.median, pct(r.median)));
        }
        if let (Some(a), Some(b)) = (self.ratio_step, self.ratio_data) {
            s.push_str(&format!("harness ÷ pytorch: step {a:.2}×, with data {b:.2}×\n"));
        }
        s.push_str(&format!("peak float32 matmul {:.1} GFLOP/s", self.peak_matmul_flops / 1e9));
        if let (Some(f), Some(l)) = (self.flops_per_image, lim) {
            s.push_str(&format!("; {:.2} GFLOP per image (teacher fwd + student fwd/bwd) → FLOP limit {l:.1} images/s", f / 1e9));
        }
        s.push('\n');
        s
    }
}
