//! `bench`, `eval`, `doctor`.

use super::*;

pub(super) fn bench_cmd(a: BenchArgs) -> anyhow::Result<i32> {
    for (flag, v) in [("--batch", a.batch), ("--images", a.images), ("--steps", a.steps as i64), ("--rounds", a.rounds as i64), ("--cohort", a.cohort)] {
        if v < 1 {
            crate::input_bail!("{flag}: expected an integer >= 1, found {v}");
        }
    }
    if a.images < a.batch {
        crate::input_bail!("--images {}: expected at least one batch ({})", a.images, a.batch);
    }
    for m in [&a.teacher, &a.student] {
        if models::find(m).is_none() {
            crate::input_bail!("unknown model `{m}`; allowed: {}", models::names().join(", "));
        }
    }
    let precision = match train::precision::Precision::parse(&a.precision) {
        Ok(p) => p,
        Err(e) => crate::input_bail!("--precision: {e}"),
    };
    let device = env::parse_device(&a.device)?;
    train::precision::check_device(precision, device)?;
    let python = if a.no_reference {
        None
    } else {
        let p = a.python.clone().or_else(|| {
            let home = std::env::var_os("KD_HARNESS_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kd-harness")))?;
            Some(home.join("venv/bin/python"))
        });
        match p {
            Some(p) if p.is_file() => Some(p),
            Some(p) => crate::input_bail!("--python {}: not found; pass --python PATH (a python with torch 2.11) or --no-reference", p.display()),
            None => crate::input_bail!("no python for the reference; pass --python PATH or --no-reference"),
        }
    };
    let dir = std::env::temp_dir().join(format!("kd-harness-bench-{}", std::process::id()));
    data::synth::write(&dir, 100, a.images, 100, 0, 40.0)?;
    let result = (|| {
        let data = data::Dataset::load("cifar100", &dir, device)?;
        let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(1));
        let o = train::bench::BenchOpts {
            teacher: a.teacher.clone(),
            student: a.student.clone(),
            batch: a.batch,
            steps: a.steps,
            warmup: a.warmup,
            rounds: a.rounds,
            threads,
            ref_workers: a.ref_workers,
            channels_last: !a.nchw && env::channels_last(),
            cohort: a.cohort as usize,
            precision,
            device,
            python,
        };
        let quiet = a.json;
        train::bench::run(&o, &data, &dir, &mut |msg| {
            if !quiet {
                eprintln!("{msg}");
            }
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let r = result?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.text());
    }
    Ok(0)
}

pub(super) fn eval(a: EvalArgs) -> anyhow::Result<i32> {
    let device = env::parse_device(&a.device)?;
    let dir = data::resolve_dir(a.data.data_dir.as_deref(), None);
    if a.data.data_dir.is_some() {
        data::check_explicit_dir(&a.dataset, &dir, "--data-dir", false)?;
    }
    // Streamed datasets (ImageNet) decode the test split batch by batch.
    let data = data::Dataset::load(&a.dataset, &dir, device)?;
    let mut net = train::build(&a.model, &data, device)?;
    models::checkpoint::load_strict(&mut net.vs, &a.checkpoint, &a.model)?;
    let (logits, labels) = (train::test_logits(net.model.as_ref(), &data)?, data.test_y.to_device(tch::Device::Cpu));
    let e = train::evaluate(&logits, &labels);
    println!(
        "{} on {} test ({} images): top-1 {:.2}%  top-5 {:.2}%  ECE-15 {:.2}%  loss {:.4}",
        a.model,
        a.dataset,
        labels.size()[0],
        e.top1 * 100.0,
        e.top5 * 100.0,
        e.ece * 100.0,
        e.loss
    );
    if let Some(p) = a.save_logits {
        logits.write_npy(&p).map_err(|err| crate::error::InputError::new(format!("--save-logits {}: cannot write: {err}", p.display())))?;
        println!("wrote logits {:?} to {}", logits.size(), p.display());
    }
    Ok(0)
}

pub(super) fn doctor() -> anyhow::Result<i32> {
    println!("harness {} (commit {})", env::harness_version(), env::git_commit());
    let ok = std::panic::catch_unwind(|| tch::Tensor::from_slice(&[1.0f32, 2.0]).sum(tch::Kind::Float).double_value(&[]));
    match ok {
        Ok(v) if v == 3.0 => {}
        _ => {
            eprintln!("error: libtorch is loaded but cannot run a tensor op; reinstall (see README)");
            return Ok(1);
        }
    }
    println!("libtorch {} at {}", env::torch_version(), env::torch_lib_dir().map(|p| p.display().to_string()).unwrap_or_else(|| "?".into()));
    let cuda_linked = env::torch_lib_dir().map(|d| d.join("libtorch_cuda.so")).filter(|p| p.exists()).is_some();
    let cuda_loaded = std::fs::read_to_string("/proc/self/maps").map(|m| m.contains("libtorch_cuda.so")).unwrap_or(false);
    println!(
        "libtorch_cuda: {}",
        if cuda_loaded {
            "loaded"
        } else if cuda_linked {
            "present but NOT loaded (CUDA disabled; check the link flags)"
        } else {
            "not in this libtorch (CPU build)"
        }
    );
    println!("CUDA available: {}", tch::Cuda::is_available());
    println!("CUDA devices: {}", tch::Cuda::device_count());
    for (i, n) in env::gpu_names().iter().enumerate() {
        println!("  cuda:{i}: {n}");
    }
    println!("cuDNN available: {}", tch::Cuda::cudnn_is_available());
    println!("intra-op threads: {}", tch::get_num_threads());
    println!("cores: {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    Ok(0)
}
