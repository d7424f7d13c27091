//! CIFAR-10/100 readers for the two layouts users have on disk: torchvision's
//! `cifar-10-batches-py/` / `cifar-100-python/` pickles and the binary `cifar-10-batches-bin/` /
//! `cifar-100-binary/` files (per record: label byte(s), then 1024 R, 1024 G, 1024 B).

use std::path::{Path, PathBuf};

use super::{RawSplit, pickle};
use crate::error::InputError;

const IMG: usize = 3 * 32 * 32;

/// Which CIFAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    C10,
    C100,
}

impl Kind {
    fn dirs(self) -> (&'static str, &'static str) {
        match self {
            Kind::C10 => ("cifar-10-batches-py", "cifar-10-batches-bin"),
            Kind::C100 => ("cifar-100-python", "cifar-100-binary"),
        }
    }
}

fn input(msg: String) -> anyhow::Error {
    anyhow::Error::new(InputError(msg))
}

/// Loads (train, test) from `dir`, which may be the parent of a layout folder or the folder itself.
pub fn load(kind: Kind, dir: &Path) -> anyhow::Result<(RawSplit, RawSplit, String)> {
    let (py, bin) = kind.dirs();
    let candidates: Vec<PathBuf> = vec![dir.join(py), dir.join(bin), dir.to_path_buf()];
    for c in &candidates {
        if present(&c.join(python_files(kind).0[0]))? {
            let (train, test) = load_python(kind, c)?;
            return Ok((train, test, c.display().to_string()));
        }
        if present(&c.join(binary_files(kind).0[0]))? {
            let (train, test) = load_binary(kind, c)?;
            return Ok((train, test, c.display().to_string()));
        }
    }
    Err(input(format!(
        "{}: no {} data found; expected `{py}/` (torchvision layout) or `{bin}/` (binary layout) in it. \
         Point --data-dir (or [suite].data_dir, or KD_HARNESS_DATA) at the folder holding them",
        dir.display(),
        if kind == Kind::C10 { "CIFAR-10" } else { "CIFAR-100" }
    )))
}

fn python_files(kind: Kind) -> (Vec<&'static str>, Vec<&'static str>) {
    match kind {
        Kind::C10 => (vec!["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"], vec!["test_batch"]),
        Kind::C100 => (vec!["train"], vec!["test"]),
    }
}

fn binary_files(kind: Kind) -> (Vec<&'static str>, Vec<&'static str>) {
    match kind {
        Kind::C10 => (vec!["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"], vec!["test_batch.bin"]),
        Kind::C100 => (vec!["train.bin"], vec!["test.bin"]),
    }
}

/// Whether a layout's first file is there: a regular file is; a broken link, FIFO, device or
/// folder by that name is an error naming it (not a silent "no data found").
fn present(path: &Path) -> anyhow::Result<bool> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    crate::files::check_regular(path, "CIFAR batch file")?;
    Ok(true)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    crate::files::read(path, "CIFAR batch file")
}

fn classes(kind: Kind) -> i64 {
    if kind == Kind::C10 { 10 } else { 100 }
}

/// Reads the train files then the test files of a layout, decoding each file into its split.
fn load_with(
    dir: &Path,
    files: (Vec<&str>, Vec<&str>),
    decode: impl Fn(&Path, &[u8], &mut RawSplit) -> anyhow::Result<()>,
) -> anyhow::Result<(RawSplit, RawSplit)> {
    let mut out = [RawSplit::default(), RawSplit::default()];
    for (split, names) in out.iter_mut().zip([files.0, files.1]) {
        for f in names {
            let path = dir.join(f);
            decode(&path, &read(&path)?, split)?;
        }
    }
    let [train, test] = out;
    Ok((train, test))
}

fn load_python(kind: Kind, dir: &Path) -> anyhow::Result<(RawSplit, RawSplit)> {
    let label_key = if kind == Kind::C10 { "labels" } else { "fine_labels" };
    load_with(dir, python_files(kind), |path, bytes, split| {
        let bad = |m: String| input(format!("{}: not a CIFAR python batch: {m}", path.display()));
        let v = pickle::load(bytes).map_err(bad)?;
        let data = v.get("data").ok_or_else(|| bad("no `data` entry".into()))?;
        let (shape, raw) = data.as_u8_array().map_err(|m| bad(format!("`data`: {m}")))?;
        if shape.len() != 2 || shape[1] != IMG as i64 {
            return Err(bad(format!("`data` has shape {shape:?}, expected [N, 3072]")));
        }
        let labels = v.get(label_key).and_then(|l| l.as_int_list()).ok_or_else(|| bad(format!("no integer list `{label_key}`")))?;
        if labels.len() as i64 != shape[0] {
            return Err(bad(format!("{} labels for {} images", labels.len(), shape[0])));
        }
        if let Some(l) = labels.iter().find(|&&l| l < 0 || l >= classes(kind)) {
            return Err(bad(format!("label {l} outside 0..{}", classes(kind))));
        }
        split.x.extend_from_slice(&raw);
        split.y.extend(labels);
        Ok(())
    })
}

fn load_binary(kind: Kind, dir: &Path) -> anyhow::Result<(RawSplit, RawSplit)> {
    let lb = if kind == Kind::C10 { 1 } else { 2 };
    let rec = lb + IMG;
    load_with(dir, binary_files(kind), |path, bytes, split| {
        if bytes.is_empty() || bytes.len() % rec != 0 {
            return Err(input(format!(
                "{}: {} bytes is not a whole number of {rec}-byte records ({lb} label byte(s) + 3072 pixels)",
                path.display(),
                bytes.len()
            )));
        }
        for (i, r) in bytes.chunks_exact(rec).enumerate() {
            let label = r[lb - 1] as i64; // CIFAR-100: coarse, then fine
            if label >= classes(kind) {
                return Err(input(format!("{}: record {i} has label {label}, expected < {}", path.display(), classes(kind))));
            }
            split.y.push(label);
            split.x.extend_from_slice(&r[lb..]);
        }
        Ok(())
    })
}

/// Writes a split in the binary layout (used by `harness data synth` and tests).
/// `coarse` labels (CIFAR-100 only) are written as `label / 5`.
pub fn write_binary(kind: Kind, dir: &Path, train: &RawSplit, test: &RawSplit) -> anyhow::Result<PathBuf> {
    let (_, bin) = kind.dirs();
    let out = dir.join(bin);
    std::fs::create_dir_all(&out).map_err(|e| input(format!("{}: cannot create: {e}", out.display())))?;
    let (tr, te) = binary_files(kind);
    let write = |name: &str, s: &RawSplit, range: std::ops::Range<usize>| -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(range.len() * (IMG + 2));
        for i in range {
            if kind == Kind::C100 {
                buf.push((s.y[i] / 5) as u8);
            }
            buf.push(s.y[i] as u8);
            buf.extend_from_slice(&s.x[i * IMG..(i + 1) * IMG]);
        }
        crate::files::write_atomic(&out.join(name), &buf)
    };
    let n = train.y.len();
    let per = n.div_ceil(tr.len());
    for (k, f) in tr.iter().enumerate() {
        write(f, train, (k * per).min(n)..((k + 1) * per).min(n))?;
    }
    write(te[0], test, 0..test.y.len())?;
    Ok(out)
}
