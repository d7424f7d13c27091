//! Decode + augment throughput of the JPEG datasets on one core (`cargo bench --bench decode`):
//! the per-image work of a loader thread. Criterion reports images/s; the loader runs one such
//! stream per decoding thread.
//!
//! Crop, resize and flip go through `DynamicImage` methods, compiled optimised inside the `image`
//! crate even in the dev profile (its generic `imageops` would be instantiated unoptimised in the
//! harness crate: 55 ms per training view instead of 6.9 ms, same bytes).
//!
//! Measured 2026-11-28 with `cargo bench --profile dev --bench decode` on the 2-core build VM,
//! images/s on one core (all 500×375 unless noted), before → after that change, same session:
//! train view (decode + RandomResizedCrop 224 + flip) 15.6 → 30.1, eval view (decode + Resize 256
//! + CenterCrop 224) 11.8 → 29.4; decode only 45–58 (noise; unchanged code), Tiny-ImageNet 64×64
//! decode 1,206. JPEG decoding (jpeg-decoder) now dominates. Not a release-profile figure.
//!
//! Inputs are generated JPEGs (quality 90) with smooth gradients plus noise, at ImageNet's
//! typical 500×375 and Tiny-ImageNet's 64×64; real photographs decode at a similar rate per pixel.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use harness::data::{imagenet, jpeg};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

fn photo(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let img = RgbImage::from_fn(w, h, |x, y| {
        let n: i32 = rng.gen_range(-24..24);
        let v = |a: u32, b: u32| ((a * 255 / w + b * 255 / h) as i32 / 2 + n).clamp(0, 255) as u8;
        Rgb([v(x, y), v(w - 1 - x, y), v(x, h - 1 - y)])
    });
    jpeg::encode(&img, 90).expect("encodes")
}

fn decode_augment(c: &mut Criterion) {
    let big: Vec<Vec<u8>> = (0..8).map(|s| photo(500, 375, s)).collect();
    let tiny: Vec<Vec<u8>> = (0..8).map(|s| photo(64, 64, s)).collect();
    let p = Path::new("bench.JPEG");
    let mut g = c.benchmark_group("decode_augment_1core");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut i = 0;
    g.bench_function("imagenet_train_500x375_rrc224_flip", |b| {
        b.iter(|| {
            i += 1;
            let img = jpeg::decode(&big[i % big.len()], p).expect("decodes");
            let mut out = Vec::with_capacity(3 * 224 * 224);
            jpeg::push_chw(&imagenet::train_view(&img, &mut rng), &mut out);
            out
        })
    });
    g.bench_function("imagenet_decode_only_500x375", |b| {
        b.iter(|| {
            i += 1;
            jpeg::decode(&big[i % big.len()], p).expect("decodes")
        })
    });
    g.bench_function("imagenet_eval_500x375_resize256_center224", |b| {
        b.iter(|| {
            i += 1;
            let img = jpeg::decode(&big[i % big.len()], p).expect("decodes");
            let mut out = Vec::with_capacity(3 * 224 * 224);
            jpeg::push_chw(&imagenet::eval_view(&img), &mut out);
            out
        })
    });
    g.bench_function("tiny_imagenet_64x64_decode", |b| {
        b.iter(|| {
            i += 1;
            let img = jpeg::decode(&tiny[i % tiny.len()], p).expect("decodes");
            let mut out = Vec::with_capacity(3 * 64 * 64);
            jpeg::push_chw(&img, &mut out);
            out
        })
    });
    g.finish();
}

criterion_group!(benches, decode_augment);
criterion_main!(benches);
