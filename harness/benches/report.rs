//! Reporting speed (`cargo bench --bench report`): 100,000 synthetic finished runs
//! (10,000 groups × 10 seeds: 50 teacher→student pairs × 20 methods × 10 settings) through the
//! Polars frames, seed aggregation, intervals and the paper table. Loading from disk is not
//! part of it (that is file-system time).

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use harness::distill::metrics::{OutputStats, Reliability};
use harness::report::{self, Record};
use harness::store::Summary;
use harness::suite::{DataRef, ParamValue, Recipe, Role, RunSpec, TeacherRef};

fn records(n_groups: usize, seeds: usize) -> Vec<Record> {
    let mut out = Vec::with_capacity(n_groups * seeds);
    for g in 0..n_groups {
        let (pair, method, setting) = (g / 200, (g / 10) % 20, g % 10);
        for seed in 0..seeds {
            let mut params = BTreeMap::new();
            params.insert("tau".to_string(), ParamValue::Float(1.0 + setting as f64));
            let spec = RunSpec {
                id: format!("{g:08x}{seed:08x}"),
                suite: "bench".into(),
                role: Role::Student,
                dataset: DataRef { name: "cifar100".into(), fingerprint: "x".into() },
                model: format!("student{}", pair % 10),
                method: format!("m{method}"),
                params,
                train: Recipe::default(),
                seed: seed as u64,
                teachers: vec![TeacherRef::Checkpoint { path: "t".into(), model: format!("teacher{}", pair / 10), hash: "h".into() }],
                peers: vec![],
                save_model: false,
                exclusive: false,
                prune: None,
                student_from_teacher: false,
            };
            let acc = 70.0 + 0.1 * ((g * 7 + seed * 13) % 50) as f64; // percent, as summaries hold them
            let summary = Summary {
                id: spec.id.clone(),
                epochs: 240,
                best_top1: acc + 0.2,
                best_epoch: 230,
                last_top1: acc,
                last_top5: 92.0,
                last_ece: 5.0,
                last_test_loss: 1.1,
                agreement: Some(80.0),
                pred_kl: Some(0.3),
                teacher_top1: Some(79.0),
                output_stats: OutputStats::default(),
                reliability: Reliability::default(),
                peers_last_top1: vec![],
                peers_best_top1: vec![],
                param_count: 1_000_000,
                wall_time_s: 3600.0,
                images_per_s: 5000.0,
                finished_unix: 0,
                pruned: None,
                student_widths: None,
            };
            let config = report::load::flatten(&spec);
            out.push(Record {
                spec,
                state: "done".into(),
                detail: String::new(),
                summary: Some(summary),
                group: format!("g{g:07}"),
                config,
                env: BTreeMap::new(),
                epochs: (vec![], vec![]),
            });
        }
    }
    out
}

fn report_100k(c: &mut Criterion) {
    let recs = records(10_000, 10);
    let opts = report::Options { rows: vec!["method".into(), "param.tau".into()], ..Default::default() };
    let mut g = c.benchmark_group("report");
    g.sample_size(10);
    g.bench_function("aggregate_100k_runs", |b| b.iter(|| report::Report::build("bench", recs.clone()).expect("report builds")));
    let r = report::Report::build("bench", recs.clone()).expect("report builds");
    g.bench_function("paper_table_100k_runs", |b| b.iter(|| report::table::main(&r, &opts, &[]).expect("table")));
    g.finish();
}

criterion_group!(benches, report_100k);
criterion_main!(benches);
