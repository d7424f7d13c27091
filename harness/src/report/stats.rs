//! Seed statistics: mean, sample standard deviation, Student-t confidence intervals and
//! Welch's unequal-variance t-test. Seed spread in KD is about as large as the gains papers
//! claim, so every reported number carries its spread and every comparison its p-value.

use statrs::distribution::{ContinuousCDF, StudentsT};

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

/// Result of Welch's t-test of `a` against `b` (two-sided).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Welch {
    /// mean(a) − mean(b).
    pub delta: f64,
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    pub p: f64,
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
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    let p = (2.0 * (1.0 - dist.cdf(t.abs()))).clamp(0.0, 1.0);
    Some(Welch { delta, t, df, p })
}

/// Standard error of the difference of two means, √(s_a²/n_a + s_b²/n_b).
pub fn se_diff(a: &Moments, b: &Moments) -> Option<f64> {
    let (sa, sb) = (a.std?, b.std?);
    Some((sa * sa / a.n as f64 + sb * sb / b.n as f64).sqrt())
}
