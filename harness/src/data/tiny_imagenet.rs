//! Tiny-ImageNet (200 classes, 64×64, 100,000 train / 10,000 val) in its distributed layout
//! `tiny-imagenet-200/`: `wnids.txt`, `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` with
//! labels in `val/val_annotations.txt` (file, wnid, box). Decoded once, in parallel, into the
//! same uint8 splits as CIFAR, so training uses the device-resident path.
//!
//! Label `i` is the i-th wnid in sorted order, as torchvision's `ImageFolder` over `train/`
//! assigns them (mdistiller's loader, whose Tiny-ImageNet teacher checkpoint expects this order;
//! `wnids.txt` itself is not sorted). The validation split plays the test split's role, as in
//! mdistiller.
//!
//! Decoding 110,000 JPEGs takes minutes on one core, and every run (one child process each) and
//! every `plan` needs the splits: [`load_cached`] keeps the decoded splits in a cache file keyed by
//! the file list (paths, sizes, modification times), so only the first reader decodes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{RawSplit, jpeg};
use crate::error::InputError;

pub const SIDE: u32 = 64;
pub const CLASSES: usize = 200;

/// (file, label) pairs of one split.
pub type Files = Vec<(PathBuf, i64)>;

fn input(msg: String) -> anyhow::Error {
    anyhow::Error::new(InputError(msg))
}

/// The folder holding `wnids.txt`: `dir/tiny-imagenet-200` or `dir` itself.
pub fn locate(dir: &Path) -> anyhow::Result<PathBuf> {
    for c in [dir.join("tiny-imagenet-200"), dir.to_path_buf()] {
        let w = c.join("wnids.txt");
        if std::fs::symlink_metadata(&w).is_ok() {
            // A broken link or a FIFO by that name is named, not skipped.
            crate::files::check_regular(&w, "Tiny-ImageNet class list")?;
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
    let text = crate::files::read_to_string(&p, "Tiny-ImageNet class list")?;
    let mut ids: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Err(input(format!("{}: no class ids (one wnid per line expected)", p.display())));
    }
    Ok(ids)
}

/// Image files (`.JPEG`, any case) of a folder, sorted by name. An image name that is a broken
/// link, a FIFO or a device is an error here, when the folder is listed, not mid-epoch.
pub fn jpegs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| input(format!("{}: cannot list: {e}", dir.display())))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| input(format!("{}: cannot list: {e}", dir.display())))?;
        let p = e.path();
        let ext = p.extension().and_then(|x| x.to_str()).map(str::to_ascii_lowercase);
        if matches!(ext.as_deref(), Some("jpeg" | "jpg")) {
            crate::files::check_entry(&e, "image")?;
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The (file, label) lists of both splits, without decoding.
pub fn samples(root: &Path) -> anyhow::Result<(Vec<String>, Files, Files)> {
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
    let text = crate::files::read_to_string(&ann, "validation label file (`<file>\\t<wnid>\\t<box>` lines)")?;
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

/// The root and both splits' file lists of the real dataset (200 classes).
fn open(dir: &Path) -> anyhow::Result<(PathBuf, Files, Files)> {
    let root = locate(dir)?;
    let (ids, train, val) = samples(&root)?;
    if ids.len() != CLASSES {
        return Err(input(format!("{}: {} class ids, Tiny-ImageNet has {CLASSES}", root.join("wnids.txt").display(), ids.len())));
    }
    Ok((root, train, val))
}

/// Loads (train, val) from `dir`, decoding every image; the classes must be the real 200.
pub fn load(dir: &Path) -> anyhow::Result<(RawSplit, RawSplit, String)> {
    let (root, train, val) = open(dir)?;
    Ok((decode_split(&train)?, decode_split(&val)?, root.display().to_string()))
}

/// Bumped when the decoder or the cache layout changes, so old cache files are not read.
const CACHE_VERSION: &str = "tiny-imagenet-decoded-v1";

/// Environment variable naming the cache folder (default `$XDG_CACHE_HOME/kd-harness` or
/// `~/.cache/kd-harness`); `off` disables the cache.
pub const CACHE_ENV: &str = "KD_HARNESS_CACHE";

/// The folder decoded datasets are cached in, or `None` when caching is off or no home is known.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os(CACHE_ENV) {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("kd-harness")),
    }
}

/// Cache key of a tree: every file's path relative to the root, size, modification time and label.
fn cache_key(root: &Path, train: &[(PathBuf, i64)], val: &[(PathBuf, i64)]) -> anyhow::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(CACHE_VERSION.as_bytes());
    for split in [train, val] {
        h.update(&(split.len() as u64).to_le_bytes());
        for (p, y) in split {
            let m = std::fs::metadata(p).map_err(|e| input(format!("{}: {e}", p.display())))?;
            let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
            h.update(p.strip_prefix(root).unwrap_or(p).to_string_lossy().as_bytes());
            h.update(&m.len().to_le_bytes());
            h.update(&mtime.to_le_bytes());
            h.update(&y.to_le_bytes());
        }
    }
    Ok(h.finalize().to_hex()[..32].to_string())
}

/// Reads a cache file; `None` when it is unusable (a damaged or foreign file is re-decoded, never trusted).
fn read_cache(path: &Path, n_train: usize, n_val: usize) -> Option<(RawSplit, RawSplit)> {
    let bytes = std::fs::read(path).ok()?;
    let st = SafeTensors::deserialize(&bytes).ok()?;
    let per = (3 * SIDE * SIDE) as usize;
    let split = |name: &str, n: usize| -> Option<RawSplit> {
        let x = st.tensor(&format!("{name}_x")).ok()?;
        let y = st.tensor(&format!("{name}_y")).ok()?;
        if x.dtype() != Dtype::U8 || x.data().len() != n * per || y.dtype() != Dtype::I64 || y.data().len() != n * 8 {
            return None;
        }
        let labels = y.data().chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect();
        Some(RawSplit { x: x.data().to_vec(), y: labels })
    };
    Some((split("train", n_train)?, split("val", n_val)?))
}

fn view(d: Dtype, shape: Vec<usize>, data: &[u8]) -> anyhow::Result<TensorView<'_>> {
    TensorView::new(d, shape, data).map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Writes a cache file atomically (temporary file, then rename): concurrent runs may race to
/// write it, and a reader never sees a partial file.
fn write_cache(path: &Path, train: &RawSplit, val: &RawSplit) -> anyhow::Result<()> {
    let dir = path.parent().ok_or_else(|| anyhow::anyhow!("{}: no parent folder", path.display()))?;
    std::fs::create_dir_all(dir)?;
    let side = SIDE as usize;
    let ys: Vec<Vec<u8>> = [train, val].iter().map(|s| s.y.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let tensors = vec![
        ("train_x", view(Dtype::U8, vec![train.y.len(), 3, side, side], &train.x)?),
        ("train_y", view(Dtype::I64, vec![train.y.len()], &ys[0])?),
        ("val_x", view(Dtype::U8, vec![val.y.len(), 3, side, side], &val.x)?),
        ("val_y", view(Dtype::I64, vec![val.y.len()], &ys[1])?),
    ];
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), std::process::id()));
    safetensors::serialize_to_file(tensors, &None, &tmp).map_err(|e| anyhow::anyhow!("writing {}: {e:?}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("renaming {}: {e}", tmp.display())
    })
}

/// [`load`] through the decoded cache in [`cache_dir`] (see the module docs).
pub fn load_cached(dir: &Path) -> anyhow::Result<(RawSplit, RawSplit, String)> {
    load_cached_in(dir, cache_dir().as_deref())
}

/// [`load`] through a cache in `cache` (`None`: no cache). A cache that cannot be written only
/// costs the next reader the decode.
pub fn load_cached_in(dir: &Path, cache: Option<&Path>) -> anyhow::Result<(RawSplit, RawSplit, String)> {
    let (root, train, val) = open(dir)?;
    let Some(cache) = cache else {
        return Ok((decode_split(&train)?, decode_split(&val)?, root.display().to_string()));
    };
    let file = cache.join("decoded").join(format!("{}.safetensors", cache_key(&root, &train, &val)?));
    if let Some((a, b)) = read_cache(&file, train.len(), val.len()) {
        return Ok((a, b, root.display().to_string()));
    }
    let (a, b) = (decode_split(&train)?, decode_split(&val)?);
    if let Err(e) = write_cache(&file, &a, &b) {
        eprintln!("note: could not cache the decoded Tiny-ImageNet in {} ({e:#}); it will be decoded again next time", cache.display());
    }
    Ok((a, b, root.display().to_string()))
}
