//! Mutation fuzzing of every file kind the harness reads (issue: "no input can panic, hang or
//! silently mislead"), in process and deterministic: suites, CIFAR binary batches, `.npz`
//! containers, safetensors checkpoints, baselines, and a finished run's result files. Each
//! mutated file must give a value or an error, never a panic; results that verify must hold
//! possible numbers. The counts here take seconds; `KD_HARNESS_FUZZ_SCALE=1000` (and
//! `KD_HARNESS_FUZZ_SEED`) run the same targets longer (README, "Fuzzing"). The pickle and
//! `.npy` readers are fuzzed in `tests/inputs.rs`.

mod common;

use common::*;
use std::path::{Path, PathBuf};

use harness::store::RunDir;
use harness::store::verify::{self, Health};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn mutated_suites_parse_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    for (name, n) in [("quick.toml", 1500), ("cifar100_released.toml", 300)] {
        let seed = std::fs::read(repo().join("suites").join(name)).unwrap();
        assert!(harness::suite::Suite::parse(&path, String::from_utf8(seed.clone()).unwrap()).is_ok(), "{name} itself parses");
        let mut refused = 0;
        mutations(&seed, fuzz_iters(n), |b| {
            let text = String::from_utf8_lossy(b).into_owned();
            if let Err(e) = harness::suite::Suite::parse(&path, text) {
                refused += 1;
                // Errors are input errors (exit 2) that name the file.
                assert!(harness::error::is_input_error(&e), "{e:#}");
                assert!(format!("{e:#}").contains("s.toml"), "{e:#}");
            }
        });
        assert!(refused > 0, "{name}: some mutations must be refused");
    }
}

#[test]
fn mutated_cifar_binary_batches_load_or_are_refused() {
    use harness::data::{RawSplit, cifar};
    let dir = tempfile::tempdir().unwrap();
    let n = 20;
    let split = |n: usize| RawSplit { x: (0..n * 3072).map(|i| (i % 251) as u8).collect(), y: (0..n as i64).map(|i| i % 10).collect() };
    let out = cifar::write_binary(cifar::Kind::C10, dir.path(), &split(n), &split(10)).unwrap();
    let (train, _, _) = cifar::load(cifar::Kind::C10, dir.path()).unwrap();
    assert_eq!(train.y.len(), n);
    for file in ["data_batch_1.bin", "test_batch.bin"] {
        let p = out.join(file);
        let seed = std::fs::read(&p).unwrap();
        mutations(&seed, fuzz_iters(300), |b| {
            std::fs::write(&p, b).unwrap();
            if let Ok((tr, te, _)) = cifar::load(cifar::Kind::C10, dir.path()) {
                // What loads is whole images with labels in range.
                for s in [&tr, &te] {
                    assert_eq!(s.x.len(), s.y.len() * 3072);
                    assert!(s.y.iter().all(|&c| (0..10).contains(&c)), "{:?}", s.y);
                }
            }
        });
        std::fs::write(&p, &seed).unwrap();
    }
}

#[test]
fn mutated_npz_containers_read_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npz");
    npz(&p, &[("student", npy("<f8", &[2, 3], &f64s(&[0.1, 0.5, -0.3, 1.2, 0.0, 0.7]))), ("labels", npy("<i8", &[2], &i64s(&[0, 2])))]);
    assert_eq!(harness::data::npz::read_npz(&p).unwrap().len(), 2);
    let seed = std::fs::read(&p).unwrap();
    mutations(&seed, fuzz_iters(1000), |b| {
        std::fs::write(&p, b).unwrap();
        if let Ok(arrays) = harness::data::npz::read_npz(&p) {
            assert!(arrays.values().all(|t| t.numel() <= 6), "no array larger than the bytes behind it");
        }
    });
}

#[test]
fn mutated_checkpoints_validate_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    write_checkpoint("cnn_tiny", 10, &p);
    let cfg = harness::models::ModelCfg { in_channels: 3, num_classes: 10 };
    harness::models::checkpoint::validate(&p, "cnn_tiny", cfg).unwrap();
    let seed = std::fs::read(&p).unwrap();
    let mut accepted = 0;
    mutations(&seed, fuzz_iters(400), |b| {
        std::fs::write(&p, b).unwrap();
        if let Err(e) = harness::models::checkpoint::validate(&p, "cnn_tiny", cfg) {
            assert!(harness::error::is_input_error(&e), "{e:#}");
        } else {
            accepted += 1;
        }
    });
    // Flips inside weight values keep most files valid: the fuzzer reaches the value checks.
    assert!(accepted > 0);
}

#[test]
fn mutated_baselines_load_or_are_refused() {
    use harness::report::{Metric, check};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.toml");
    let seed = br#"suite = "quick"
metric = "last"
created = "2026-12-03T00:00:00Z"
commit = "abc"

[[group]]
id = "g1"
label = "kd cnn_small->cnn_tiny"
n = 3
mean = 96.5
std = 1.2

[[group]]
id = "g2"
label = "teacher cnn_small"
n = 1
mean = 99.1
"#;
    std::fs::write(&p, seed).unwrap();
    let spec = p.to_str().unwrap();
    assert!(check::load(spec, &[], Metric::Last).is_ok(), "the seed is a valid baseline");
    let mut refused = 0;
    mutations(seed, fuzz_iters(1500), |b| {
        std::fs::write(&p, b).unwrap();
        if let Err(e) = check::load(spec, &[], Metric::Last) {
            refused += 1;
            assert!(harness::error::is_input_error(&e) && format!("{e:#}").contains("b.toml"), "{e:#}");
        }
    });
    assert!(refused > 0);
}

/// One finished run (a cnn_tiny teacher, 3 epochs on digits); every result file mutated in turn
/// and verified as `status`, `report` and `check` verify it.
#[test]
fn mutated_results_verify_or_are_named_damaged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.toml"), TINY_KD_SUITE).unwrap();
    let o = harness(&["run", "s.toml", "--only", "role=teacher", "--device", "cpu", "--quiet"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let runs = dir.path().join("results/s/runs");
    let run = RunDir { path: std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path() };
    let spec = run.read_spec().unwrap();
    assert!(matches!(verify::check(&run, &spec), Health::Finished(_)));
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&run.path).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "json" || e == "csv")).collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("summary.json")) && files.iter().any(|f| f.ends_with("metrics.csv")), "{files:?}");
    let mut damaged = 0;
    for f in &files {
        let seed = std::fs::read(f).unwrap();
        let mut verify_one = |b: &[u8]| {
            std::fs::write(f, b).unwrap();
            match verify::check(&run, &spec) {
                Health::Finished(s) => {
                    // An impossible accuracy never verifies.
                    for v in [s.best_top1, s.last_top1, s.last_top5, s.last_ece] {
                        assert!((0.0..=100.0).contains(&v), "{}: {v} verified", f.display());
                    }
                    let (_, rows) = verify::metrics(&run, s.epochs, true).unwrap();
                    assert_eq!(rows.len(), s.epochs as usize);
                }
                Health::Damaged(_) => damaged += 1,
                Health::Unfinished { .. } => {}
            }
        };
        mutations(&seed, fuzz_iters(300), &mut verify_one);
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&seed) {
            json_mutations(&json, fuzz_iters(300), |v| verify_one(v.to_string().as_bytes()));
        }
        std::fs::write(f, &seed).unwrap();
    }
    assert!(damaged > 0);
}

/// Structure-aware mutations of a JSON document: one to three leaves (numbers, strings, bools,
/// nulls) replaced by values a reader must range-check (negative, over 100, huge, wrong type).
fn json_mutations(seed: &serde_json::Value, n: usize, mut check: impl FnMut(&serde_json::Value)) {
    use rand::{Rng, SeedableRng};
    use serde_json::{Value, json};
    fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, x)| leaves(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| leaves(x, format!("{at}/{i}"), out)),
            _ => out.push(at),
        }
    }
    let mut paths = Vec::new();
    leaves(seed, String::new(), &mut paths);
    let extremes = [json!(-1), json!(0), json!(100.5), json!(1000), json!(1e300), json!(-0.0), json!(null), json!("7"), json!(true), json!([]), json!({}), json!(4294967296u64)];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(29);
    for _ in 0..n {
        let mut v = seed.clone();
        for _ in 0..rng.gen_range(1..4) {
            let p = &paths[rng.gen_range(0..paths.len())];
            if let Some(x) = v.pointer_mut(p) {
                *x = extremes[rng.gen_range(0..extremes.len())].clone();
            }
        }
        check(&v);
    }
}
