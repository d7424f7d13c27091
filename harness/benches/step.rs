//! Criterion benchmarks for later performance work (`cargo bench --bench step`):
//! one KD training step, resnet32x4 teacher → resnet8x4 student, batch 64, CPU, 100 classes;
//! the on-device augmentation of a batch.

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
            opt.backward_step(&total);
        })
    });
    g.finish();
}

fn augment(c: &mut Criterion) {
    let x = Tensor::randint(256, [64, 3, 32, 32], (Kind::Uint8, Device::Cpu));
    c.bench_function("crop_flip_bs64_32x32", |b| b.iter(|| harness::data::crop_flip(&x, 4, true)));
}

criterion_group!(benches, kd_step, augment);
criterion_main!(benches);
