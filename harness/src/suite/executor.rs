//! `[executor.slurm]`: cluster options that belong with a suite (partition, GPUs, time limit), so
//! that `harness run SUITE --executor slurm` needs no flags. The same struct carries the
//! command-line flags, which override the suite's values.

use super::source::{Source, type_name, unknown};
use super::{Seg, input, key};

const EXECUTOR_KEYS: &[&str] = &["slurm"];
const SLURM_KEYS: &[&str] = &["partition", "gres", "time", "array_limit", "sbatch_args"];
/// sbatch options the executor sets itself; passing them again would break the DAG or the
/// bookkeeping that `status` and `cancel` rely on.
const RESERVED_SBATCH: &[&str] = &["--array", "-a", "--dependency", "-d", "--output", "-o", "--error", "-e", "--parsable", "--job-name", "-J", "--wrap"];

/// Options for submitting a suite to Slurm. `None` leaves the cluster's default.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// Generic resources per run, e.g. `gpu:1`; with a GPU request the run trains on the GPU Slurm
    /// assigns, else on the CPU.
    pub gres: Option<String>,
    /// Wall-clock limit per run in a Slurm time format (`HH:MM:SS`, `MM`, `D-HH:MM`, ...).
    pub time: Option<String>,
    /// Most array tasks of one level running at once (`--array=...%N`).
    pub array_limit: Option<usize>,
    /// Further sbatch options, passed through verbatim.
    pub sbatch_args: Vec<String>,
}

impl SlurmOptions {
    /// `over` (the command line) wins over `self` (the suite) key by key; extra sbatch options are
    /// concatenated, suite first, so a later flag overrides an earlier one as sbatch reads them.
    pub fn merged(&self, over: &SlurmOptions) -> SlurmOptions {
        SlurmOptions {
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            gres: over.gres.clone().or_else(|| self.gres.clone()),
            time: over.time.clone().or_else(|| self.time.clone()),
            array_limit: over.array_limit.or(self.array_limit),
            sbatch_args: self.sbatch_args.iter().chain(&over.sbatch_args).cloned().collect(),
        }
    }

    /// Whether the runs ask Slurm for GPUs (`gres` naming a gpu, or a `--gpus*`, `-G` or
    /// `--gres=gpu...` sbatch option): they then train on the GPUs Slurm assigns, else on the CPU.
    pub fn wants_gpu(&self) -> bool {
        self.gres.as_deref().is_some_and(|g| g.contains("gpu"))
            || self.sbatch_args.iter().any(|a| a.starts_with("--gpus") || a.starts_with("-G") || (a.starts_with("--gres") && a.contains("gpu")))
    }

    /// Checks every value; an error is the offending key (`time`, `array_limit`, ...) and what was
    /// expected, for the caller to attach to the flag or the suite line.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (k, v) in [("partition", &self.partition), ("gres", &self.gres)] {
            if let Some(v) = v
                && (v.is_empty() || v.chars().any(char::is_whitespace))
            {
                return Err((k, format!("expected a non-empty {k} without spaces, found `{v}`")));
            }
        }
        if let Some(t) = &self.time
            && !is_slurm_time(t)
        {
            return Err(("time", format!("expected a Slurm time limit such as HH:MM:SS, MM, D-HH or D-HH:MM:SS, found `{t}`")));
        }
        if self.array_limit == Some(0) {
            return Err(("array_limit", "expected at least 1 concurrent task".into()));
        }
        for a in &self.sbatch_args {
            if !a.starts_with('-') {
                return Err(("sbatch_args", format!("expected sbatch options starting with `-`, found `{a}`")));
            }
            let name = a.split('=').next().unwrap_or(a);
            if RESERVED_SBATCH.contains(&name) {
                return Err((
                    "sbatch_args",
                    format!("`{name}` is set by the executor (one array per DAG level, dependencies, logs); use array_limit for the throttle"),
                ));
            }
        }
        Ok(())
    }
}

/// Slurm's time formats: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`, or `UNLIMITED`.
fn is_slurm_time(t: &str) -> bool {
    if t == "UNLIMITED" || t == "INFINITE" {
        return true;
    }
    let nums = |s: &str, max: usize| {
        let parts: Vec<&str> = s.split(':').collect();
        parts.len() <= max && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    };
    match t.split_once('-') {
        Some((d, rest)) => !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()) && nums(rest, 3),
        None => nums(t, 3),
    }
}

/// Reads `[executor]` (only `slurm` inside) and validates `[executor.slurm]`.
pub fn parse(src: &Source) -> anyhow::Result<SlurmOptions> {
    let Some(v) = src.table.get("executor") else { return Ok(SlurmOptions::default()) };
    let ep = vec![key("executor")];
    let t = v.as_table().ok_or_else(|| input(src.error(&ep, format!("expected a table, found {}", type_name(v)))))?;
    for k in t.keys() {
        if !EXECUTOR_KEYS.contains(&k.as_str()) {
            return Err(input(src.error(&[key("executor"), key(k)], unknown("executor", k, EXECUTOR_KEYS))));
        }
    }
    let Some(sv) = t.get("slurm") else { return Ok(SlurmOptions::default()) };
    let sp = vec![key("executor"), key("slurm")];
    let s = sv.as_table().ok_or_else(|| input(src.error(&sp, format!("expected a table, found {}", type_name(sv)))))?;
    let at = |k: &str| -> Vec<Seg> { [sp.clone(), vec![key(k)]].concat() };
    for k in s.keys() {
        if !SLURM_KEYS.contains(&k.as_str()) {
            return Err(input(src.error(&at(k), unknown("key", k, SLURM_KEYS))));
        }
    }
    let string = |k: &str| -> anyhow::Result<Option<String>> {
        match s.get(k) {
            None => Ok(None),
            Some(toml::Value::String(v)) => Ok(Some(v.clone())),
            Some(v) => Err(input(src.error(&at(k), format!("expected a string, found {}", type_name(v))))),
        }
    };
    let array_limit = match s.get("array_limit") {
        None => None,
        Some(toml::Value::Integer(n)) if *n >= 1 => Some(*n as usize),
        Some(v) => return Err(input(src.error(&at("array_limit"), format!("expected a positive integer, found {v}")))),
    };
    let sbatch_args = match s.get("sbatch_args") {
        None => vec![],
        Some(toml::Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                toml::Value::String(v) => Ok(v.clone()),
                other => Err(input(src.error(&[at("sbatch_args"), vec![Seg::Idx(i)]].concat(), format!("expected a string, found {}", type_name(other))))),
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        Some(v) => return Err(input(src.error(&at("sbatch_args"), format!("expected an array of strings, found {}", type_name(v))))),
    };
    let o = SlurmOptions { partition: string("partition")?, gres: string("gres")?, time: string("time")?, array_limit, sbatch_args };
    o.check().map_err(|(k, m)| input(src.error(&at(k), m)))?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_times() {
        for ok in ["10", "10:00", "01:30:00", "2-00", "2-12:00", "1-00:00:00", "UNLIMITED"] {
            assert!(is_slurm_time(ok), "{ok}");
        }
        for bad in ["", "1h", "1:2:3:4", "-1", "a-10", "1-", "12:"] {
            assert!(!is_slurm_time(bad), "{bad}");
        }
    }
}
