//! The UCI optical-recognition handwritten digits (1,797 8×8 images, pixel counts 0–16,
//! CC BY 4.0), as shipped by scikit-learn (`sklearn/datasets/data/digits.csv.gz`) and committed
//! under `data/`. The file is embedded in the binary so the quick suite needs no download.
//!
//! Split (fixed): sample `i` (file order) is a test sample iff `i % 5 == 0` → 1,437 train, 360 test.
//! Pixels are scaled to 0–255 by `round(v · 255 / 16)`.

use std::io::Read;

use super::RawSplit;

/// The committed file.
pub const CSV_GZ: &[u8] = include_bytes!("../../../data/digits.csv.gz");

/// Its name in a data folder (which then replaces the embedded copy).
pub const FILE: &str = "digits.csv.gz";

/// Largest decompressed CSV accepted (the real one is 0.3 MB): a gzip bomb is refused, not inflated.
const MAX_CSV: u64 = 64 << 20;

/// Parses the gzipped CSV (64 pixel values then the label per row) into (train, test).
pub fn load_from(bytes: &[u8], name: &str) -> anyhow::Result<(RawSplit, RawSplit)> {
    let bad = |m: String| anyhow::Error::new(crate::error::InputError(format!("{name}: {m}")));
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes).take(MAX_CSV + 1).read_to_string(&mut text).map_err(|e| bad(format!("not a gzipped CSV: {e}")))?;
    if text.len() as u64 > MAX_CSV {
        return Err(bad(format!("decompresses to more than {} MB; the digits CSV is 0.3 MB", MAX_CSV >> 20)));
    }
    let mut train = RawSplit::default();
    let mut test = RawSplit::default();
    let mut i = 0usize;
    for (line_no, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let vals: Vec<&str> = line.split(',').collect();
        if vals.len() != 65 {
            return Err(bad(format!("line {}: {} fields, expected 65 (64 pixels and a label)", line_no + 1, vals.len())));
        }
        let split = if i % 5 == 0 { &mut test } else { &mut train };
        for v in &vals[..64] {
            let p: u32 =
                v.trim().parse().ok().filter(|p| *p <= 16).ok_or_else(|| bad(format!("line {}: pixel `{v}` is not an integer 0..=16", line_no + 1)))?;
            split.x.push(((p * 255 + 8) / 16) as u8);
        }
        let y: i64 = vals[64]
            .trim()
            .parse()
            .ok()
            .filter(|y| (0..10).contains(y))
            .ok_or_else(|| bad(format!("line {}: label `{}` is not 0..=9", line_no + 1, vals[64])))?;
        split.y.push(y);
        i += 1;
    }
    Ok((train, test))
}
