//! Evaluation metrics over a whole split (methods-logit.md §11, §12): top-k accuracy,
//! ECE with 15 bins, teacher–student top-1 agreement and predictive KL(teacher‖student).

use tch::{Kind, Tensor};

pub use crate::store::{OutputStats, Reliability};

/// Fraction of rows whose label is among the `k` largest logits (k clipped to C).
pub fn topk_accuracy(logits: &Tensor, labels: &Tensor, k: i64) -> f64 {
    let c = logits.size()[1];
    let (_, idx) = logits.topk(k.min(c), 1, true, true);
    let hit = idx.eq_tensor(&labels.unsqueeze(1)).any_dim(1, false).to_kind(Kind::Float);
    hit.mean(Kind::Float).double_value(&[])
}

pub fn reliability(logits: &Tensor, labels: &Tensor, n_bins: i64) -> Reliability {
    if logits.size()[0] == 0 {
        return Reliability { count: vec![0; n_bins as usize], conf_sum: vec![0.0; n_bins as usize], correct: vec![0.0; n_bins as usize] };
    }
    let probs = logits.to_kind(Kind::Double).softmax(1, Kind::Double);
    let (conf, pred) = probs.max_dim(1, false);
    let acc = pred.eq_tensor(labels).to_kind(Kind::Double);
    // A non-finite confidence (NaN logits) goes to the first bin rather than to a garbage index.
    let bin = (&conf * n_bins as f64).ceil().g_sub_scalar(1.0).nan_to_num(0.0, None, None).clamp(0.0, (n_bins - 1) as f64).to_kind(Kind::Int64);
    let zeros = Tensor::zeros([n_bins], (Kind::Double, logits.device()));
    let vec = |t: Tensor| Vec::<f64>::try_from(t.to_device(tch::Device::Cpu)).unwrap_or_default();
    let count = vec(zeros.index_add(0, &bin, &conf.ones_like())).into_iter().map(|c| c.round() as u64).collect();
    Reliability { count, conf_sum: vec(zeros.index_add(0, &bin, &conf)), correct: vec(zeros.index_add(0, &bin, &acc)) }
}

/// Expected calibration error with `n_bins` bins, as a fraction.
pub fn ece(logits: &Tensor, labels: &Tensor, n_bins: i64) -> f64 {
    reliability(logits, labels, n_bins).ece()
}

/// Fraction of rows where student and teacher argmax agree (ties: first index, as torch).
pub fn agreement(student: &Tensor, teacher: &Tensor) -> f64 {
    student.argmax(1, false).eq_tensor(&teacher.argmax(1, false)).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

/// Mean over rows of KL(softmax(teacher) ‖ softmax(student)) at T = 1, in nats.
pub fn predictive_kl(student: &Tensor, teacher: &Tensor) -> f64 {
    let ls = student.to_kind(Kind::Double).log_softmax(1, Kind::Double);
    let lt = teacher.to_kind(Kind::Double).log_softmax(1, Kind::Double);
    (lt.exp() * (&lt - ls)).sum_dim_intlist(1, false, Kind::Double).mean(Kind::Double).double_value(&[])
}

pub fn output_stats(logits: &Tensor, labels: &Tensor) -> OutputStats {
    let k = Kind::Double;
    let lp = logits.to_kind(k).log_softmax(1, k);
    let p = lp.exp();
    let entropy = -(&p * &lp).sum_dim_intlist(1, false, k).mean(k).double_value(&[]);
    let c = logits.size()[1];
    let pt = p.gather(1, &labels.unsqueeze(1), false);
    let nontarget_mass = 1.0 - pt.mean(k).double_value(&[]);
    // Class-conditional means (classes absent from `labels` are left out).
    let oh = labels.one_hot(c).to_kind(k);
    let counts = oh.sum_dim_intlist(0, false, k);
    let present = counts.gt(0.0);
    let m = oh.tr().matmul(&p) / counts.clamp_min(1.0).unsqueeze(1);
    let m = m.index_select(0, &present.nonzero().squeeze_dim(1));
    let n = m.size()[0];
    let class_similarity = if n < 2 {
        0.0
    } else {
        let u = &m / m.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
        let g = u.matmul(&u.tr());
        ((g.sum(k) - g.trace()) / (n * (n - 1)) as f64).double_value(&[])
    };
    OutputStats { entropy, nontarget_mass, class_similarity }
}

/// Mean cross-entropy of logits against labels.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> f64 {
    super::hard_ce(&logits.to_kind(Kind::Double), labels).double_value(&[])
}
