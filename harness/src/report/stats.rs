//! Seed statistics: mean, sample standard deviation, Student-t confidence intervals, Welch's
//! unequal-variance t-test for unpaired groups, and the paired t-test and Wilcoxon signed-rank
//! test for groups trained on the same seeds (same initialisation and batches, so the pairing
//! removes the seed's share of the spread). Seed spread in KD is about as large as the gains
//! papers claim, so every reported number carries its spread and every comparison its p-value.
//! Each test computes what scipy.stats computes (`ttest_ind(equal_var=False)`, `ttest_rel`,
//! `wilcoxon` with its defaults); `scripts/reference/stats_reference.py` prints the numbers the
//! tests compare with.

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Mean and sample standard deviation (ddof = 1) of one group's values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moments {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation; `None` for fewer than two values.
    pub std: Option<f64>,
}

impl Moments {
    pub fn of(xs: &[f64]) -> Moments {
        let n = xs.len();
        let mean = if n == 0 { f64::NAN } else { xs.iter().sum::<f64>() / n as f64 };
        let std = (n > 1).then(|| (xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64).sqrt());
        Moments { n, mean, std }
    }
}

/// Half-width of the two-sided `level` (e.g. 0.95) Student-t confidence interval of the mean:
/// t_{(1+level)/2, n−1} · s / √n. `None` for fewer than two values.
pub fn ci_half_width(n: usize, std: Option<f64>, level: f64) -> Option<f64> {
    let s = std?;
    if n < 2 {
        return None;
    }
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).ok()?.inverse_cdf((1.0 + level) / 2.0);
    Some(t * s / (n as f64).sqrt())
}

/// Result of a two-sided t-test of `a` against `b`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TTest {
    /// mean(a) − mean(b) (Welch), or the mean of the paired differences a_i − b_i.
    pub delta: f64,
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom, or n − 1 for the paired test.
    pub df: f64,
    pub p: f64,
}

/// Welch's test result (the unpaired [`TTest`]).
pub type Welch = TTest;

/// Two-sided p-value of a Student-t statistic.
fn t_p(t: f64, df: f64) -> Option<f64> {
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    Some((2.0 * (1.0 - dist.cdf(t.abs()))).clamp(0.0, 1.0))
}

/// Welch's t-test from two groups' moments (as scipy's `ttest_ind(a, b, equal_var=False)`).
/// `None` when either group has fewer than two values or both have zero spread.
pub fn welch(a: &Moments, b: &Moments) -> Option<Welch> {
    let (sa, sb) = (a.std?, b.std?);
    let (va, vb) = (sa * sa / a.n as f64, sb * sb / b.n as f64);
    let se2 = va + vb;
    let delta = a.mean - b.mean;
    if se2 <= 0.0 {
        return None;
    }
    let t = delta / se2.sqrt();
    let df = se2 * se2 / (va * va / (a.n - 1) as f64 + vb * vb / (b.n - 1) as f64);
    Some(TTest { delta, t, df, p: t_p(t, df)? })
}

/// Paired t-test on the differences a_i − b_i (as scipy's `ttest_rel(a, b)`). `None` for fewer
/// than two pairs, unequal lengths, or differences without spread (no test rather than p = 0).
pub fn paired_t(a: &[f64], b: &[f64]) -> Option<TTest> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let m = Moments::of(&d);
    let s = m.std?;
    if s <= 0.0 {
        return None;
    }
    let t = m.mean / (s / (m.n as f64).sqrt());
    let df = (m.n - 1) as f64;
    Some(TTest { delta: m.mean, t, df, p: t_p(t, df)? })
}

/// Result of the Wilcoxon signed-rank test on paired differences (two-sided).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignedRank {
    /// min(R⁺, R⁻), the statistic scipy reports.
    pub w: f64,
    /// Sum of the ranks of the positive differences.
    pub r_plus: f64,
    /// Non-zero differences (zeros are dropped, Wilcoxon's convention and scipy's default).
    pub n: usize,
    pub p: f64,
    /// Exact null distribution (all 2ⁿ sign flips) rather than the normal approximation.
    pub exact: bool,
}

/// Wilcoxon signed-rank test of the differences `d` (as scipy's `wilcoxon(d)` with its
/// defaults: zeros dropped, average ranks for ties, no continuity correction). scipy ≥ 1.15
/// decides by sample size: without ties or zeros the exact distribution up to 50 values; with
/// them, all sign flips up to 13 values (a permutation test that enumerates every outcome);
/// otherwise the normal approximation with the tie correction. The exact branch here counts
/// the sign-flip distribution of the (half-integer) ranks, which is both of scipy's exact cases.
/// `None` when every difference is zero.
pub fn wilcoxon(d: &[f64]) -> Option<SignedRank> {
    let nz: Vec<f64> = d.iter().copied().filter(|x| *x != 0.0).collect();
    let n = nz.len();
    if n == 0 || d.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let (ranks, ties) = average_ranks(&nz.iter().map(|x| x.abs()).collect::<Vec<_>>());
    let r_plus: f64 = nz.iter().zip(&ranks).filter(|(x, _)| **x > 0.0).map(|(_, r)| r).sum();
    let r_minus = (n * (n + 1)) as f64 / 2.0 - r_plus;
    let tied = ties.iter().any(|&t| t > 1);
    let exact = if !tied && n == d.len() { d.len() <= 50 } else { d.len() <= 13 };
    let p = if exact {
        signed_rank_exact_p(&ranks, r_plus)
    } else {
        let nf = n as f64;
        let mean = nf * (nf + 1.0) / 4.0;
        let tie_term: f64 = ties.iter().map(|&t| (t * t * t - t) as f64).sum();
        let se = ((nf * (nf + 1.0) * (2.0 * nf + 1.0) - tie_term / 2.0) / 24.0).sqrt();
        let z = (r_plus - mean) / se;
        let normal = Normal::new(0.0, 1.0).ok()?;
        (2.0 * normal.cdf(-z.abs())).clamp(0.0, 1.0)
    };
    Some(SignedRank { w: r_plus.min(r_minus), r_plus, n, p, exact })
}

/// Average ranks (1-based) of `x` and the sizes of its groups of equal values.
fn average_ranks(x: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
    let mut ranks = vec![0.0; x.len()];
    let mut ties = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        ties.push(j - i + 1);
        i = j + 1;
    }
    (ranks, ties)
}

/// Two-sided exact p-value of R⁺ under H0 (each sign equally likely): 2·min(P(R⁺ ≤ r),
/// P(R⁺ ≥ r)), clipped to 1. Ranks are half-integers, so sums are counted in halves.
fn signed_rank_exact_p(ranks: &[f64], r_plus: f64) -> f64 {
    let twice: Vec<usize> = ranks.iter().map(|r| (2.0 * r).round() as usize).collect();
    let total: usize = twice.iter().sum();
    // counts[s] = number of sign assignments whose doubled R⁺ is s.
    let mut counts = vec![0.0f64; total + 1];
    counts[0] = 1.0;
    for &r in &twice {
        for s in (r..=total).rev() {
            counts[s] += counts[s - r];
        }
    }
    let all: f64 = counts.iter().sum();
    let obs = (2.0 * r_plus).round() as usize;
    let le: f64 = counts[..=obs].iter().sum::<f64>() / all;
    let ge: f64 = counts[obs..].iter().sum::<f64>() / all;
    (2.0 * le.min(ge)).clamp(0.0, 1.0)
}

/// Fewest pairs for which the two-sided exact signed-rank test can reach p < `alpha` at all
/// (its smallest p is 2/2ⁿ): 6 for α = 0.05. Below it the test is not reported.
pub fn wilcoxon_min_pairs(alpha: f64) -> usize {
    (1..=64).find(|&n| 2.0 / 2f64.powi(n as i32) < alpha).unwrap_or(64)
}

/// How two groups of seeds were compared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Comparison {
    /// Same seeds on both sides: paired t-test on the `n` shared seeds, and the signed-rank
    /// test when `n` is large enough to reach significance.
    /// `delta`: mean of the per-seed differences.
    Paired { n: usize, delta: f64, t: Option<TTest>, wilcoxon: Option<SignedRank> },
    /// No (or one) shared seed: Welch's unequal-variance test on all seeds; `delta`: difference
    /// of the means.
    Welch { n_a: usize, n_b: usize, delta: f64, t: Option<TTest> },
}

impl Comparison {
    /// The test whose p-value decides significance.
    pub fn t(&self) -> Option<TTest> {
        match self {
            Comparison::Paired { t, .. } | Comparison::Welch { t, .. } => *t,
        }
    }
    /// The difference the test is about (also when there is no test).
    pub fn delta(&self) -> f64 {
        match self {
            Comparison::Paired { delta, .. } | Comparison::Welch { delta, .. } => *delta,
        }
    }
    /// Name as printed in tables.
    pub fn test_name(&self) -> &'static str {
        match self {
            Comparison::Paired { .. } => "paired t",
            Comparison::Welch { .. } => "Welch t",
        }
    }
}

/// Compares `a` with `b`, given as (seed, value) of their finished runs: paired when at least
/// two seeds appear on both sides (same seed → same initialisation and data order), else Welch.
pub fn compare(a: &[(u64, f64)], b: &[(u64, f64)], alpha: f64) -> Comparison {
    let mut pa = Vec::new();
    let mut pb = Vec::new();
    for (seed, x) in a {
        if let Some((_, y)) = b.iter().find(|(s, _)| s == seed) {
            pa.push(*x);
            pb.push(*y);
        }
    }
    if pa.len() >= 2 {
        let d: Vec<f64> = pa.iter().zip(&pb).map(|(x, y)| x - y).collect();
        let wilcoxon = (pa.len() >= wilcoxon_min_pairs(alpha)).then(|| wilcoxon(&d)).flatten();
        let delta = Moments::of(&d).mean;
        return Comparison::Paired { n: pa.len(), delta, t: paired_t(&pa, &pb), wilcoxon };
    }
    let va: Vec<f64> = a.iter().map(|p| p.1).collect();
    let vb: Vec<f64> = b.iter().map(|p| p.1).collect();
    let (ma, mb) = (Moments::of(&va), Moments::of(&vb));
    Comparison::Welch { n_a: va.len(), n_b: vb.len(), delta: ma.mean - mb.mean, t: welch(&ma, &mb) }
}

/// Standard error of the difference of two means, √(s_a²/n_a + s_b²/n_b).
pub fn se_diff(a: &Moments, b: &Moments) -> Option<f64> {
    let (sa, sb) = (a.std?, b.std?);
    Some((sa * sa / a.n as f64 + sb * sb / b.n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (a, b): the same seeds under two methods; the cases of `scripts/reference/stats_reference.py`.
    const PAIRED: [(&[f64], &[f64]); 3] = [
        (&[75.0, 76.0, 77.5], &[70.0, 72.0, 74.0]),
        (&[71.2, 70.8, 71.5, 70.9, 71.1], &[70.1, 71.0, 69.8, 70.5, 70.7]),
        (&[76.1, 75.4, 76.9, 75.8, 76.3, 75.9, 76.6], &[75.2, 75.6, 76.0, 75.1, 75.9, 75.0, 76.2]),
    ];
    /// scipy 1.17.1 `ttest_ind(a, b, equal_var=False)`: (t, p, df).
    const WELCH: [(f64, f64, f64); 3] = [
        (3.054236108907634, 0.04746357845155669, 3.3688555347091933),
        (2.7668807598219596, 0.030540676519243436, 6.383035308114901),
        (2.170368745323498, 0.050829412797938574, 11.962569483779923),
    ];
    /// scipy 1.17.1 `ttest_rel(a, b)`: (t, p, df).
    const REL: [(f64, f64, f64); 3] =
        [(9.44911182523068, 0.01101528483845556, 2.0), (2.0749458721709955, 0.10663119896125296, 4.0), (3.713906763541054, 0.009923617011047393, 6.0)];
    /// scipy 1.17.1 `wilcoxon(d)`: (statistic, p), for [`wilcoxon_cases`].
    const SIGNED_RANK: [(f64, f64); 7] = [
        (1.0, 0.0625),
        (8.5, 0.40625),
        (5.0, 0.15625),
        (19.0, 0.010960575459277757),
        (67.0, 0.2580932481894861),
        (158.0, 0.12935307621955872),
        (602.0, 0.02121244381192546),
    ];
    /// scipy 1.17.1 `wilcoxon(a - b)` of [`PAIRED`].
    const SIGNED_RANK_PAIRED: [(f64, f64); 3] = [(0.0, 0.25), (1.0, 0.125), (1.0, 0.03125)];

    /// The script's cases, in the script's order of floating-point operations.
    fn wilcoxon_cases() -> Vec<(Vec<f64>, bool)> {
        let spread = |n: i64| (0..n).map(|i| ((i * 37) % 101 - 40) as f64 / 10.0 + 0.001 * i as f64).collect::<Vec<_>>();
        vec![
            (vec![0.9, -0.2, 0.7, 0.5, 1.2, 0.3], true),                                                      // no ties: exact
            (vec![0.9, -0.4, 0.9, 1.6, 0.4, 0.3, -1.1], true),                                                // ties, n ≤ 13: all sign flips
            (vec![0.5, 0.0, -0.25, 1.5, 0.75, 2.0, -1.0, 1.25], true),                                        // a zero, n ≤ 13: all sign flips
            (vec![1.0, -2.0, 3.0, 1.0, 2.0, -1.0, 4.0, 5.0, 2.0, 3.0, -3.0, 6.0, 1.0, 7.0, 2.0, 8.0], false), // ties, n > 13
            ((0..20).map(|i| ((i * 7) % 11 - 4) as f64).collect(), false),                                    // ties and zeros, n > 13
            (spread(30), true),                                                                               // no ties, n ≤ 50: exact
            (spread(60), false),                                                                              // n > 50: normal approximation
        ]
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn welch_and_paired_t_match_scipy() {
        for (((a, b), w), r) in PAIRED.iter().zip(WELCH).zip(REL) {
            let got = welch(&Moments::of(a), &Moments::of(b)).unwrap();
            assert!(close(got.t, w.0, 1e-9) && close(got.p, w.1, 1e-8) && close(got.df, w.2, 1e-9), "welch {got:?} vs {w:?}");
            let got = paired_t(a, b).unwrap();
            assert!(close(got.t, r.0, 1e-9) && close(got.p, r.1, 1e-8) && close(got.df, r.2, 0.0), "ttest_rel {got:?} vs {r:?}");
            assert!(close(got.delta, Moments::of(a).mean - Moments::of(b).mean, 1e-9));
        }
        // Identical differences have no spread: no test rather than p = 0.
        assert!(paired_t(&[2.0, 3.0, 4.0], &[1.0, 2.0, 3.0]).is_none());
        assert!(paired_t(&[1.0], &[0.0]).is_none());
        assert!(paired_t(&[1.0, 2.0], &[0.0]).is_none());
    }

    #[test]
    fn signed_rank_matches_scipy() {
        for ((d, exact), (w, p)) in wilcoxon_cases().into_iter().zip(SIGNED_RANK) {
            let got = wilcoxon(&d).unwrap();
            assert_eq!(got.exact, exact, "n = {}: exact distribution or normal approximation, as scipy picks", d.len());
            assert!(close(got.w, w, 1e-9) && close(got.p, p, 1e-9), "n = {}: {got:?} vs scipy ({w}, {p})", d.len());
        }
        for ((a, b), (w, p)) in PAIRED.iter().zip(SIGNED_RANK_PAIRED) {
            let d: Vec<f64> = a.iter().zip(b.iter()).map(|(x, y)| x - y).collect();
            let got = wilcoxon(&d).unwrap();
            assert!(close(got.w, w, 1e-9) && close(got.p, p, 1e-9), "{got:?} vs scipy ({w}, {p})");
        }
        assert!(wilcoxon(&[0.0, 0.0]).is_none());
        assert!(wilcoxon(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn shared_seeds_are_compared_paired_and_others_with_welch() {
        let seeded = |v: &[f64], from: u64| v.iter().enumerate().map(|(i, x)| (from + i as u64, *x)).collect::<Vec<_>>();
        let (a, b) = PAIRED[2];
        match compare(&seeded(a, 0), &seeded(b, 0), 0.05) {
            Comparison::Paired { n, t, wilcoxon, .. } => {
                assert_eq!(n, 7);
                assert!(close(t.unwrap().p, REL[2].1, 1e-8));
                assert!(close(wilcoxon.unwrap().p, SIGNED_RANK_PAIRED[2].1, 1e-9), "7 pairs allow the signed-rank test");
            }
            other => panic!("same seeds must be paired: {other:?}"),
        }
        // Three pairs: paired t, but no signed-rank test (its smallest p would be 0.25).
        let (a, b) = PAIRED[0];
        match compare(&seeded(a, 0), &seeded(b, 0), 0.05) {
            Comparison::Paired { n: 3, t: Some(t), wilcoxon: None, delta } => assert!(close(t.p, REL[0].1, 1e-8) && close(delta, t.delta, 1e-12)),
            other => panic!("{other:?}"),
        }
        // Disjoint seeds: Welch on all values.
        match compare(&seeded(a, 0), &seeded(b, 10), 0.05) {
            Comparison::Welch { n_a: 3, n_b: 3, t: Some(t), .. } => assert!(close(t.p, WELCH[0].1, 1e-8)),
            other => panic!("disjoint seeds must use Welch: {other:?}"),
        }
        // Only one shared seed: not enough to pair.
        assert!(matches!(compare(&seeded(a, 0), &seeded(b, 2), 0.05), Comparison::Welch { .. }));
        assert_eq!(wilcoxon_min_pairs(0.05), 6);
        assert_eq!(wilcoxon_min_pairs(0.01), 8);
    }
}
