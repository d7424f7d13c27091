//! Tiny-ImageNet (200 classes, 64×64, 100,000 train / 10,000 val) in its distributed layout
//! `tiny-imagenet-200/`: `wnids.txt`, `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` with
//! labels in `val/val_annotations.txt` (file, wnid, box). Decoded once, in parallel, into the
//! same uint8 splits as CIFAR, so training uses the device-resident path.
//!
//! Label `i` is the i-th wnid in sorted order, as torchvision's `ImageFolder` over `train/`
//! assigns them (mdistiller's loader, whose Tiny-ImageNet teacher checkpoint expects this order;
//! `wnids.txt` itself is not sorted). The validation split plays the test split's role, as in
//! mdistiller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{RawSplit, jpeg};
use crate::error::InputError;

pub const SIDE: u32 = 64;
pub const CLASSES: usize = 200;

fn input(msg: String) -> anyhow::Error {
    anyhow::Error::new(InputError(msg))
}

/// The folder holding `wnids.txt`: `dir/tiny-imagenet-200` or `dir` itself.
pub fn locate(dir: &Path) -> anyhow::Result<PathBuf> {
    for c in [dir.join("tiny-imagenet-200"), dir.to_path_buf()] {
        if c.join("wnids.txt").is_file() {
            return Ok(c);
        }
    }
    Err(input(format!(
        "{}: no Tiny-ImageNet found; expected `tiny-imagenet-200/wnids.txt` (the unpacked tiny-imagenet-200.zip) in it. \
         Point --data-dir (or [suite].data_dir, or KD_HARNESS_DATA) at the folder holding it",
        dir.display()
    )))
}

/// Sorted wnids; `expected` classes (200 for the real dataset; tests use fewer).
fn wnids(root: &Path) -> anyhow::Result<Vec<String>> {
    let p = root.join("wnids.txt");
    let text = std::fs::read_to_string(&p).map_err(|e| input(format!("{}: cannot read: {e}", p.display())))?;
    let mut ids: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Err(input(format!("{}: no class ids (one wnid per line expected)", p.display())));
    }
    Ok(ids)
}

/// Image files (`.JPEG`, any case) of a folder, sorted by name.
pub fn jpegs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| input(format!("{}: cannot list: {e}", dir.display())))?;
    let mut out = Vec::new();
    for e in rd {
        let p = e.map_err(|e| input(format!("{}: cannot list: {e}", dir.display())))?.path();
        let ext = p.extension().and_then(|x| x.to_str()).map(str::to_ascii_lowercase);
        if matches!(ext.as_deref(), Some("jpeg" | "jpg")) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The (file, label) lists of both splits, without decoding.
pub fn samples(root: &Path) -> anyhow::Result<(Vec<String>, Vec<(PathBuf, i64)>, Vec<(PathBuf, i64)>)> {
    let ids = wnids(root)?;
    let index: BTreeMap<&str, i64> = ids.iter().enumerate().map(|(i, w)| (w.as_str(), i as i64)).collect();
    let mut train = Vec::new();
    for (i, w) in ids.iter().enumerate() {
        let d = root.join("train").join(w).join("images");
        let files = jpegs(&d)?;
        if files.is_empty() {
            return Err(input(format!("{}: no JPEG images for class {w}", d.display())));
        }
        train.extend(files.into_iter().map(|f| (f, i as i64)));
    }
    let ann = root.join("val").join("val_annotations.txt");
    let text = std::fs::read_to_string(&ann)
        .map_err(|e| input(format!("{}: cannot read the validation labels ({e}); expected `<file>\\t<wnid>\\t<box>` lines", ann.display())))?;
    let mut val = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut f = line.split('\t');
        let (Some(file), Some(w)) = (f.next(), f.next()) else {
            return Err(input(format!("{}:{}: expected `<file>\\t<wnid>\\t...`, found `{line}`", ann.display(), n + 1)));
        };
        let Some(&label) = index.get(w.trim()) else {
            return Err(input(format!("{}:{}: wnid `{w}` is not in wnids.txt", ann.display(), n + 1)));
        };
        val.push((root.join("val").join("images").join(file.trim()), label));
    }
    if val.is_empty() {
        return Err(input(format!("{}: no validation images listed", ann.display())));
    }
    Ok((ids, train, val))
}

/// Decodes a list of 64×64 images in parallel into a split (CHW uint8), each straight into its
/// slot of one buffer (110,000 images are 1.35 GB; no second copy).
pub fn decode_split(files: &[(PathBuf, i64)]) -> anyhow::Result<RawSplit> {
    let per = (3 * SIDE * SIDE) as usize;
    let mut x = vec![0u8; per * files.len()];
    x.par_chunks_mut(per).zip(files.par_iter()).try_for_each(|(slot, (p, _))| -> anyhow::Result<()> {
        let img = jpeg::read(p)?;
        if img.dimensions() != (SIDE, SIDE) {
            return Err(input(format!("{}: image is {}x{}, expected {SIDE}x{SIDE} (Tiny-ImageNet)", p.display(), img.width(), img.height())));
        }
        jpeg::write_chw(&img, slot);
        Ok(())
    })?;
    Ok(RawSplit { x, y: files.iter().map(|(_, y)| *y).collect() })
}

/// Loads (train, val) from `dir`; the classes must be the real 200.
pub fn load(dir: &Path) -> anyhow::Result<(RawSplit, RawSplit, String)> {
    let root = locate(dir)?;
    let (ids, train, val) = samples(&root)?;
    if ids.len() != CLASSES {
        return Err(input(format!("{}: {} class ids, Tiny-ImageNet has {CLASSES}", root.join("wnids.txt").display(), ids.len())));
    }
    Ok((decode_split(&train)?, decode_split(&val)?, root.display().to_string()))
}
