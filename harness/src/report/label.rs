//! Names for plot legends and table rows: a method and only the settings that tell the shown
//! groups apart, written with the papers' symbols (τ, β, α), never config paths or placeholders
//! for settings a group does not have.

use std::collections::BTreeSet;

use super::{Group, Report};

/// Config columns never printed as a setting: the seed (groups are over seeds), the role, the
/// method (always printed first), and columns that repeat another (`pair` = teacher + model).
fn hidden(k: &str) -> bool {
    matches!(k, "seed" | "teacher.seed" | "role" | "method" | "pair" | "dataset" | "teacher.model" | "teacher.role")
}

/// The papers' symbol for a method parameter (the registry's `param.*` names).
fn param_symbol(p: &str) -> Option<&'static str> {
    Some(match p {
        "tau" => "τ",
        "beta" => "β",
        "alpha" => "α",
        "gamma" => "γ",
        "lambda" => "λ",
        "omega" => "ω",
        "eps" => "ε",
        "mu" => "μ",
        "nce_t" => "τ_NCE",
        "nce_m" => "μ_NCE",
        "mix_alpha" => "α_mix",
        "ce_weight" => "w_CE",
        "kd_weight" => "w_KD",
        "peer_lr" => "peer lr",
        _ => return None,
    })
}

/// How a config column is named in a legend: `param.tau` → `τ`, `train.lr` → `lr`,
/// `teacher.train.epochs` → `teacher epochs`, `teacher` → `teacher`.
pub fn symbol(key: &str) -> String {
    if let Some(t) = key.strip_prefix("teacher.") {
        return format!("teacher {}", symbol(t));
    }
    if let Some(p) = key.strip_prefix("param.") {
        return param_symbol(p).map(str::to_string).unwrap_or_else(|| p.replace('_', " "));
    }
    let k = key.strip_prefix("train.").unwrap_or(key);
    k.replace('_', " ")
}

/// `symbol=value` for one setting of a group; booleans read as the setting's name or `no …`.
fn setting(key: &str, v: &super::Cell) -> String {
    match v {
        super::Cell::B(true) => symbol(key),
        super::Cell::B(false) => format!("no {}", symbol(key)),
        super::Cell::S(s) if key == "teacher" || key == "model" => s.clone(),
        _ => format!("{}={v}", symbol(key)),
    }
}

/// Per group, the settings that differ among `groups`: columns that take at least two values
/// among the groups that have them (method parameters: among the groups of that method). A column a group lacks (a teacher-free baseline has no
/// `teacher.*`, `ce` has no τ) is left out of its label rather than printed as a placeholder.
pub fn differing(r: &Report, groups: &[&Group]) -> Vec<Vec<String>> {
    differing_in(r, groups, |_| true)
}

/// [`differing`] over the columns `keep` accepts (e.g. no teacher columns where the teacher is
/// the plot's x axis).
pub fn differing_in(r: &Report, groups: &[&Group], keep: impl Fn(&str) -> bool) -> Vec<Vec<String>> {
    let keys: BTreeSet<&String> = groups.iter().flat_map(|g| r.head(g).config.keys()).filter(|k| !hidden(k) && keep(k)).collect();
    // An empty text cell (`teacher` of a teacher-free run, `peers` of a single network) is absent.
    let get = |g: &Group, k: &str| r.head(g).config.get(k).filter(|v| !matches!(v, super::Cell::S(s) if s.is_empty()));
    // Method parameters count as differing only among groups of the same method (kd's w_CE = 0.1
    // next to dkd's 1 is what the method names already say); other columns among all groups.
    let varies = |k: &str, method: Option<&str>| {
        let values: BTreeSet<String> =
            groups.iter().filter(|g| method.is_none_or(|m| r.head(g).spec.method == m)).filter_map(|g| get(g, k).map(|v| v.to_string())).collect();
        values.len() > 1
    };
    let shown = |g: &Group, k: &str| if k.starts_with("param.") { varies(k, Some(&r.head(g).spec.method)) } else { varies(k, None) };
    groups.iter().map(|g| keys.iter().filter(|k| shown(g, k)).filter_map(|k| get(g, k).map(|v| setting(k, v))).collect()).collect()
}

/// Legend labels: `method` followed by its differing settings; groups that still share a label
/// (they differ only in something no column shows, e.g. two checkpoint files) get `#2`, `#3`.
pub fn series(r: &Report, groups: &[&Group]) -> Vec<String> {
    let settings = differing(r, groups);
    let mut out: Vec<String> = groups
        .iter()
        .zip(settings)
        .map(|(g, s)| {
            let h = r.head(g);
            let who = if h.spec.role == crate::suite::Role::Teacher { format!("teacher {}", h.spec.model) } else { h.spec.method.clone() };
            if s.is_empty() { who } else { format!("{who} {}", s.join(" ")) }
        })
        .collect();
    for i in 0..out.len() {
        let same: Vec<usize> = (i + 1..out.len()).filter(|&j| out[j] == out[i]).collect();
        for (k, j) in same.into_iter().enumerate() {
            out[j] = format!("{} #{}", out[j], k + 2);
        }
    }
    out
}

/// What a legend label may never contain: a placeholder for a missing setting or a raw config
/// path. Used by the tests and by [`super::plot`] before it writes a file.
pub fn is_clean(label: &str) -> bool {
    let placeholder = label.split_whitespace().any(|t| t.ends_with("=-") || t.ends_with("=None") || (t.len() > 1 && t.ends_with('=')));
    !(placeholder || label.contains("param.") || label.contains("train.") || label.contains("teacher."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_the_papers() {
        assert_eq!(symbol("param.tau"), "τ");
        assert_eq!(symbol("param.beta"), "β");
        assert_eq!(symbol("train.lr"), "lr");
        assert_eq!(symbol("train.label_smoothing"), "label smoothing");
        assert_eq!(symbol("teacher.train.epochs"), "teacher epochs");
        assert_eq!(symbol("teacher.param.tau"), "teacher τ");
        assert!(is_clean("kd τ=2 lr=0.1"));
        assert!(is_clean("dkd β=-1"), "a negative value is not a placeholder");
        assert!(is_clean("ce (ECE 4.60%, n = 300)"));
        assert!(!is_clean("kd τ= lr=0.1"), "an empty value is");
        for planted in ["ce teacher.method=-", "kd param.tau=4", "kd train.lr=0.1", "kd τ=-"] {
            assert!(!is_clean(planted), "{planted}");
        }
    }
}
