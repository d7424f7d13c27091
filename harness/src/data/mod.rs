//! Datasets: readers (CIFAR in both layouts, digits, synthetic, Tiny-ImageNet, ImageNet),
//! fingerprints, and the two pipelines behind one [`Dataset`]:
//! - resident (everything but ImageNet): the whole dataset lives on the training device as
//!   uint8; augmentation (random crop with zero padding, horizontal flip, random rotation) and
//!   normalisation are tensor ops on that device;
//! - streamed (ImageNet): batches are decoded and augmented on a thread pool ahead of the step
//!   ([`imagenet::Loader`]), then normalised on the device.
//!
//! Both draw from the global generator that the loop seeds per run and epoch.

pub mod availability;
pub mod cifar;
pub mod digits;
pub mod imagenet;
pub mod jpeg;
pub mod npz;
pub mod pickle;
pub mod synth;
pub mod tiny_imagenet;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use tch::{Device, Kind, Tensor};

/// Static facts about a dataset, known without reading it.
#[derive(Debug)]
pub struct DatasetInfo {
    pub name: &'static str,
    /// (channels, height, width)
    pub shape: (i64, i64, i64),
    pub classes: i64,
    pub mean: &'static [f64],
    pub std: &'static [f64],
    /// Zero padding for the random crop.
    pub pad: i64,
    /// Whether horizontal flips preserve the label.
    pub flip: bool,
    /// Random rotation range in degrees (torchvision's `RandomRotation`: uniform angle, nearest
    /// neighbour, zero fill); 0 for none.
    pub rotate: f64,
    pub about: &'static str,
}

/// Every dataset a suite can name.
pub static DATASETS: &[DatasetInfo] = &[
    DatasetInfo {
        name: "cifar10",
        shape: (3, 32, 32),
        classes: 10,
        mean: &[0.4914, 0.4822, 0.4465],
        std: &[0.2470, 0.2435, 0.2616],
        pad: 4,
        flip: true,
        rotate: 0.0,
        about: "CIFAR-10 from disk (torchvision or binary layout)",
    },
    DatasetInfo {
        name: "cifar100",
        shape: (3, 32, 32),
        classes: 100,
        mean: &[0.5071, 0.4867, 0.4408],
        std: &[0.2675, 0.2565, 0.2761],
        pad: 4,
        flip: true,
        rotate: 0.0,
        about: "CIFAR-100 from disk (torchvision or binary layout)",
    },
    DatasetInfo {
        name: "digits",
        shape: (1, 8, 8),
        classes: 10,
        mean: &[0.3053],
        std: &[0.3762],
        pad: 1,
        flip: false,
        rotate: 0.0,
        about: "UCI handwritten digits, 8x8, 1437 train / 360 test (embedded)",
    },
    // mdistiller's Tiny-ImageNet recipe: RandomRotation(20) + flip, no crop; its normalisation.
    DatasetInfo {
        name: "tiny-imagenet",
        shape: (3, 64, 64),
        classes: 200,
        mean: &[0.4802, 0.4481, 0.3975],
        std: &[0.2302, 0.2265, 0.2262],
        pad: 0,
        flip: true,
        rotate: 20.0,
        about: "Tiny-ImageNet-200 from tiny-imagenet-200/ (64x64 JPEGs, 100k train / 10k val), decoded into memory",
    },
    // Streamed with RandomResizedCrop(224) + flip / Resize(256) + CenterCrop(224) (data::imagenet).
    DatasetInfo {
        name: "imagenet",
        shape: (3, 224, 224),
        classes: 1000,
        mean: &[0.485, 0.456, 0.406],
        std: &[0.229, 0.224, 0.225],
        pad: 0,
        flip: true,
        rotate: 0.0,
        about: "ImageNet-1k in ImageFolder layout (train/<class>/*.JPEG, val/<class>/*.JPEG), streamed from disk",
    },
];

/// Looks up a dataset by name.
pub fn info(name: &str) -> Option<&'static DatasetInfo> {
    DATASETS.iter().find(|d| d.name == name)
}

/// Decoded images (N×C×H×W uint8, row-major) and labels of one split.
#[derive(Clone, Debug, Default)]
pub struct RawSplit {
    pub x: Vec<u8>,
    pub y: Vec<i64>,
}

/// Environment variable naming the data directory (after `--data-dir` and `[suite].data_dir`).
pub const DATA_ENV: &str = "KD_HARNESS_DATA";

/// Picks the data directory: the flag, then the suite's `data_dir`, then `$KD_HARNESS_DATA`, then `./data`.
pub fn resolve_dir(flag: Option<&Path>, suite: Option<&Path>) -> PathBuf {
    if let Some(f) = flag {
        return f.to_path_buf();
    }
    if let Some(s) = suite {
        return s.to_path_buf();
    }
    if let Some(e) = std::env::var_os(DATA_ENV) {
        return PathBuf::from(e);
    }
    PathBuf::from("data")
}

/// Refuses a data folder the user named (`--data-dir` or `[suite].data_dir`) that does not
/// exist. Digits is embedded: a suite's `data_dir` (a digits-specific setting) must hold a
/// `digits.csv.gz`, or it is an error; a `--data-dir` flag (often shared by several suites)
/// without one gets a note that the embedded copy is used. `$KD_HARNESS_DATA` and `./data` are
/// general defaults and are not checked.
pub fn check_explicit_dir(name: &str, dir: &Path, origin: &str, from_suite: bool) -> anyhow::Result<()> {
    if !dir.is_dir() {
        let what = if std::fs::symlink_metadata(dir).is_ok() { "is not a folder (or is a broken link)" } else { "does not exist" };
        crate::input_bail!("{origin} {}: {what}; expected the folder holding the {name} data", dir.display());
    }
    if name == "digits" && std::fs::symlink_metadata(dir.join(digits::FILE)).is_err() {
        if from_suite {
            crate::input_bail!(
                "{origin} {}: no {} in it; digits is embedded in the harness, so a data folder only serves to replace that copy. \
                 Drop data_dir to train on the embedded digits",
                dir.display(),
                digits::FILE
            );
        }
        eprintln!("note: {origin} {} holds no {}; digits uses its embedded copy", dir.display(), digits::FILE);
    }
    Ok(())
}

/// One training batch: normalised images, labels, dataset indices (all on the training device).
pub type TrainBatch = (Tensor, Tensor, Tensor);

/// Batches that may fail while they are produced (a streamed image that does not decode).
pub type Batches<'a, T> = Box<dyn Iterator<Item = anyhow::Result<T>> + 'a>;

/// A dataset ready for training: labels on the training device, images either resident there
/// or streamed from disk.
pub struct Dataset {
    pub info: &'static DatasetInfo,
    pub train_y: Tensor,
    pub test_y: Tensor,
    /// blake3 of the decoded images and labels (equal for the two CIFAR layouts of the same
    /// data); for streamed datasets, of the file list with sizes (see [`imagenet::fingerprint`]).
    pub fingerprint: String,
    /// Where it was read from.
    pub source: String,
    images: Images,
    mean: Tensor,
    std: Tensor,
}

/// Where a dataset's images live.
enum Images {
    /// Decoded uint8 N×C×H×W on the training device; augmentation runs there.
    Resident { train: Tensor, test: Tensor },
    /// Files decoded per batch on a thread pool (ImageNet: 1.28M images do not fit in memory);
    /// augmentation runs in the decoder ([`imagenet::train_view`]).
    Streamed { train: Arc<Vec<(PathBuf, i64)>>, test: Arc<Vec<(PathBuf, i64)>> },
}

/// Batches decoded ahead of the training step for streamed datasets.
const PREFETCH: usize = 4;

/// Decoding threads for streamed datasets: rayon's count (all cores, or `RAYON_NUM_THREADS`).
fn decode_threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Reads and decodes a dataset's splits (no tensors yet). Streamed datasets have no such
/// splits: use [`Dataset::load`] or [`plan_fingerprint`].
pub fn read(name: &str, dir: &Path) -> anyhow::Result<(&'static DatasetInfo, RawSplit, RawSplit, String)> {
    let info = known(name)?;
    let (train, test, source) = match name {
        "cifar10" => cifar::load(cifar::Kind::C10, dir)?,
        "cifar100" => cifar::load(cifar::Kind::C100, dir)?,
        "digits" => {
            // A digits.csv.gz in the data dir wins over the embedded copy (a broken link or a
            // FIFO by that name is an error, not a silent fallback).
            let p = dir.join(digits::FILE);
            if std::fs::symlink_metadata(&p).is_ok() {
                let bytes = crate::files::read(&p, "gzipped digits CSV")?;
                let (a, b) = digits::load_from(&bytes, &p.display().to_string())?;
                (a, b, p.display().to_string())
            } else {
                let (a, b) = digits::load_from(digits::CSV_GZ, "embedded digits.csv.gz")?;
                (a, b, "embedded digits.csv.gz".to_string())
            }
        }
        "tiny-imagenet" => tiny_imagenet::load_cached(dir)?,
        "imagenet" => anyhow::bail!("imagenet is streamed from disk; it has no in-memory splits to read"),
        _ => unreachable!("dataset table and reader match are in sync"),
    };
    Ok((info, train, test, source))
}

fn known(name: &str) -> anyhow::Result<&'static DatasetInfo> {
    match info(name) {
        Some(i) => Ok(i),
        None => {
            let names: Vec<&str> = DATASETS.iter().map(|d| d.name).collect();
            crate::input_bail!("unknown dataset `{name}`; allowed: {}", names.join(", "));
        }
    }
}

/// The fingerprint a plan records for a dataset (what [`Dataset::load`] will find), without
/// placing anything on a device.
pub fn plan_fingerprint(name: &str, dir: &Path) -> anyhow::Result<String> {
    if is_streamed(name) {
        let (train, val) = imagenet::open(dir)?;
        return imagenet::fingerprint(&train, &val);
    }
    let (info, train, test, _) = read(name, dir)?;
    Ok(fingerprint(info, &train, &test))
}

/// Whether a dataset is streamed from disk rather than held on the device.
pub fn is_streamed(name: &str) -> bool {
    name == "imagenet"
}

/// Hash of decoded content, so ids depend on the data, not on the file layout.
pub fn fingerprint(info: &DatasetInfo, train: &RawSplit, test: &RawSplit) -> String {
    let mut h = blake3::Hasher::new();
    h.update(info.name.as_bytes());
    for s in [train, test] {
        h.update(&(s.y.len() as u64).to_le_bytes());
        h.update(&s.x);
        for y in &s.y {
            h.update(&y.to_le_bytes());
        }
    }
    h.finalize().to_hex()[..16].to_string()
}

/// Seed of one random draw site: `stream` (a run's stream seed, e.g. of one epoch's data) and the
/// site's index in it (a batch). Every draw site re-seeds the global generator from its own value,
/// so draws of different streams (the data, each learner's method) may interleave in any order —
/// what lets several runs share one data stream and still draw exactly what they draw alone.
pub fn site_seed(stream: u64, site: u64) -> i64 {
    let h = blake3::hash(format!("kd-harness/site/{stream}/{site}").as_bytes());
    let b = h.as_bytes();
    (u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) >> 1) as i64
}

/// Site index of an epoch's order (batches use their own index).
const ORDER_SITE: u64 = u64::MAX;

/// BAKE's sampler over `labels`: shuffled anchors (as many as fit `n/(m+1)` groups), each
/// followed by `m` images of its class drawn without replacement where the class allows
/// (the anchor itself otherwise). A function of `seed` only.
fn grouped_order(labels: &[i64], m: usize, seed: u64) -> Vec<i64> {
    use rand::{Rng, SeedableRng};
    let n = labels.len() as i64;
    let mut by_class: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for (i, y) in labels.iter().enumerate() {
        by_class.entry(*y).or_default().push(i as i64);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    tch::manual_seed(site_seed(seed, ORDER_SITE));
    let perm: Vec<i64> = Vec::try_from(&Tensor::randperm(n, (Kind::Int64, Device::Cpu))).unwrap_or_default();
    let group = m as i64 + 1;
    let anchors = (n / group).max(1) as usize;
    let mut order: Vec<i64> = Vec::with_capacity(anchors * (m + 1));
    for &a in perm.iter().take(anchors) {
        order.push(a);
        let mut pool: Vec<i64> = by_class.get(&labels[a as usize]).map(|v| v.iter().copied().filter(|&i| i != a).collect()).unwrap_or_default();
        for _ in 0..m {
            if pool.is_empty() {
                order.push(a);
                continue;
            }
            let j = rng.gen_range(0..pool.len());
            order.push(pool.swap_remove(j));
        }
    }
    order
}

impl Dataset {
    /// Reads a dataset from `dir` and places it on `device` (streamed datasets: their file lists).
    pub fn load(name: &str, dir: &Path, device: Device) -> anyhow::Result<Dataset> {
        if is_streamed(name) {
            let info = known(name)?;
            let (train, val) = imagenet::open(dir)?;
            // Label = index of the sorted class folder, so a subset tree (fewer folders, as in
            // tests) trains with the full 1000-way classifier; more folders cannot be labelled.
            if train.classes.len() as i64 > info.classes {
                crate::input_bail!(
                    "{}: {} class folders; {} models have {} outputs, so at most {} classes can be labelled",
                    train.root.display(),
                    train.classes.len(),
                    info.name,
                    info.classes,
                    info.classes
                );
            }
            let fp = imagenet::fingerprint(&train, &val)?;
            let source = train.root.parent().unwrap_or(&train.root).display().to_string();
            return Ok(Dataset::streamed(info, train.samples, val.samples, fp, source, device));
        }
        let (info, train, test, source) = read(name, dir)?;
        Dataset::from_raw(info, &train, &test, source, device)
    }

    /// A streamed dataset over (file, label) lists; images are decoded when batches are drawn.
    pub fn streamed(
        info: &'static DatasetInfo,
        train: Vec<(PathBuf, i64)>,
        test: Vec<(PathBuf, i64)>,
        fingerprint: String,
        source: String,
        device: Device,
    ) -> Dataset {
        let labels = |s: &[(PathBuf, i64)]| Tensor::from_slice(&s.iter().map(|(_, y)| *y).collect::<Vec<i64>>()).to_device(device);
        let (train_y, test_y) = (labels(&train), labels(&test));
        let (mean, std) = mean_std(info, device);
        Dataset { info, train_y, test_y, fingerprint, source, images: Images::Streamed { train: Arc::new(train), test: Arc::new(test) }, mean, std }
    }

    /// Builds the device tensors from decoded splits.
    pub fn from_raw(info: &'static DatasetInfo, train: &RawSplit, test: &RawSplit, source: String, device: Device) -> anyhow::Result<Dataset> {
        let (c, h, w) = info.shape;
        let per = (c * h * w) as usize;
        for (split, s) in [("train", train), ("test", test)] {
            if s.y.is_empty() || s.x.len() != s.y.len() * per {
                crate::input_bail!("{source}: {split} split has {} labels and {} pixel bytes; expected {per} bytes per image", s.y.len(), s.x.len());
            }
        }
        let fp = fingerprint(info, train, test);
        let to = |s: &RawSplit| -> (Tensor, Tensor) {
            let n = s.y.len() as i64;
            (Tensor::from_slice(&s.x).view([n, c, h, w]).to_device(device), Tensor::from_slice(&s.y).to_device(device))
        };
        let (train_x, train_y) = to(train);
        let (test_x, test_y) = to(test);
        let (mean, std) = mean_std(info, device);
        Ok(Dataset { info, train_y, test_y, fingerprint: fp, source, images: Images::Resident { train: train_x, test: test_x }, mean, std })
    }

    pub fn train_len(&self) -> i64 {
        self.train_y.size()[0]
    }

    pub fn test_len(&self) -> i64 {
        self.test_y.size()[0]
    }

    /// The training images (uint8 on the device) when they are resident; `None` when streamed.
    pub fn resident_train_x(&self) -> Option<&Tensor> {
        match &self.images {
            Images::Resident { train, .. } => Some(train),
            Images::Streamed { .. } => None,
        }
    }

    pub fn is_streamed(&self) -> bool {
        matches!(self.images, Images::Streamed { .. })
    }

    /// uint8 images → normalised float.
    pub fn normalize(&self, x: &Tensor) -> Tensor {
        (x.to_kind(Kind::Float) / 255.0 - &self.mean) / &self.std
    }

    /// The first `n` training images, normalised, without augmentation (a probe batch for
    /// building modules whose shapes follow the features).
    pub fn probe(&self, n: i64) -> anyhow::Result<Tensor> {
        let n = n.clamp(1, self.train_len());
        match &self.images {
            Images::Resident { train, .. } => Ok(self.normalize(&train.narrow(0, 0, n))),
            Images::Streamed { train, .. } => {
                let mut it = self.stream(train, (0..n as usize).collect(), n, false, 0);
                let (x, _, _) = it.next().context("the training split is empty")??;
                Ok(x)
            }
        }
    }

    /// One epoch of shuffled (and optionally augmented) training batches, produced lazily.
    /// The last partial batch is kept (PyTorch's DataLoader without drop_last). Order and
    /// augmentation are a function of `seed` (the run's seed for this epoch) and the batch size
    /// only: every run with that seed sees the same batches, alone or in a cohort.
    pub fn train_batches(&self, batch_size: i64, augment: bool, seed: u64) -> Batches<'_, TrainBatch> {
        let n = self.train_len();
        match &self.images {
            Images::Resident { train, .. } => {
                tch::manual_seed(site_seed(seed, ORDER_SITE));
                self.gathered(train, Tensor::randperm(n, (Kind::Int64, self.train_y.device())), batch_size, augment, seed)
            }
            Images::Streamed { train, .. } => {
                // The order and every sample's augmentation follow the seed, so a streamed epoch
                // is as reproducible as a resident one.
                let mut order: Vec<usize> = (0..n as usize).collect();
                order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
                self.stream(train, order, batch_size, augment, seed)
            }
        }
    }

    /// Training batches built as BAKE's sampler does ([`grouped_order`]): `batch/(m+1)` anchors
    /// per batch, each followed by `m` images of its class. An epoch holds about as many images
    /// as the training set. A function of `seed` only.
    pub fn train_batches_grouped(&self, batch_size: i64, m: usize, augment: bool, seed: u64) -> Batches<'_, TrainBatch> {
        let labels: Vec<i64> = Vec::try_from(&self.train_y.to_device(Device::Cpu)).unwrap_or_default();
        let order = grouped_order(&labels, m, seed);
        let group = m as i64 + 1;
        self.batches_in_order(order, (batch_size / group).max(1) * group, augment, seed)
    }

    /// Training batches over `order` (dataset indices, repeats allowed) in that order, `batch_size`
    /// at a time, augmented if asked: the samplers above and PrUE's label-sorted pass use it.
    /// The augmentation is a function of `seed`.
    pub fn batches_in_order(&self, order: Vec<i64>, batch_size: i64, augment: bool, seed: u64) -> Batches<'_, TrainBatch> {
        let batch_size = batch_size.max(1);
        match &self.images {
            Images::Resident { train, .. } => self.gathered(train, Tensor::from_slice(&order).to_device(self.train_y.device()), batch_size, augment, seed),
            Images::Streamed { train, .. } => {
                self.stream(train, order.iter().map(|&i| i as usize).collect(), batch_size, augment, seed)
            }
        }
    }

    /// Resident batches over the indices in `idx_all` (a device tensor), `batch_size` at a time;
    /// the last partial batch is kept; batch `i`'s augmentation is drawn at site `(seed, i)`.
    fn gathered<'a>(&'a self, train: &'a Tensor, idx_all: Tensor, batch_size: i64, augment: bool, seed: u64) -> Batches<'a, TrainBatch> {
        let total = idx_all.size()[0];
        let nb = (total + batch_size - 1) / batch_size;
        Box::new((0..nb).map(move |i| {
            let start = i * batch_size;
            if augment {
                tch::manual_seed(site_seed(seed, i as u64));
            }
            Ok(self.gather(train, &idx_all.narrow(0, start, batch_size.min(total - start)), augment))
        }))
    }

    /// Training images, labels and dataset indices at `idx`, augmented if asked, normalised.
    fn gather(&self, train: &Tensor, idx: &Tensor, augment: bool) -> TrainBatch {
        let mut x = train.index_select(0, idx);
        if augment {
            x = crop_flip(&x, self.info.pad, self.info.flip);
            if self.info.rotate > 0.0 {
                x = rotate(&x, self.info.rotate);
            }
        }
        (self.normalize(&x), self.train_y.index_select(0, idx), idx.shallow_clone())
    }

    /// Decoded batches of `samples` at `order`, normalised on the training device; `augment`
    /// picks the training view (random resized crop + flip) over the evaluation view.
    fn stream(&self, samples: &Arc<Vec<(PathBuf, i64)>>, order: Vec<usize>, batch_size: i64, augment: bool, seed: u64) -> Batches<'_, TrainBatch> {
        let cfg = imagenet::LoaderCfg {
            batch_size: batch_size.max(1) as usize,
            mode: if augment { imagenet::Mode::Train } else { imagenet::Mode::Eval },
            seed,
            epoch: 0,
            prefetch: PREFETCH,
            threads: decode_threads(),
        };
        let dev = self.train_y.device();
        match imagenet::Loader::with_order(samples.clone(), order, cfg) {
            Err(e) => Box::new(std::iter::once(Err(e))),
            Ok(loader) => Box::new(loader.map(move |b| {
                let b = b?;
                let (x, y) = b.tensors();
                Ok((self.normalize(&x.to_device(dev)), y.to_device(dev), Tensor::from_slice(&b.idx).to_device(dev)))
            })),
        }
    }

    /// Test batches in dataset order, normalised, no augmentation.
    pub fn test_batches(&self, batch_size: i64) -> Batches<'_, (Tensor, Tensor)> {
        let n = self.test_len();
        match &self.images {
            Images::Resident { test, .. } => {
                let nb = (n + batch_size - 1) / batch_size;
                Box::new((0..nb).map(move |i| {
                    let start = i * batch_size;
                    let len = batch_size.min(n - start);
                    Ok((self.normalize(&test.narrow(0, start, len)), self.test_y.narrow(0, start, len)))
                }))
            }
            Images::Streamed { test, .. } => Box::new(self.stream(test, (0..n as usize).collect(), batch_size, false, 0).map(|b| b.map(|(x, y, _)| (x, y)))),
        }
    }
}

fn mean_std(info: &DatasetInfo, device: Device) -> (Tensor, Tensor) {
    let c = info.shape.0;
    let t = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).view([1, c, 1, 1]).to_device(device);
    (t(info.mean), t(info.std))
}

/// Mixup (Zhang et al. 2018), as MIX-KD draws it: two independent permutations, a per-sample
/// weight `a ~ Beta(α, α)`, `x̃ = a·x[π₁] + (1−a)·x[π₂]`, `Y = a·onehot(y[π₁]) + (1−a)·onehot(y[π₂])`.
/// Partial mixup (PMU) then sets `a = 1` at `⌊partial·N⌋` indices drawn with replacement.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixup {
    pub alpha: f64,
    /// `Some(p)`: partial mixup; `None`: every sample is mixed.
    pub partial: Option<f64>,
}

impl Mixup {
    /// Mixes a normalised batch; returns (images, soft targets N×classes).
    pub fn apply(&self, x: &Tensor, y: &Tensor, classes: i64) -> (Tensor, Tensor) {
        let n = x.size()[0];
        let dev = x.device();
        let p1 = Tensor::randperm(n, (Kind::Int64, dev));
        let p2 = Tensor::randperm(n, (Kind::Int64, dev));
        let conc = Tensor::full([n], self.alpha, (Kind::Float, dev));
        let g1 = conc.internal_standard_gamma();
        let g2 = conc.internal_standard_gamma();
        let mut a = &g1 / (&g1 + &g2);
        if let Some(p) = self.partial {
            let k = (p * n as f64).floor() as i64;
            if k > 0 {
                let idx = Tensor::randint(n, [k], (Kind::Int64, dev));
                a = a.index_fill(0, &idx, 1.0);
            }
        }
        let av = a.view([n, 1, 1, 1]);
        let xm = x.index_select(0, &p1) * &av + x.index_select(0, &p2) * (1.0 - &av);
        let a1 = a.view([n, 1]);
        let oh = |p: &Tensor| y.index_select(0, p).one_hot(classes).to_kind(Kind::Float);
        let ym = oh(&p1) * &a1 + oh(&p2) * (1.0 - &a1);
        (xm, ym)
    }
}

/// Random crop after zero padding by `pad`, and a random horizontal flip, as one gather:
/// per sample, rows `oy..oy+H` and columns `ox..ox+W` (reversed when flipped) of the padded image.
pub fn crop_flip(x: &Tensor, pad: i64, flip: bool) -> Tensor {
    let s = x.size();
    let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
    let dev = x.device();
    let opts = (Kind::Int64, dev);
    let padded = if pad > 0 { x.constant_pad_nd([pad, pad, pad, pad]) } else { x.shallow_clone() };
    let oy = Tensor::randint(2 * pad + 1, [b, 1], opts);
    let ox = Tensor::randint(2 * pad + 1, [b, 1], opts);
    let ar_h = Tensor::arange(h, opts).view([1, h]);
    let ar_w = Tensor::arange(w, opts).view([1, w]);
    let rows = &oy + &ar_h;
    let mut cols = &ox + &ar_w;
    if flip {
        let f = Tensor::randint(2, [b, 1], opts).to_kind(Kind::Bool);
        let rev = &ox + (ar_w.g_mul_scalar(-1) + (w - 1));
        crate::draws::record("flip", &f);
        cols = rev.where_self(&f, &cols);
    }
    crate::draws::record("crop_y", &oy);
    crate::draws::record("crop_x", &ox);
    let bi = Tensor::arange(b, opts).view([b, 1, 1, 1]);
    let ci = Tensor::arange(c, opts).view([1, c, 1, 1]);
    padded.index(&[Some(bi), Some(ci), Some(rows.view([b, 1, h, 1])), Some(cols.view([b, 1, 1, w]))])
}

/// Rotates each image about its centre by an angle drawn uniformly from ±`degrees`, nearest
/// neighbour with zero fill (torchvision's `RandomRotation` defaults). Returns float images in
/// the input's 0..255 range (nearest sampling keeps the values).
pub fn rotate(x: &Tensor, degrees: f64) -> Tensor {
    let b = x.size()[0];
    let dev = x.device();
    let a = (Tensor::rand([b], (Kind::Float, dev)) * 2.0 - 1.0) * degrees.to_radians();
    let (c, s) = (a.cos(), a.sin());
    let z = a.zeros_like();
    let theta = Tensor::stack(&[&c, &(-&s), &z, &s, &c, &z], 1).view([b, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, x.size(), false);
    // interpolation 1 = nearest, padding 0 = zeros.
    x.to_kind(Kind::Float).grid_sampler(&grid, 1, 0, false)
}
