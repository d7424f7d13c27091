//! `harness data synth`: a class-structured synthetic dataset in the CIFAR binary layout, so
//! tests and demos exercise the real CIFAR reader on learnable 32×32×3 data.
//! Each class has a smooth random colour pattern (4×4 upsampled bilinearly to 32×32); a sample is
//! its class pattern, randomly shifted by up to 3 pixels, plus per-pixel Gaussian noise.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::RawSplit;
use super::cifar::{self, Kind as CifarKind};

/// Most images (train + test) `harness data synth` writes: 3 GB of pixels.
pub const MAX_IMAGES: i64 = 1_000_000;

/// Generates (train, test) deterministically from `seed` (its own generator: independent of
/// libtorch's global one and of other threads).
pub fn generate(classes: i64, n_train: i64, n_test: i64, seed: u64, noise: f64) -> (RawSplit, RawSplit) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Class patterns: 4×4×3 random colours, bilinearly upsampled to 40×40 (room for 8-pixel shifts).
    let protos: Vec<Vec<f64>> = (0..classes)
        .map(|_| {
            let g: Vec<f64> = (0..48).map(|_| rng.r#gen::<f64>() * 200.0 + 28.0).collect();
            let mut img = vec![0.0; 3 * 40 * 40];
            for c in 0..3 {
                for y in 0..40 {
                    for x in 0..40 {
                        let fy = ((y as f64 + 0.5) / 10.0 - 0.5).clamp(0.0, 3.0);
                        let fx = ((x as f64 + 0.5) / 10.0 - 0.5).clamp(0.0, 3.0);
                        let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
                        let (y1, x1) = ((y0 + 1).min(3), (x0 + 1).min(3));
                        let (dy, dx) = (fy - y0 as f64, fx - x0 as f64);
                        let at = |yy: usize, xx: usize| g[c * 16 + yy * 4 + xx];
                        img[c * 1600 + y * 40 + x] =
                            at(y0, x0) * (1.0 - dy) * (1.0 - dx) + at(y0, x1) * (1.0 - dy) * dx + at(y1, x0) * dy * (1.0 - dx) + at(y1, x1) * dy * dx;
                    }
                }
            }
            img
        })
        .collect();
    let mut make = |n: i64| -> RawSplit {
        let mut y: Vec<i64> = (0..n).map(|i| i % classes).collect();
        for i in (1..y.len()).rev() {
            let j = rng.gen_range(0..=i);
            y.swap(i, j);
        }
        let mut x = Vec::with_capacity(n as usize * 3072);
        for &label in &y {
            let p = &protos[label as usize];
            let (oy, ox) = (rng.gen_range(0..8usize), rng.gen_range(0..8usize));
            for c in 0..3 {
                for r in 0..32 {
                    for q in 0..32 {
                        // Box–Muller normal noise.
                        let (u1, u2): (f64, f64) = (rng.r#gen::<f64>().max(1e-12), rng.r#gen());
                        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                        let v = p[c * 1600 + (r + oy) * 40 + (q + ox)] + z * noise;
                        x.push(v.clamp(0.0, 255.0).round() as u8);
                    }
                }
            }
        }
        RawSplit { x, y }
    };
    let train = make(n_train);
    let test = make(n_test);
    (train, test)
}

/// Writes a synthetic dataset under `out` (10 classes → `cifar-10-batches-bin/`, 100 → `cifar-100-binary/`).
pub fn write(out: &Path, classes: i64, n_train: i64, n_test: i64, seed: u64, noise: f64) -> anyhow::Result<PathBuf> {
    let kind = match classes {
        10 => CifarKind::C10,
        100 => CifarKind::C100,
        other => crate::input_bail!("--classes {other}: the CIFAR binary layout holds 10 or 100 classes"),
    };
    if n_train < classes || n_test < 1 {
        crate::input_bail!("--train must be at least the number of classes ({classes}) and --test at least 1 (found --train {n_train}, --test {n_test})");
    }
    // Checked before anything is allocated: the images are held in memory while they are written.
    if n_train.saturating_add(n_test) > MAX_IMAGES {
        crate::input_bail!(
            "--train {n_train} + --test {n_test} images: at most {MAX_IMAGES} in all ({} GB of pixels held in memory); CIFAR itself has 60000",
            MAX_IMAGES * 3072 / 1_000_000_000
        );
    }
    if !(noise.is_finite() && noise >= 0.0) {
        crate::input_bail!("--noise {noise}: expected a finite standard deviation >= 0 (0-255 pixel scale)");
    }
    let (train, test) = generate(classes, n_train, n_test, seed, noise);
    cifar::write_binary(kind, out, &train, &test)
}
