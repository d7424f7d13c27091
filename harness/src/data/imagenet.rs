//! ImageNet in torchvision's `ImageFolder` layout (`train/<class>/*.JPEG`, `val/<class>/*.JPEG`;
//! label = index of the class folder in sorted order), streamed from disk: 1.28M decoded images
//! do not fit in memory, so batches are decoded and augmented on a rayon pool by a producer
//! thread and handed over through a bounded channel (prefetching `prefetch` batches).
//!
//! Augmentation is mdistiller's / torchvision's ImageNet recipe (anchors §2.2): training takes
//! `RandomResizedCrop(224)` (scale 0.08–1, aspect 3/4–4/3, ten tries then a centre fallback) and a
//! horizontal flip with p = 0.5; evaluation takes `Resize(256)` (shorter side) and
//! `CenterCrop(224)`. Resizing is bilinear with antialiasing (the `image` crate's triangle
//! filter, close to but not bit-identical with PIL's). Each sample's random draws come from its
//! own generator seeded by (seed, epoch, index), so batches do not depend on thread scheduling.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::jpeg;
use super::tiny_imagenet::jpegs;
use crate::error::InputError;

/// Output side of the crops.
pub const CROP: u32 = 224;
/// Shorter side after the evaluation resize.
pub const RESIZE: u32 = 256;

fn input(msg: String) -> anyhow::Error {
    anyhow::Error::new(InputError(msg))
}

/// One split of an `ImageFolder` tree: sorted class folders, and (file, label) in sorted order.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub samples: Vec<(PathBuf, i64)>,
}

impl ImageFolder {
    /// Lists `dir`'s class folders and their `.JPEG`/`.jpg` files (no decoding).
    pub fn scan(dir: &Path) -> anyhow::Result<ImageFolder> {
        let rd = std::fs::read_dir(dir).map_err(|e| input(format!("{}: cannot list ({e}); expected one folder per class", dir.display())))?;
        let mut classes = Vec::new();
        for e in rd {
            let e = e.map_err(|e| input(format!("{}: cannot list: {e}", dir.display())))?;
            if e.path().is_dir() {
                classes.push(e.file_name().to_string_lossy().into_owned());
            } else if e.file_type().is_ok_and(|t| t.is_symlink()) && std::fs::metadata(e.path()).is_err() {
                // Skipping it would drop a class and shift every later label.
                let target = std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
                return Err(input(format!("{}: broken symbolic link (to `{target}`); expected a class folder", e.path().display())));
            }
        }
        classes.sort();
        if classes.is_empty() {
            return Err(input(format!("{}: no class folders", dir.display())));
        }
        let mut samples = Vec::new();
        for (i, c) in classes.iter().enumerate() {
            let files = jpegs(&dir.join(c))?;
            samples.extend(files.into_iter().map(|f| (f, i as i64)));
        }
        if samples.is_empty() {
            return Err(input(format!("{}: no JPEG images in the class folders", dir.display())));
        }
        Ok(ImageFolder { root: dir.to_path_buf(), classes, samples })
    }
}

/// ImageNet's train and val folders under `dir/imagenet` or `dir`; both must have the same classes.
pub fn open(dir: &Path) -> anyhow::Result<(ImageFolder, ImageFolder)> {
    let Some(root) = [dir.join("imagenet"), dir.to_path_buf()].into_iter().find(|c| c.join("train").is_dir() && c.join("val").is_dir()) else {
        return Err(input(format!(
            "{}: no ImageNet found; expected `imagenet/train/<class>/*.JPEG` and `imagenet/val/<class>/*.JPEG` (or train/ and val/ directly) in it",
            dir.display()
        )));
    };
    let train = ImageFolder::scan(&root.join("train"))?;
    let val = ImageFolder::scan(&root.join("val"))?;
    if train.classes != val.classes {
        return Err(input(format!(
            "{}: val has {} class folders, train has {}; they must be the same",
            root.display(),
            val.classes.len(),
            train.classes.len()
        )));
    }
    Ok((train, val))
}

/// Hash of the file list (relative path, size, label) of both splits: decoding 1.28M images to
/// hash their pixels (as the in-memory datasets do) would take longer than an epoch.
pub fn fingerprint(train: &ImageFolder, val: &ImageFolder) -> anyhow::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(b"imagenet");
    for split in [train, val] {
        h.update(&(split.samples.len() as u64).to_le_bytes());
        for (p, y) in &split.samples {
            let rel = p.strip_prefix(&split.root).unwrap_or(p);
            h.update(rel.to_string_lossy().as_bytes());
            let len = std::fs::metadata(p).map_err(|e| input(format!("{}: {e}", p.display())))?.len();
            h.update(&len.to_le_bytes());
            h.update(&y.to_le_bytes());
        }
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

/// torchvision's `RandomResizedCrop.get_params`: (top, left, height, width) of the crop.
/// Rounding is Python's `round` (half to even), here and in [`eval_view`].
pub fn rrc_params(w: u32, h: u32, rng: &mut impl Rng) -> (u32, u32, u32, u32) {
    let (wf, hf) = (w as f64, h as f64);
    let area = wf * hf;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.gen_range(0.08..1.0);
        let aspect = rng.gen_range(lo..hi).exp();
        let cw = (target * aspect).sqrt().round_ties_even() as u32;
        let ch = (target / aspect).sqrt().round_ties_even() as u32;
        if cw > 0 && cw <= w && ch > 0 && ch <= h {
            return (rng.gen_range(0..=h - ch), rng.gen_range(0..=w - cw), ch, cw);
        }
    }
    let ratio = wf / hf;
    let (cw, ch) = if ratio < 3.0 / 4.0 {
        (w, ((wf / (3.0 / 4.0)).round_ties_even() as u32).clamp(1, h))
    } else if ratio > 4.0 / 3.0 {
        (((hf * (4.0 / 3.0)).round_ties_even() as u32).clamp(1, w), h)
    } else {
        (w, h)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Training view: random resized crop to `CROP`×`CROP`, then a horizontal flip with p = 0.5.
/// Crop, resize and flip go through `DynamicImage`'s methods, which are compiled (optimised)
/// inside the `image` crate; its generic `imageops` would be instantiated, unoptimised in dev
/// builds, in this crate.
pub fn train_view(img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
    let (top, left, ch, cw) = rrc_params(img.width(), img.height(), rng);
    let crop = DynamicImage::ImageRgb8(img.clone()).crop_imm(left, top, cw, ch);
    let out = crop.resize_exact(CROP, CROP, FilterType::Triangle);
    if rng.gen_bool(0.5) { out.fliph().into_rgb8() } else { out.into_rgb8() }
}

/// Evaluation view: shorter side to `RESIZE` (torchvision truncates the longer side), centre `CROP`.
pub fn eval_view(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h { (RESIZE, ((RESIZE as u64 * h as u64) / w as u64) as u32) } else { (((RESIZE as u64 * w as u64) / h as u64) as u32, RESIZE) };
    let r = DynamicImage::ImageRgb8(img.clone()).resize_exact(nw, nh, FilterType::Triangle);
    let top = ((nh - CROP) as f64 / 2.0).round_ties_even() as u32;
    let left = ((nw - CROP) as f64 / 2.0).round_ties_even() as u32;
    r.crop_imm(left, top, CROP, CROP).into_rgb8()
}

/// Train (augmented) or evaluation (deterministic) batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// Decodes and transforms one file into CHW bytes (3×224×224).
pub fn load_sample(path: &Path, mode: Mode, rng: &mut impl Rng) -> anyhow::Result<Vec<u8>> {
    let img = jpeg::read(path)?;
    let view = match mode {
        Mode::Train => train_view(&img, rng),
        Mode::Eval => eval_view(&img),
    };
    let mut out = Vec::with_capacity((3 * CROP * CROP) as usize);
    jpeg::push_chw(&view, &mut out);
    Ok(out)
}

/// A decoded batch: N×3×224×224 uint8 (CHW per image), labels and dataset indices.
#[derive(Debug)]
pub struct Batch {
    pub x: Vec<u8>,
    pub y: Vec<i64>,
    pub idx: Vec<i64>,
}

impl Batch {
    /// (uint8 images N×3×224×224, int64 labels) on the CPU.
    pub fn tensors(&self) -> (tch::Tensor, tch::Tensor) {
        let n = self.y.len() as i64;
        (tch::Tensor::from_slice(&self.x).view([n, 3, CROP as i64, CROP as i64]), tch::Tensor::from_slice(&self.y))
    }
}

/// How a [`Loader`] walks a split.
#[derive(Clone, Copy, Debug)]
pub struct LoaderCfg {
    pub batch_size: usize,
    pub mode: Mode,
    pub seed: u64,
    pub epoch: u64,
    /// Batches decoded ahead of the consumer (the channel's bound).
    pub prefetch: usize,
    /// Decoding threads.
    pub threads: usize,
}

/// Per-sample generator: a pure function of (seed, epoch, dataset index).
fn sample_rng(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.set_stream(index as u64);
    r
}

/// One epoch of batches, decoded by a background thread; iterate to receive them in order.
/// The last partial batch is kept (PyTorch's DataLoader without drop_last). The first decoding
/// error ends the epoch with that error. Dropping the loader stops the producer.
pub struct Loader {
    rx: Option<Receiver<anyhow::Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// The whole split: shuffled by a generator seeded by (seed, epoch) in training mode, in file
    /// order for evaluation.
    pub fn new(samples: Arc<Vec<(PathBuf, i64)>>, cfg: LoaderCfg) -> anyhow::Result<Loader> {
        let mut order: Vec<usize> = (0..samples.len()).collect();
        if cfg.mode == Mode::Train {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(cfg.epoch.wrapping_mul(0x5851_F42D_4C95_7F2D))));
        }
        Loader::with_order(samples, order, cfg)
    }

    /// The samples at `order` (dataset indices, repeats allowed), in that order: the training
    /// loop's samplers decide the order, the loader only decodes.
    pub fn with_order(samples: Arc<Vec<(PathBuf, i64)>>, order: Vec<usize>, cfg: LoaderCfg) -> anyhow::Result<Loader> {
        if cfg.batch_size == 0 {
            crate::input_bail!("loader: batch size must be at least 1");
        }
        if let Some(&bad) = order.iter().find(|&&i| i >= samples.len()) {
            anyhow::bail!("loader: index {bad} is outside the split ({} images)", samples.len());
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(cfg.threads.max(1)).build().map_err(|e| anyhow::anyhow!("decoding pool: {e}"))?;
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("image-loader".into())
            .spawn(move || produce(&samples, &order, cfg, &pool, &tx))
            .map_err(|e| anyhow::anyhow!("starting the loader thread: {e}"))?;
        Ok(Loader { rx: Some(rx), handle: Some(handle) })
    }
}

fn produce(samples: &[(PathBuf, i64)], order: &[usize], cfg: LoaderCfg, pool: &rayon::ThreadPool, tx: &SyncSender<anyhow::Result<Batch>>) {
    for chunk in order.chunks(cfg.batch_size) {
        let decoded: anyhow::Result<Vec<Vec<u8>>> =
            pool.install(|| chunk.par_iter().map(|&i| load_sample(&samples[i].0, cfg.mode, &mut sample_rng(cfg.seed, cfg.epoch, i))).collect());
        let msg =
            decoded.map(|imgs| Batch { x: imgs.concat(), y: chunk.iter().map(|&i| samples[i].1).collect(), idx: chunk.iter().map(|&i| i as i64).collect() });
        let failed = msg.is_err();
        if tx.send(msg).is_err() || failed {
            return;
        }
    }
}

impl Iterator for Loader {
    type Item = anyhow::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel first makes a producer blocked on a full channel return.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
