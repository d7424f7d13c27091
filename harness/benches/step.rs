//! Criterion micro-benchmarks (`cargo bench --bench step`), CPU, CIFAR-100 shapes, batch 64:
//! one KD training step (resnet32x4 teacher → resnet8x4 student), every registered loss
//! (forward + backward on the real taps of those two networks), the on-device augmentation of a
//! batch, and writing a checkpoint.

use criterion::{Criterion, criterion_group, criterion_main};
use harness::distill;
use harness::models::{self, ModelCfg};
use tch::{Device, Kind, Tensor, nn};

fn kd_step(c: &mut Criterion) {
    tch::manual_seed(0);
    let cfg = ModelCfg { in_channels: 3, num_classes: 100 };
    let tvs = nn::VarStore::new(Device::Cpu);
    let teacher = (models::find("resnet32x4").expect("registered").build)(&tvs.root(), cfg);
    let svs = nn::VarStore::new(Device::Cpu);
    let student = (models::find("resnet8x4").expect("registered").build)(&svs.root(), cfg);
    let mut opt = harness::train::sgd::Sgd::new(&svs, 0.05, 0.9, 5e-4, false);
    let info = distill::find("kd").expect("kd");
    let mut kd = info.instantiate(&info.defaults()).expect("kd builds");
    let x = Tensor::randn([64, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(100, [64], (Kind::Int64, Device::Cpu));
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    g.bench_function("kd_resnet32x4_to_resnet8x4_bs64_cpu", |b| {
        b.iter(|| {
            let t = tch::no_grad(|| teacher.forward(&x, false));
            let s = student.forward(&x, true);
            let teachers = [t];
            let step = distill::Step::new(&s, &teachers, &y, 1);
            let terms = kd.losses(&step).expect("losses");
            let total = terms.iter().map(|(_, t)| t.shallow_clone()).reduce(|a, b| a + b).expect("terms");
            opt.backward_step(&total).expect("step");
        })
    });
    g.finish();
}

fn augment(c: &mut Criterion) {
    let x = Tensor::randint(256, [64, 3, 32, 32], (Kind::Uint8, Device::Cpu));
    c.bench_function("crop_flip_bs64_32x32", |b| b.iter(|| harness::data::crop_flip(&x, 4, true)));
}

/// Detached copies of a forward's outputs that require grad: the loss's backward stops there.
fn leaf(o: &models::Output) -> models::Output {
    let l = |t: &Tensor| t.detach().set_requires_grad(true);
    models::Output { logits: l(&o.logits), feats: o.feats.iter().map(l).collect(), preact: o.preact.iter().map(l).collect(), pooled: l(&o.pooled) }
}

fn losses(c: &mut Criterion) {
    tch::manual_seed(0);
    let cfg = ModelCfg { in_channels: 3, num_classes: 100 };
    let (tvs, svs) = (nn::VarStore::new(Device::Cpu), nn::VarStore::new(Device::Cpu));
    let teacher = (models::find("resnet32x4").expect("registered").build)(&tvs.root(), cfg);
    let student = (models::find("resnet8x4").expect("registered").build)(&svs.root(), cfg);
    let x = Tensor::randn([64, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(100, [64], (Kind::Int64, Device::Cpu));
    let idx = Tensor::arange(64, (Kind::Int64, Device::Cpu));
    let train_labels = Tensor::randint(100, [50_000], (Kind::Int64, Device::Cpu));
    let (s, t) = tch::no_grad(|| (student.forward(&x, true), teacher.forward(&x, false)));
    let t2 = tch::no_grad(|| teacher.forward(&x.flip([3]), false));
    let mut g = c.benchmark_group("loss_fwd_bwd");
    g.sample_size(10);
    for info in distill::REGISTRY {
        let teachers: Vec<models::Output> = match info.teachers {
            distill::Teachers::None | distill::Teachers::Peers => vec![],
            distill::Teachers::One => vec![leaf(&t)],
            distill::Teachers::Many => vec![leaf(&t), leaf(&t2)],
        };
        let peers: Vec<models::Output> = if matches!(info.teachers, distill::Teachers::Peers) { vec![leaf(&t)] } else { vec![] };
        let Ok(mut m) = info.instantiate(&info.defaults()) else { continue };
        let avs = nn::VarStore::new(Device::Cpu);
        m.set_train_labels(&train_labels);
        m.set_models("resnet8x4", &["resnet32x4".to_string()], cfg);
        if m.init_modules(&avs.root(), &s, &teachers).is_err() || m.dense_votes().is_some() {
            eprintln!("{}: skipped (needs inputs this benchmark does not build)", info.name);
            continue;
        }
        let soft = y.one_hot(100).to_kind(Kind::Float);
        g.bench_function(info.name, |b| {
            b.iter(|| {
                let st = leaf(&s);
                let step = distill::Step {
                    student: &st,
                    teachers: &teachers,
                    partners: &peers,
                    labels: &y,
                    soft_targets: Some(&soft),
                    dense_argmax: None,
                    indices: Some(&idx),
                    label_smoothing: 0.0,
                    epoch: 240,
                };
                let terms = m.losses(&step).expect("losses");
                let total = terms.iter().map(|(_, t)| t.shallow_clone()).reduce(|a, b| a + b).expect("terms");
                total.backward();
            })
        });
    }
    g.finish();
}

fn checkpoint_write(c: &mut Criterion) {
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = (models::find("resnet32x4").expect("registered").build)(&vs.root(), ModelCfg { in_channels: 3, num_classes: 100 });
    let dir = std::env::temp_dir().join(format!("kd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    c.bench_function("checkpoint_write_resnet32x4", |b| b.iter(|| models::checkpoint::save_atomic(&vs, &dir.join("m.safetensors")).expect("saved")));
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, kd_step, augment, losses, checkpoint_write);
criterion_main!(benches);
