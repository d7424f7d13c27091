//! What a run records: per-batch sums kept on the device (one host sync per epoch), the
//! per-epoch rows of `metrics.csv`, and the running bests that end up in `summary.json`.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::Eval;
use crate::store::RunDir;

/// Sums of one epoch's training steps, on the device.
pub struct EpochSums {
    names: Vec<&'static str>,
    terms: Vec<Tensor>,
    total: Tensor,
    correct: Tensor,
    pub seen: i64,
    /// Seconds spent on this run's steps (plus its share of the cohort's data and teacher time).
    pub seconds: f64,
}

impl EpochSums {
    pub fn new(device: Device) -> EpochSums {
        EpochSums {
            names: vec![],
            terms: vec![],
            total: Tensor::zeros([], (Kind::Float, device)),
            correct: Tensor::zeros([], (Kind::Int64, device)),
            seen: 0,
            seconds: 0.0,
        }
    }

    /// Adds one step: its named loss terms, their sum, and the student's logits against `y`.
    pub fn add(&mut self, terms: &[(&'static str, Tensor)], total: &Tensor, logits: &Tensor, y: &Tensor) {
        let bs = y.size()[0];
        if self.names.is_empty() {
            self.names = terms.iter().map(|(n, _)| *n).collect();
            self.terms = terms.iter().map(|_| Tensor::zeros([], (Kind::Float, self.total.device()))).collect();
        }
        for (s, (_, t)) in self.terms.iter_mut().zip(terms) {
            *s += t.detach().to_kind(Kind::Float) * bs as f64;
        }
        self.total += total.detach().to_kind(Kind::Float) * bs as f64;
        self.correct += logits.detach().argmax(1, false).eq_tensor(y).sum(Kind::Int64);
        self.seen += bs;
    }

    /// Adds the loss terms of an online peer's update to the run's record: its terms by name
    /// (after the run's network's; a term a peer has not produced yet joins at its first
    /// update) and its total into the run's training loss.
    pub fn add_partner(&mut self, terms: &[(&'static str, Tensor)], total: &Tensor, y: &Tensor) {
        let bs = y.size()[0] as f64;
        for (name, t) in terms {
            let i = match self.names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    self.names.push(name);
                    self.terms.push(Tensor::zeros([], (Kind::Float, self.total.device())));
                    self.names.len() - 1
                }
            };
            self.terms[i] += t.detach().to_kind(Kind::Float) * bs;
        }
        self.total += total.detach().to_kind(Kind::Float) * bs;
    }

    /// (mean total loss, mean of each term, training top-1): the epoch's one host sync.
    pub fn means(&self) -> (f64, Vec<(&'static str, f64)>, f64) {
        let n = self.seen.max(1) as f64;
        let terms = self.names.iter().zip(&self.terms).map(|(name, s)| (*name, s.double_value(&[]) / n)).collect();
        (self.total.double_value(&[]) / n, terms, self.correct.int64_value(&[]) as f64 / n)
    }
}

/// A run's record across epochs; saved in `resume.json` after every epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub best_top1: f64,
    pub best_epoch: u32,
    /// Last epoch's test loss, top-1, top-5, ECE (`None` for non-finite values).
    pub last: [Option<f64>; 4],
    pub agreement: Option<f64>,
    pub pred_kl: Option<f64>,
    pub train_time: f64,
    pub images: i64,
    pub elapsed: f64,
    #[serde(default)]
    pub peers_best: Vec<f64>,
}

fn fin(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// One epoch's evaluated results, ready to be recorded.
pub struct EpochResult<'a> {
    pub epoch: u32,
    pub lr: f64,
    pub train_loss: f64,
    pub terms: &'a [(&'static str, f64)],
    pub train_top1: f64,
    pub test: Eval,
    pub agreement: Option<f64>,
    pub pred_kl: Option<f64>,
    pub seconds: f64,
    pub seen: i64,
    pub peer_top1: &'a [f64],
    pub stats: &'a [(&'static str, f64)],
    /// fp16: optimiser steps skipped for non-finite gradients this epoch.
    pub skipped_steps: Option<u64>,
}

impl History {
    pub fn new() -> History {
        History { best_top1: f64::NEG_INFINITY, last: [None, Some(0.0), Some(0.0), Some(0.0)], ..Default::default() }
    }

    /// The last epoch's test metrics.
    pub fn last_eval(&self) -> Eval {
        let l = &self.last;
        Eval { loss: l[0].unwrap_or(f64::NAN), top1: l[1].unwrap_or(0.0), top5: l[2].unwrap_or(0.0), ece: l[3].unwrap_or(0.0) }
    }

    /// Records an epoch: bests, last values, and its `metrics.csv` row (the header is fixed by
    /// the first epoch recorded).
    pub fn record(&mut self, e: &EpochResult<'_>) {
        let t = &e.test;
        self.last = [fin(t.loss), fin(t.top1), fin(t.top5), fin(t.ece)];
        if t.top1 > self.best_top1 {
            self.best_top1 = t.top1;
            self.best_epoch = e.epoch;
        }
        if e.agreement.is_some() {
            self.agreement = e.agreement;
            self.pred_kl = e.pred_kl;
        }
        for (k, v) in e.peer_top1.iter().enumerate() {
            if self.peers_best.len() <= k {
                self.peers_best.push(*v);
            }
            self.peers_best[k] = self.peers_best[k].max(*v);
        }
        self.train_time += e.seconds;
        self.images += e.seen;
        if self.header.is_empty() {
            self.header = ["epoch", "lr", "train_loss"].iter().map(|s| s.to_string()).collect();
            self.header.extend(e.terms.iter().map(|(n, _)| format!("train_{n}")));
            self.header.extend(
                ["train_top1", "test_loss", "test_top1", "test_top5", "test_ece", "agreement", "pred_kl", "epoch_time_s", "images_per_s"]
                    .iter()
                    .map(|s| s.to_string()),
            );
            self.header.extend((0..e.peer_top1.len()).map(|k| format!("peer{k}_top1")));
            self.header.extend(e.stats.iter().map(|(n, _)| n.to_string()));
            if e.skipped_steps.is_some() {
                self.header.push("skipped_steps".into());
            }
        }
        // Accuracies and ECE in percent in the file (results schema 2), fractions in memory.
        let opt = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
        let mut row = vec![e.epoch.to_string(), format!("{}", e.lr), format!("{}", e.train_loss)];
        self.add_term_columns(e.terms);
        // Terms by the header's names: a term absent from an epoch (a paused peer) is 0 there,
        // never a shifted column.
        let names = self.header.iter().skip(3).take_while(|h| *h != "train_top1").map(|h| h.trim_start_matches("train_"));
        row.extend(names.map(|n| e.terms.iter().find(|(t, _)| *t == n).map_or(0.0, |(_, v)| *v)).map(|v| format!("{v}")));
        row.extend([
            format!("{}", pct(e.train_top1)),
            format!("{}", t.loss),
            format!("{}", pct(t.top1)),
            format!("{}", pct(t.top5)),
            format!("{}", pct(t.ece)),
            opt(e.agreement.map(pct)),
            opt(e.pred_kl),
            format!("{:.3}", e.seconds),
            format!("{:.1}", images_per_s(e.seen, e.seconds)),
        ]);
        row.extend(e.peer_top1.iter().map(|v| format!("{}", pct(*v))));
        row.extend(e.stats.iter().map(|(_, v)| format!("{v}")));
        row.extend(e.skipped_steps.map(|k| k.to_string()));
        self.rows.push(row);
    }

    /// A loss term first seen after the first epoch (SwitOKD's teacher, paused through epoch 1)
    /// gets its column at the end of the term columns, 0 in the earlier rows: an epoch's term is
    /// its mean over the epoch's samples, and a term that never occurred contributed nothing.
    fn add_term_columns(&mut self, terms: &[(&'static str, f64)]) {
        for (n, _) in terms {
            let col = format!("train_{n}");
            let end = self.header.iter().position(|h| h == "train_top1").unwrap_or(self.header.len());
            if self.header[3.min(end)..end].contains(&col) {
                continue;
            }
            self.header.insert(end, col);
            for r in &mut self.rows {
                if r.len() >= end {
                    r.insert(end, "0".into());
                }
            }
        }
    }

    /// Writes `metrics.csv` (atomically) from the rows so far.
    pub fn write_csv(&self, run: &RunDir) -> anyhow::Result<()> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&self.header)?;
        for r in &self.rows {
            w.write_record(r)?;
        }
        let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?;
        crate::store::write_atomic(&run.metrics(), &bytes)
    }
}

/// A fraction in percent, as every results file holds accuracies (schema 2).
pub fn pct(x: f64) -> f64 {
    100.0 * x
}

pub fn images_per_s(images: i64, seconds: f64) -> f64 {
    images as f64 / seconds.max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: u32, terms: &[(&'static str, f64)]) -> EpochResult<'static> {
        let terms: &'static [(&'static str, f64)] = Box::leak(terms.to_vec().into_boxed_slice());
        EpochResult {
            epoch: e,
            lr: 0.1,
            train_loss: terms.iter().map(|t| t.1).sum(),
            terms,
            train_top1: 0.5,
            test: super::super::Eval { loss: 1.0, top1: 0.5, top5: 0.9, ece: 0.1 },
            agreement: None,
            pred_kl: None,
            seconds: 1.0,
            seen: 10,
            peer_top1: &[0.4],
            stats: &[],
            skipped_steps: None,
        }
    }

    /// A term that appears only from epoch 2 gets its own column (0 in epoch 1); one missing
    /// from an epoch is 0 there; no value ever lands under another column's name.
    #[test]
    fn terms_are_written_by_name_whenever_they_first_appear() {
        let mut h = History::new();
        h.record(&epoch(1, &[("ce", 1.0), ("kl", 2.0)]));
        h.record(&epoch(2, &[("ce", 3.0), ("kl", 4.0), ("teacher_ce", 5.0)]));
        h.record(&epoch(3, &[("ce", 6.0), ("kl", 7.0)]));
        let col = |name: &str| {
            let j = h.header.iter().position(|c| c == name).unwrap_or_else(|| panic!("no {name} in {:?}", h.header));
            h.rows.iter().map(|r| r[j].clone()).collect::<Vec<_>>()
        };
        assert!(h.rows.iter().all(|r| r.len() == h.header.len()));
        assert_eq!(col("train_ce"), ["1", "3", "6"]);
        assert_eq!(col("train_kl"), ["2", "4", "7"]);
        assert_eq!(col("train_teacher_ce"), ["0", "5", "0"]);
        assert_eq!(col("train_top1"), ["50", "50", "50"]);
        assert_eq!(col("peer0_top1"), ["40", "40", "40"]);
    }
}
