//! `.npz` / `.npy` arrays (NumPy's format, version 1–3) read without trusting what they declare:
//! the header is bounded, the shape's product is computed with checked arithmetic and capped,
//! and the payload must hold exactly the declared bytes. tch's own reader builds the tensor from
//! the declared shape whatever the payload holds (a short payload reads uninitialised memory).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::InputError;

/// Largest array accepted (bytes of payload): loss-eval arrays are batches, not datasets.
pub const MAX_ARRAY_BYTES: usize = 1 << 30;
/// Largest `.npy` header accepted (NumPy itself refuses headers over 10,000 bytes by default).
const MAX_HEADER: usize = 1 << 16;

fn input(msg: String) -> anyhow::Error {
    anyhow::Error::new(InputError(msg))
}

/// A NumPy dtype string (`<f8`, `|b1`, …) as (libtorch kind, item size); big-endian, string,
/// object and structured dtypes are refused.
fn kind_of(descr: &str) -> Result<(Kind, usize), String> {
    if descr.is_empty() || !descr.is_ascii() {
        return Err(format!("dtype `{descr}` is not supported"));
    }
    let (order, code) = descr.split_at(1);
    if order == ">" && !code.ends_with('1') {
        return Err(format!("big-endian dtype `{descr}` is not supported; save with a little-endian dtype (`<`)"));
    }
    Ok(match code {
        "f2" => (Kind::Half, 2),
        "f4" => (Kind::Float, 4),
        "f8" => (Kind::Double, 8),
        "i1" => (Kind::Int8, 1),
        "u1" => (Kind::Uint8, 1),
        "i2" => (Kind::Int16, 2),
        "i4" => (Kind::Int, 4),
        "i8" => (Kind::Int64, 8),
        "b1" => (Kind::Bool, 1),
        "c8" => (Kind::ComplexFloat, 8),
        "c16" => (Kind::ComplexDouble, 16),
        _ => return Err(format!("dtype `{descr}` is not supported (numbers only: float16/32/64, int8/16/32/64, uint8, bool, complex)")),
    })
}

/// The value of `'key':` in a header dict, up to the next top-level comma or closing brace.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}']).unwrap_or(rest.len()) };
    Some(rest[..end].trim())
}

/// Parsed `.npy` header: kind, item size, shape (C order), whether the data are in Fortran order.
fn parse_header(header: &str) -> Result<(Kind, usize, Vec<i64>, bool), String> {
    let descr = header_value(header, "descr").ok_or("no `descr` in the header")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (kind, size) = kind_of(descr)?;
    let fortran = match header_value(header, "fortran_order") {
        Some("False") => false,
        Some("True") => true,
        other => return Err(format!("`fortran_order` is {other:?}, expected True or False")),
    };
    let shape = header_value(header, "shape").ok_or("no `shape` in the header")?;
    let inner = shape.strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(|| format!("shape `{shape}` is not a tuple"))?;
    let dims = inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<i64>().ok().filter(|&d| d >= 0).ok_or_else(|| format!("shape `{shape}`: `{d}` is not a dimension >= 0")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((kind, size, dims, fortran))
}

/// Reads one `.npy` stream; `name` names it in errors (`file.npz:labels`).
pub fn read_npy(r: &mut impl Read, name: &str) -> anyhow::Result<Tensor> {
    let bad = |m: String| input(format!("{name}: {m}"));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|e| bad(format!("not a .npy array ({e})")))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy array (no \\x93NUMPY magic)".into()));
    }
    let hlen = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|e| bad(format!("truncated header ({e})")))?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| bad(format!("truncated header ({e})")))?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(bad(format!(".npy version {v} is not supported (1, 2 or 3)"))),
    };
    if hlen > MAX_HEADER {
        return Err(bad(format!("header of {hlen} bytes declared; at most {MAX_HEADER} accepted")));
    }
    let mut header = Vec::new();
    r.by_ref().take(hlen as u64).read_to_end(&mut header).map_err(|e| bad(format!("cannot read the header: {e}")))?;
    if header.len() != hlen {
        return Err(bad(format!("truncated header: {hlen} bytes declared, {} present", header.len())));
    }
    let header = String::from_utf8_lossy(&header);
    let (kind, size, shape, fortran) = parse_header(&header).map_err(bad)?;
    let nbytes = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d as usize))
        .filter(|&n| n <= MAX_ARRAY_BYTES)
        .ok_or_else(|| bad(format!("shape {shape:?} of {size}-byte items is larger than {} MiB", MAX_ARRAY_BYTES >> 20)))?;
    // Read what is there (at most one byte more than declared), never what is declared.
    let mut data = Vec::new();
    r.take(nbytes as u64 + 1).read_to_end(&mut data).map_err(|e| bad(format!("cannot read the data: {e}")))?;
    if data.len() != nbytes {
        let found = if data.len() > nbytes { "more".to_string() } else { data.len().to_string() };
        return Err(bad(format!("shape {shape:?} needs {nbytes} bytes of data, the file holds {found}")));
    }
    let dims: Vec<i64> = if fortran { shape.iter().rev().copied().collect() } else { shape.clone() };
    let t = Tensor::f_from_data_size(&data, &dims, kind).map_err(|e| bad(format!("cannot build the array: {e}")))?;
    if fortran {
        let rev: Vec<i64> = (0..dims.len() as i64).rev().collect();
        return t.f_permute(rev.as_slice()).and_then(|t| t.f_contiguous()).map_err(|e| bad(format!("cannot reorder the array: {e}")));
    }
    Ok(t)
}

/// Reads every array of an `.npz` (NumPy's zip of `.npy` files, stored or deflated).
pub fn read_npz(path: &Path) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let file = crate::files::open(path, ".npz archive")?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| input(format!("{}: not an .npz (zip) archive: {e}", path.display())))?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| input(format!("{}: entry {i}: {e}", path.display())))?;
        let name = entry.name().strip_suffix(".npy").unwrap_or(entry.name()).to_string();
        let t = read_npy(&mut entry, &format!("{}: array `{name}`", path.display()))?;
        if out.insert(name.clone(), t).is_some() {
            return Err(input(format!("{}: array `{name}` appears twice", path.display())));
        }
    }
    Ok(out)
}
