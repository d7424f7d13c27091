//! JPEG decoding to RGB bytes (grayscale and CMYK files are converted, as PIL's
//! `convert("RGB")` in torchvision's loader does), with errors that name the file, and the
//! encoder the tests and benchmarks use to build image trees.

use std::path::Path;

use image::{ImageFormat, RgbImage};

use crate::error::InputError;

/// Decodes JPEG `bytes` read from `path` into an RGB image. The format comes from the content,
/// as PIL (torchvision's loader) does: ImageNet's train split holds a PNG named `.JPEG`
/// (n02105855_2933), which must not end an epoch.
pub fn decode(bytes: &[u8], path: &Path) -> anyhow::Result<RgbImage> {
    let format = match image::guess_format(bytes) {
        Ok(ImageFormat::Png) => ImageFormat::Png,
        _ => ImageFormat::Jpeg,
    };
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| InputError::new(format!("{}: not a decodable JPEG: {e}", path.display())))?;
    Ok(img.into_rgb8())
}

/// Reads and decodes one JPEG file.
pub fn read(path: &Path) -> anyhow::Result<RgbImage> {
    let bytes = crate::files::read(path, "image")?;
    decode(&bytes, path)
}

/// Encodes an RGB image as JPEG at `quality` (1..=100).
pub fn encode(img: &RgbImage, quality: u8) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(img).map_err(|e| anyhow::anyhow!("JPEG encoding: {e}"))?;
    Ok(out)
}

/// HWC interleaved RGB → CHW planes, appended to `out` (the layout of the uint8 tensors).
pub fn push_chw(img: &RgbImage, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + img.as_raw().len(), 0);
    write_chw(img, &mut out[start..]);
}

/// HWC interleaved RGB → CHW planes in `out` (exactly 3·W·H bytes).
pub fn write_chw(img: &RgbImage, out: &mut [u8]) {
    let plane = (img.width() * img.height()) as usize;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
}
