//! JPEG datasets: Tiny-ImageNet (decoded into memory) and ImageNet (streamed ImageFolder), on
//! trees of JPEGs generated here with the same crate's encoder; a training run on a generated
//! Tiny-ImageNet through `harness run`; and `harness export` of that run, loaded back by
//! PyTorch's `load_state_dict(strict=True)` when the harness venv's python is there.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use harness::data::{self, imagenet, jpeg};
use image::{Rgb, RgbImage};

/// A flat-colour image whose channels encode (class, index): decodes back within JPEG error.
fn flat(w: u32, h: u32, class: usize, i: usize) -> RgbImage {
    RgbImage::from_pixel(w, h, Rgb([(40 + class) as u8, (100 + 30 * (i % 4)) as u8, 200]))
}

fn write_jpeg(p: &Path, img: &RgbImage) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, jpeg::encode(img, 95).unwrap()).unwrap();
}

/// wnids, deliberately not in sorted order in wnids.txt.
fn wnid(c: usize) -> String {
    format!("n{:08}", (c * 7919) % 100_000)
}

/// A Tiny-ImageNet-shaped tree: 200 classes with `per` train images each, `val` val images.
fn tiny_tree(root: &Path, per: usize, val: usize) -> PathBuf {
    let t = root.join("tiny-imagenet-200");
    let ids: Vec<String> = (0..200).map(wnid).collect();
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("wnids.txt"), ids.join("\n") + "\n").unwrap();
    for (c, w) in ids.iter().enumerate() {
        for i in 0..per {
            write_jpeg(&t.join(format!("train/{w}/images/{w}_{i}.JPEG")), &flat(64, 64, c, i));
        }
    }
    let mut ann = String::new();
    for i in 0..val {
        let c = (i * 37) % 200;
        write_jpeg(&t.join(format!("val/images/val_{i}.JPEG")), &flat(64, 64, c, i));
        ann.push_str(&format!("val_{i}.JPEG\t{}\t0\t0\t63\t63\n", ids[c]));
    }
    std::fs::write(t.join("val/val_annotations.txt"), ann).unwrap();
    t
}

fn sorted_label(c: usize) -> i64 {
    let mut ids: Vec<String> = (0..200).map(wnid).collect();
    ids.sort();
    ids.iter().position(|w| *w == wnid(c)).unwrap() as i64
}

/// Tiny-ImageNet through the decoded cache in `cache` (the user's cache is left alone).
fn read_tiny(dir: &Path, cache: &Path) -> (&'static data::DatasetInfo, data::RawSplit, data::RawSplit, String) {
    let (a, b, s) = data::tiny_imagenet::load_cached_in(dir, Some(cache)).unwrap();
    (data::info("tiny-imagenet").unwrap(), a, b, s)
}

fn cache_files(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache.join("decoded")).map(|rd| rd.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    v.sort();
    v
}

#[test]
fn tiny_imagenet_decodes_with_imagefolder_labels_and_a_stable_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiny_tree(dir.path(), 2, 10);
    let cache = dir.path().join("cache");
    let (info, train, val, source) = read_tiny(dir.path(), &cache);
    assert_eq!(source, t.display().to_string());
    assert_eq!((info.shape, info.classes), ((3, 64, 64), 200));
    assert_eq!((train.y.len(), val.y.len()), (400, 10));
    assert_eq!(train.x.len(), 400 * 3 * 64 * 64);
    // Train: classes in sorted-wnid order, files sorted within a class.
    let mut ids: Vec<String> = (0..200).map(wnid).collect();
    ids.sort();
    let per = 3 * 64 * 64;
    for (k, w) in ids.iter().enumerate() {
        let c = (0..200).find(|&c| wnid(c) == *w).unwrap();
        for i in 0..2 {
            let n = 2 * k + i;
            assert_eq!(train.y[n], k as i64);
            let img = &train.x[n * per..(n + 1) * per];
            // CHW planes: R encodes the class, G the index, B is 200.
            let (r, g, b) = (img[0] as i32, img[64 * 64] as i32, img[2 * 64 * 64] as i32);
            assert!((r - (40 + c) as i32).abs() <= 3 && (g - (100 + 30 * i) as i32).abs() <= 3 && (b - 200).abs() <= 3, "{w}_{i}: {r},{g},{b}");
        }
    }
    for i in 0..10 {
        assert_eq!(val.y[i], sorted_label((i * 37) % 200), "val_{i}");
    }
    let fp = data::fingerprint(info, &train, &val);
    // The decoded splits were cached; the second read comes from the cache and equals the decode.
    let files = cache_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    let (uncached_train, uncached_val, _) = data::tiny_imagenet::load(dir.path()).unwrap();
    assert!(uncached_train.x == train.x && uncached_val.y == val.y);
    std::fs::write(files[0].with_extension("probe"), b"").unwrap(); // a foreign file is ignored
    let (_, tr2, va2, _) = read_tiny(&t, &cache);
    assert_eq!(data::fingerprint(info, &tr2, &va2), fp, "same tree, same fingerprint (dir itself or its parent), from the cache");
    // A damaged cache file is decoded again, never trusted.
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &bytes[..bytes.len() / 2]).unwrap();
    let (_, tr2, va2, _) = read_tiny(dir.path(), &cache);
    assert_eq!(data::fingerprint(info, &tr2, &va2), fp, "re-decoded after damage");
    // Changing a file changes the key: the new pixels are decoded, not the cached ones.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_jpeg(&t.join("val/images/val_3.JPEG"), &flat(64, 64, 199, 0));
    let (_, tr3, va3, _) = read_tiny(dir.path(), &cache);
    assert_ne!(data::fingerprint(info, &tr3, &va3), fp, "changed pixels, new fingerprint");
    assert_eq!(cache_files(&cache).iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")).count(), 2);
}

fn input_error(r: anyhow::Result<impl std::fmt::Debug>) -> String {
    let e = r.expect_err("expected an input error");
    assert!(harness::error::is_input_error(&e), "{e:#}");
    format!("{e:#}")
}

#[test]
fn tiny_imagenet_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = tiny_tree(dir.path(), 1, 4);
    let bad = t.join(format!("train/{0}/images/{0}_0.JPEG", wnid(5)));
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not a jpeg").unwrap();
    let msg = input_error(data::read("tiny-imagenet", dir.path()));
    assert!(msg.contains(&bad.display().to_string()) && msg.contains("JPEG"), "{msg}");
    write_jpeg(&bad, &flat(32, 32, 5, 0));
    let msg = input_error(data::read("tiny-imagenet", dir.path()));
    assert!(msg.contains(&bad.display().to_string()) && msg.contains("32x32, expected 64x64"), "{msg}");
    write_jpeg(&bad, &flat(64, 64, 5, 0));
    std::fs::remove_file(t.join("val/val_annotations.txt")).unwrap();
    let msg = input_error(data::read("tiny-imagenet", dir.path()));
    assert!(msg.contains(&t.join("val/val_annotations.txt").display().to_string()), "{msg}");
    let msg = input_error(data::read("tiny-imagenet", &dir.path().join("nowhere")));
    assert!(msg.contains("tiny-imagenet-200/wnids.txt"), "{msg}");
}

#[test]
fn random_rotation_keeps_shapes_and_fills_corners() {
    tch::manual_seed(0);
    let x = tch::Tensor::full([64, 3, 16, 16], 255, (tch::Kind::Uint8, tch::Device::Cpu));
    let r = data::rotate(&x, 20.0);
    assert_eq!(r.size(), vec![64, 3, 16, 16]);
    // Nearest sampling keeps values: only 0 (fill) and 255 appear.
    let (zeros, full) = (r.eq(0.0).sum(tch::Kind::Int64).int64_value(&[]), r.eq(255.0).sum(tch::Kind::Int64).int64_value(&[]));
    assert_eq!(zeros + full, 64 * 3 * 16 * 16, "values other than 0 and 255");
    // Most of the 64 images are rotated enough to bring fill into a corner; the centre stays.
    let corner_zero = r.select(2, 0).select(2, 0).select(1, 0).eq(0.0).sum(tch::Kind::Int64).int64_value(&[]);
    assert!(corner_zero > 32, "{corner_zero} of 64 corners filled");
    assert!(r.select(2, 8).select(2, 8).eq(255.0).all().int64_value(&[]) == 1);
    let same = data::rotate(&x, 1e-6);
    assert!(same.eq(255.0).all().int64_value(&[]) == 1, "a zero-degree rotation changed pixels");
}

/// An ImageFolder tree of three classes with images of several sizes.
fn imagenet_tree(root: &Path) -> PathBuf {
    let r = root.join("imagenet");
    let sizes = [(300, 200), (180, 260), (256, 256), (500, 375)];
    for (c, name) in ["n01", "n02", "n03"].iter().enumerate() {
        for i in 0..4 {
            let (w, h) = sizes[i];
            write_jpeg(&r.join(format!("train/{name}/img{i}.JPEG")), &flat(w, h, c, i));
        }
        for i in 0..2 {
            write_jpeg(&r.join(format!("val/{name}/v{i}.jpg")), &flat(sizes[i + 2].0, sizes[i + 2].1, c, i));
        }
    }
    r
}

fn collect(l: imagenet::Loader) -> Vec<imagenet::Batch> {
    l.map(|b| b.unwrap()).collect()
}

#[test]
fn imagenet_loader_streams_augmented_batches_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    imagenet_tree(dir.path());
    let (train, val) = imagenet::open(dir.path()).unwrap();
    assert_eq!(train.classes, vec!["n01", "n02", "n03"]);
    assert_eq!((train.samples.len(), val.samples.len()), (12, 6));
    let fp = imagenet::fingerprint(&train, &val).unwrap();
    assert_eq!(imagenet::fingerprint(&imagenet::open(&dir.path().join("imagenet")).unwrap().0, &val).unwrap(), fp);

    let samples = Arc::new(train.samples.clone());
    let cfg = imagenet::LoaderCfg { batch_size: 5, mode: imagenet::Mode::Train, seed: 3, epoch: 0, prefetch: 2, threads: 2 };
    let a = collect(imagenet::Loader::new(samples.clone(), cfg).unwrap());
    assert_eq!(a.iter().map(|b| b.y.len()).collect::<Vec<_>>(), vec![5, 5, 2], "last partial batch kept");
    let (x, y) = a[0].tensors();
    assert_eq!(x.size(), vec![5, 3, 224, 224]);
    assert_eq!(y.size(), vec![5]);
    let mut labels: Vec<i64> = a.iter().flat_map(|b| b.y.clone()).collect();
    assert_ne!(labels, train.samples.iter().map(|s| s.1).collect::<Vec<_>>(), "training order is shuffled");
    labels.sort();
    assert_eq!(labels, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    // Pixels still say which class they came from (flat colours survive crop, resize, flip).
    for b in &a {
        for (k, &label) in b.y.iter().enumerate() {
            let r = b.x[k * 3 * 224 * 224 + 1000] as i64;
            assert!((r - (40 + label)).abs() <= 3, "label {label} with red {r}");
        }
    }
    let again = collect(imagenet::Loader::new(samples.clone(), imagenet::LoaderCfg { threads: 1, prefetch: 1, ..cfg }).unwrap());
    assert!(a.iter().zip(&again).all(|(p, q)| p.x == q.x && p.y == q.y), "same seed and epoch, same batches (whatever the thread count)");
    let other = collect(imagenet::Loader::new(samples, imagenet::LoaderCfg { epoch: 1, ..cfg }).unwrap());
    assert!(a.iter().zip(&other).any(|(p, q)| p.y != q.y), "another epoch, another order");

    let ev = imagenet::LoaderCfg { mode: imagenet::Mode::Eval, batch_size: 4, ..cfg };
    let v = collect(imagenet::Loader::new(Arc::new(val.samples.clone()), ev).unwrap());
    assert_eq!(v.iter().flat_map(|b| b.y.clone()).collect::<Vec<_>>(), vec![0, 0, 1, 1, 2, 2], "evaluation keeps file order");
    assert_eq!(v[0].x.len(), 4 * 3 * 224 * 224);
}

#[test]
fn imagenet_transforms_follow_torchvision() {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for (w, h) in [(500u32, 375u32), (64, 64), (1000, 50), (50, 1000)] {
        for _ in 0..200 {
            let (top, left, ch, cw) = imagenet::rrc_params(w, h, &mut rng);
            assert!(ch >= 1 && cw >= 1 && top + ch <= h && left + cw <= w, "{w}x{h}: {top},{left},{ch},{cw}");
            let ratio = cw as f64 / ch as f64;
            let area = (cw * ch) as f64 / (w * h) as f64;
            // Extreme aspect ratios take the centre fallback (aspect clamped to 3/4..4/3).
            assert!((0.7..=1.4).contains(&ratio) && area <= 1.0 && area >= 0.07 || (w == 1000 || h == 1000), "{w}x{h}: ratio {ratio} area {area}");
        }
    }
    // 1000×50 never fits a sampled crop: fallback = full height, width 4/3 of it, centred.
    assert_eq!(imagenet::rrc_params(1000, 50, &mut rng), (0, (1000 - 67) / 2, 50, 67));
    // Resize(256) on the shorter side, then the centre 224×224: a left/right split stays centred.
    let mut img = RgbImage::from_pixel(512, 256, Rgb([0, 0, 0]));
    for y in 0..256 {
        for x in 256..512 {
            img.put_pixel(x, y, Rgb([255, 255, 255]));
        }
    }
    let v = imagenet::eval_view(&img);
    assert_eq!(v.dimensions(), (224, 224));
    // CenterCrop's offset is Python's round((289 - 224) / 2) = round(32.5) = 32 (half to even).
    let rows = RgbImage::from_fn(256, 289, |_, y| Rgb([y.min(255) as u8, 0, 0]));
    assert_eq!(imagenet::eval_view(&rows).get_pixel(0, 0)[0], 32);
    // 512×256 → 512×256 (already 256 short side): crop columns 144..368, the edge at 256 → 112.
    assert!(v.get_pixel(100, 50)[0] < 10 && v.get_pixel(124, 50)[0] > 245, "{:?} {:?}", v.get_pixel(100, 50), v.get_pixel(124, 50));
}

#[test]
fn imagenet_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let r = imagenet_tree(dir.path());
    let bad = r.join("train/n02/img1.JPEG");
    std::fs::write(&bad, b"not a jpeg at all").unwrap();
    let (train, _) = imagenet::open(dir.path()).unwrap();
    let cfg = imagenet::LoaderCfg { batch_size: 4, mode: imagenet::Mode::Eval, seed: 0, epoch: 0, prefetch: 1, threads: 2 };
    let results: Vec<_> = imagenet::Loader::new(Arc::new(train.samples), cfg).unwrap().collect();
    assert_eq!(results.len(), 2, "the epoch ends at the failing batch");
    let msg = input_error(results.into_iter().nth(1).unwrap());
    assert!(msg.contains(&bad.display().to_string()), "{msg}");
    let msg = input_error(imagenet::open(&dir.path().join("missing")));
    assert!(msg.contains("imagenet/train/<class>"), "{msg}");
    // A loader dropped mid-epoch stops its producer (the test would hang otherwise).
    let (train, _) = imagenet::open(dir.path()).unwrap();
    let mut l = imagenet::Loader::new(Arc::new(train.samples[..4].to_vec()), imagenet::LoaderCfg { batch_size: 1, ..cfg }).unwrap();
    assert!(l.next().unwrap().is_ok());
    drop(l);
}

const SUITE: &str = r#"
[suite]
name = "ti"
dataset = "tiny-imagenet"
seeds = [0]

[train]
epochs = 1
batch_size = 64
lr = 0.05
milestones = []

[teachers.t]
model = "cnn_tiny"

[grid]
pair = [{ teacher = "t", student = "mlp" }]
method = ["kd"]
"#;

/// `cnn_tiny` in PyTorch (harness/src/models/small.rs: conv{i}/bn{i}, ReLU, global pool, fc).
const CNN_TINY: &str = r#"
import json, struct, sys, torch, torch.nn as nn
def st(path):
    raw = open(path, 'rb').read(); n = struct.unpack('<Q', raw[:8])[0]; hdr = json.loads(raw[8:8 + n])
    assert all(v['dtype'] == 'F32' for k, v in hdr.items() if k != '__metadata__'), hdr
    return {k: torch.frombuffer(bytearray(raw[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]]), dtype=torch.float32).reshape(v['shape']).clone()
            for k, v in hdr.items() if k != '__metadata__'}
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False); self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, 2, 1, bias=False); self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 200)
    def forward(self, x):
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))
m = Net(); m.load_state_dict(st(sys.argv[1]), strict=True); m.eval()
assert m.bn1.running_var.sub(1).abs().max() > 1e-3, 'BN statistics were not exported'
with torch.no_grad():
    y = m(st(sys.argv[2])['x'])
open(sys.argv[3], 'wb').write(y.numpy().astype('<f4').tobytes())
"#;

#[test]
fn a_tiny_imagenet_run_trains_and_exports_for_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    tiny_tree(dir.path(), 1, 20);
    std::fs::write(dir.path().join("ti.toml"), SUITE).unwrap();
    let o = harness(&["run", "ti.toml", "--results", "r", "--device", "cpu", "--data-dir", "."], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let runs = dir.path().join("r/ti/runs");
    let mut teacher = None;
    for e in std::fs::read_dir(&runs).unwrap() {
        let p = e.unwrap().path();
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["dataset"]["name"], "tiny-imagenet");
        if cfg["model"] == "cnn_tiny" {
            teacher = Some(p);
        }
    }
    let teacher = teacher.expect("teacher run");
    let out = dir.path().join("t.safetensors");
    let o = harness(&["export", teacher.to_str().unwrap(), "--out", out.to_str().unwrap()], dir.path());
    assert!(o.status.success() && text(&o).contains("exported cnn_tiny"), "{}", text(&o));

    // The export loads back strictly into the harness model.
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let m = (harness::models::find("cnn_tiny").unwrap().build)(&vs.root(), harness::models::ModelCfg { in_channels: 3, num_classes: 200 });
    harness::models::checkpoint::load_strict(&mut vs, &out, "cnn_tiny").unwrap();

    // Errors: damaged results (an impossible accuracy in the summary), an unfinished run, and a
    // directory that is not a run.
    let good = std::fs::read_to_string(teacher.join("summary.json")).unwrap();
    let mut bad: serde_json::Value = serde_json::from_str(&good).unwrap();
    bad["best_top1"] = serde_json::json!(250.0);
    std::fs::write(teacher.join("summary.json"), bad.to_string()).unwrap();
    let o = harness(&["export", teacher.to_str().unwrap(), "--out", out.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("damaged") && text(&o).contains("summary.json"), "{}", text(&o));
    std::fs::write(teacher.join("summary.json"), good).unwrap();
    std::fs::rename(teacher.join("summary.json"), teacher.join("summary.bak")).unwrap();
    let o = harness(&["export", teacher.to_str().unwrap(), "--out", out.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("has not finished"), "{}", text(&o));
    std::fs::rename(teacher.join("summary.bak"), teacher.join("summary.json")).unwrap();
    let o = harness(&["export", dir.path().to_str().unwrap(), "--out", out.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("not a run directory"), "{}", text(&o));

    let Some(py) = venv_python() else {
        eprintln!("SKIPPED: no ~/.cache/kd-harness/venv python with torch; the PyTorch side of the export round trip needs it");
        return;
    };
    tch::manual_seed(0);
    let x = tch::Tensor::randn([3, 3, 64, 64], (tch::Kind::Float, tch::Device::Cpu));
    let xin = dir.path().join("x.safetensors");
    tch::Tensor::write_safetensors(&[("x", &x)], &xin).unwrap();
    let logits = dir.path().join("y.f32");
    let o = std::process::Command::new(&py).arg("-c").arg(CNN_TINY).arg(&out).arg(&xin).arg(&logits).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: Vec<f32> = std::fs::read(&logits).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let theirs = tch::Tensor::from_slice(&v).view([3, 200]);
    let ours = tch::no_grad(|| m.forward(&x, false)).logits;
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "PyTorch logits differ from the harness's by {diff}");
}

#[test]
fn imagenet_eval_streams_the_val_split_through_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = imagenet_tree(dir.path());
    // `eval` builds models with ImageNet's 1000 classes; a random resnet18 checkpoint.
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let m = (harness::models::find("resnet18").unwrap().build)(&vs.root(), harness::models::ModelCfg { in_channels: 3, num_classes: 1000 });
    let ckpt = dir.path().join("r18.safetensors");
    vs.save(&ckpt).unwrap();
    let npy = dir.path().join("logits.npy");
    let o = harness(
        &[
            "eval",
            "--model",
            "resnet18",
            "--dataset",
            "imagenet",
            "--checkpoint",
            "r18.safetensors",
            "--data-dir",
            ".",
            "--device",
            "cpu",
            "--save-logits",
            "logits.npy",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resnet18 on imagenet test (6 images)"), "{}", text(&o));
    let theirs = tch::Tensor::read_npy(&npy).unwrap();
    assert_eq!(theirs.size(), vec![6, 1000]);
    // The same images decoded, resized, centre-cropped and normalised here, one by one.
    let (_, val) = imagenet::open(&root).unwrap();
    let info = data::info("imagenet").unwrap();
    let mean = tch::Tensor::from_slice(info.mean).to_kind(tch::Kind::Float).view([1, 3, 1, 1]);
    let std = tch::Tensor::from_slice(info.std).to_kind(tch::Kind::Float).view([1, 3, 1, 1]);
    for (i, (p, _)) in val.samples.iter().enumerate() {
        let mut bytes = Vec::new();
        jpeg::push_chw(&imagenet::eval_view(&jpeg::read(p).unwrap()), &mut bytes);
        let x = (tch::Tensor::from_slice(&bytes).view([1, 3, 224, 224]).to_kind(tch::Kind::Float) / 255.0 - &mean) / &std;
        let ours = tch::no_grad(|| m.forward(&x, false)).logits;
        let diff = (&ours - theirs.get(i as i64)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "val image {i}: logits differ by {diff}");
    }
}

#[test]
fn imagenet_dataset_streams_through_the_common_batch_interface() {
    let dir = tempfile::tempdir().unwrap();
    imagenet_tree(dir.path());
    // ImageNet's train split has a PNG named .JPEG (n02105855_2933); PIL reads it by content, so do we.
    let png = dir.path().join("imagenet/train/n03/img3.JPEG");
    flat(500, 375, 2, 3).save_with_format(&png, image::ImageFormat::Png).unwrap();
    assert_eq!(image::guess_format(&std::fs::read(&png).unwrap()).unwrap(), image::ImageFormat::Png);
    let d = data::Dataset::load("imagenet", dir.path(), tch::Device::Cpu).unwrap();
    assert!(d.is_streamed() && d.resident_train_x().is_none());
    assert_eq!((d.train_len(), d.test_len()), (12, 6));
    assert_eq!(data::plan_fingerprint("imagenet", dir.path()).unwrap(), d.fingerprint, "plan and run agree on the fingerprint");
    let epoch = |seed: u64| -> Vec<(tch::Tensor, tch::Tensor, tch::Tensor)> { d.train_batches(5, true, seed).map(|b| b.unwrap()).collect() };
    let a = epoch(5);
    assert_eq!(a.iter().map(|b| b.1.size()[0]).collect::<Vec<_>>(), vec![5, 5, 2], "last partial batch kept");
    assert_eq!(a[0].0.size(), vec![5, 3, 224, 224]);
    assert_eq!(a[0].0.kind(), tch::Kind::Float);
    let mut idx: Vec<i64> = a.iter().flat_map(|b| Vec::<i64>::try_from(&b.2).unwrap()).collect();
    for (x, y, i) in &a {
        assert!(d.train_y.index_select(0, i).equal(y), "labels are the indexed samples'");
        // Normalised: flat red channel (40 + class)/255 through ImageNet's mean/std.
        let red = x.get(0).get(0).get(100).get(100).double_value(&[]);
        let class = y.int64_value(&[0]) as f64;
        assert!((red - ((40.0 + class) / 255.0 - 0.485) / 0.229).abs() < 0.06, "red {red} for class {class}");
    }
    idx.sort();
    assert_eq!(idx, (0..12).collect::<Vec<i64>>(), "an epoch visits every image once");
    let again = epoch(5);
    assert!(a.iter().zip(&again).all(|(p, q)| p.0.equal(&q.0) && p.2.equal(&q.2)), "the stream seed fixes order and augmentation");
    let other = epoch(6);
    assert!(a.iter().zip(&other).any(|(p, q)| !p.2.equal(&q.2)), "another seed, another order");

    let test: Vec<_> = d.test_batches(4).map(|b| b.unwrap()).collect();
    assert_eq!(test.iter().flat_map(|b| Vec::<i64>::try_from(&b.1).unwrap()).collect::<Vec<_>>(), vec![0, 0, 1, 1, 2, 2]);
    assert_eq!(d.probe(2).unwrap().size(), vec![2, 3, 224, 224]);
    // BAKE's grouped sampler: every anchor is followed by images of its class.
    for b in d.train_batches_grouped(6, 2, true, 1) {
        let (_, y, _) = b.unwrap();
        let y: Vec<i64> = Vec::try_from(&y).unwrap();
        assert!(y.chunks(3).all(|g| g.iter().all(|&c| c == g[0])), "{y:?}");
    }

    // More class folders than ImageNet's classifier has outputs cannot be labelled.
    let wide = dir.path().join("wide");
    for c in 0..1001 {
        std::fs::create_dir_all(wide.join(format!("train/c{c:04}"))).unwrap();
        std::fs::create_dir_all(wide.join(format!("val/c{c:04}"))).unwrap();
    }
    write_jpeg(&wide.join("train/c0000/a.JPEG"), &flat(40, 40, 0, 0));
    write_jpeg(&wide.join("val/c0000/a.JPEG"), &flat(40, 40, 0, 0));
    let msg = input_error(data::Dataset::load("imagenet", &wide, tch::Device::Cpu).map(|_| ()));
    assert!(msg.contains("1001 class folders") && msg.contains("at most 1000"), "{msg}");
}

const IMAGENET_SUITE: &str = r#"
[suite]
name = "in"
dataset = "imagenet"
seeds = [0]

[train]
epochs = 2
batch_size = 4
lr = 0.05
milestones = []

[teachers.t]
model = "cnn_small"

[grid]
pair = [{ teacher = "t", student = "cnn_tiny" }]
method = ["ce", "kd"]
"#;

#[test]
fn an_imagenet_suite_trains_streamed_and_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    imagenet_tree(dir.path());
    std::fs::write(dir.path().join("in.toml"), IMAGENET_SUITE).unwrap();
    let o = harness(&["plan", "in.toml", "--data-dir", "."], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let run = |results: &str, decoders: &str| {
        let o = harness_cmd(&["run", "in.toml", "--results", results, "--device", "cpu", "--data-dir", ".", "--jobs", "1"], dir.path())
            .env("RAYON_NUM_THREADS", decoders)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    };
    run("r1", "2");
    run("r2", "1");
    let runs = dir.path().join("r1/in/runs");
    let mut kd = None;
    let ids: Vec<_> = std::fs::read_dir(&runs).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(ids.len(), 3, "teacher + ce + kd");
    for id in &ids {
        let p = runs.join(id);
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p.join("summary.json")).unwrap()).unwrap();
        let top1 = s["last_top1"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&top1), "{s}");
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["dataset"]["name"], "imagenet");
        let rows = metrics_without_timing(&p.join("metrics.csv"));
        assert_eq!(rows.len(), 3, "header + 2 epochs");
        // Decoding threads change no batch (bit-identity of the stream is asserted in
        // `imagenet_loader_streams_augmented_batches_deterministically`), so the teacher and
        // the ce student are bit-identical. The kd student is compared within 5%: its
        // 1000-class fp32 log-softmax was seen (about 1 run in 15, CI and locally, inputs
        // bit-identical at step 1, never reproduced in PyTorch from the same tensors) to
        // differ by about one ulp between processes, which two epochs of SGD grow to ~1e-3.
        let other = metrics_without_timing(&dir.path().join("r2/in/runs").join(id).join("metrics.csv"));
        if cfg["method"] == "kd" {
            assert_close_rows(&rows, &other, 0.05, id);
        } else {
            assert_eq!(rows, other, "{id:?}");
        }
        if cfg["method"] == "kd" {
            kd = Some(s);
        }
    }
    let kd = kd.expect("kd run");
    assert!(kd["teacher_top1"].as_f64().is_some() && kd["agreement"].as_f64().is_some(), "{kd}");
}

/// Same header, same cells where not numbers, numbers within `rel` of each other.
fn assert_close_rows(a: &[Vec<String>], b: &[Vec<String>], rel: f64, id: &std::ffi::OsStr) {
    assert_eq!(a.len(), b.len(), "{id:?}: rows");
    assert_eq!(a[0], b[0], "{id:?}: header");
    for (ra, rb) in a.iter().zip(b).skip(1) {
        for ((h, x), y) in a[0].iter().zip(ra).zip(rb) {
            let close = match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(p), Ok(q)) => (p - q).abs() <= rel * p.abs().max(q.abs()) + 1e-12,
                _ => x == y,
            };
            assert!(close, "{id:?}: {h} {x} vs {y}");
        }
    }
}

/// PrUE's two label-sorted passes stream like training batches: masks at exactly k = int(s·n)
/// over the conv weights, reproducible under the same seed.
#[test]
fn prue_scores_a_streamed_dataset() {
    let dir = tempfile::tempdir().unwrap();
    imagenet_tree(dir.path());
    let d = data::Dataset::load("imagenet", dir.path(), tch::Device::Cpu).unwrap();
    let order = harness::train::prune::label_order(&d);
    assert_eq!(order, (0..12).collect::<Vec<i64>>(), "the tree lists classes in sorted order already");
    let masks = |seed: u64| {
        tch::manual_seed(0);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let m = (harness::models::find("cnn_tiny").unwrap().build)(&vs.root(), harness::models::ModelCfg { in_channels: 3, num_classes: 1000 });
        harness::train::prune::prue_model(&vs, m.as_ref(), &d, 0.5, 5, true, seed).unwrap()
    };
    let (a, thr) = masks(1);
    assert!(thr.is_some());
    let n: i64 = a.values().map(|m| m.numel() as i64).sum();
    let kept: i64 = a.values().map(|m| m.sum(tch::Kind::Float).double_value(&[]) as i64).sum();
    assert_eq!(a.len(), 2, "cnn_tiny's two convs");
    assert!(n - kept >= n / 2, "at least k = int(0.5·{n}) pruned, {} pruned", n - kept);
    let (b, _) = masks(1);
    assert!(a.iter().all(|(k, m)| m.equal(&b[k])), "same seed, same masks");
}
