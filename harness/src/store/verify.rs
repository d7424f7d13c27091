//! Results are verified when read: a run directory is `done` only when its `config.json`,
//! `summary.json` and `metrics.csv` agree with each other and with the planned run, and every
//! value is in range for the schema it was written with. Anything else is [`Damage`], named by
//! file and reason, never counted as done and never aggregated.
//!
//! Schemas (`SCHEMA` in the parent module): `summary.json` carries `"schema": 2` (accuracies and
//! ECE in percent); a file without the key was written before (schema 1: fractions) and is
//! upgraded on read. `metrics.csv` cannot carry a version (a comment line would break CSV
//! readers), so its schema is `results_schema` in the run's `env.json`, written before the first
//! epoch; without it the file holds fractions.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{RunDir, SCHEMA, Summary};
use crate::suite::RunSpec;

/// Why a run's results cannot be trusted: the file and what is wrong with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Damage {
    pub file: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.reason)
    }
}

impl std::error::Error for Damage {}

fn damage(file: &Path, reason: impl Into<String>) -> Damage {
    Damage { file: file.to_path_buf(), reason: reason.into() }
}

/// What a run directory holds, verified.
#[derive(Clone, Debug)]
pub enum Health {
    /// `summary.json` present and consistent with everything else.
    Finished(Box<Summary>),
    Damaged(Damage),
    /// No summary; `epoch` from a valid `resume.json` when there is one.
    Unfinished {
        epoch: Option<u32>,
    },
}

/// Verifies the run in `dir` planned as `spec`.
pub fn check(dir: &RunDir, spec: &RunSpec) -> Health {
    let checked = config(dir, spec).and_then(|()| {
        if dir.is_finished() {
            let s = summary(dir, spec)?;
            metrics(dir, s.epochs, true)?;
            Ok(Health::Finished(Box::new(s)))
        } else {
            Ok(Health::Unfinished { epoch: resume(dir, spec)? })
        }
    });
    checked.unwrap_or_else(Health::Damaged)
}

/// `config.json` (when present; an unfinished run may not have one yet) names this run.
/// Ids are compared, not whole specs: floats need not survive a JSON round trip bit for bit,
/// and the id is the hash of the canonical spec.
fn config(dir: &RunDir, spec: &RunSpec) -> Result<(), Damage> {
    let path = dir.config();
    if !path.exists() {
        return if dir.is_finished() { Err(damage(&path, "missing, but summary.json says the run finished")) } else { Ok(()) };
    }
    let found: RunSpec = parse(&path).and_then(|v| serde_json::from_value(v).map_err(|e| damage(&path, format!("not a run config: {e}"))))?;
    let name = dir.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if found.id != name || found.id != spec.id {
        return Err(damage(&path, format!("belongs to run {} but sits in run directory {name} (planned id {})", found.id, spec.id)));
    }
    Ok(())
}

/// Reads a JSON file as a value, naming empty and truncated files.
fn parse(path: &Path) -> Result<Value, Damage> {
    let text = std::fs::read_to_string(path).map_err(|e| damage(path, format!("cannot read: {e}")))?;
    if text.trim().is_empty() {
        return Err(damage(path, "empty file"));
    }
    serde_json::from_str(&text).map_err(|e| damage(path, format!("not valid JSON (truncated?): {e}")))
}

/// Parses `summary.json` of any schema into the current one (percent), checking every value.
pub fn read_summary(path: &Path) -> Result<Summary, Damage> {
    let mut v = parse(path)?;
    let Some(obj) = v.as_object_mut() else { return Err(damage(path, "expected a JSON object")) };
    let schema = match obj.remove("schema") {
        None => 1,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|s| (1..=SCHEMA as u64).contains(&s)) => n.as_u64().unwrap_or(1) as u32,
        Some(other) => return Err(damage(path, format!("`schema` {other}: this harness reads schemas 1 to {SCHEMA} (a newer harness wrote it?)"))),
    };
    let mut s: Summary = serde_json::from_value(v).map_err(|e| damage(path, format!("not a run summary: {e}")))?;
    let scale = if schema == 1 { 100.0 } else { 1.0 };
    let full = 100.0 / scale;
    let unit = if schema == 1 { "a fraction (no `schema` key: schema 1)" } else { "percent (schema 2)" };
    let mut values: Vec<(String, f64)> = vec![("best_top1".into(), s.best_top1), ("last_top1".into(), s.last_top1), ("last_top5".into(), s.last_top5)];
    values.push(("last_ece".into(), s.last_ece));
    values.extend([("agreement", s.agreement), ("teacher_top1", s.teacher_top1)].into_iter().filter_map(|(k, x)| x.map(|x| (k.to_string(), x))));
    for (k, list) in [("peers_last_top1", &s.peers_last_top1), ("peers_best_top1", &s.peers_best_top1)] {
        values.extend(list.iter().enumerate().map(|(i, x)| (format!("{k}[{i}]"), *x)));
    }
    for (k, x) in &values {
        if !(x.is_finite() && (0.0..=full).contains(x)) {
            return Err(damage(path, format!("`{k}` = {x} is outside [0, {full}] for {unit}")));
        }
    }
    for (k, x) in [("last_test_loss", s.last_test_loss), ("wall_time_s", s.wall_time_s), ("images_per_s", s.images_per_s)] {
        if !(x.is_finite() && x >= 0.0) {
            return Err(damage(path, format!("`{k}` = {x}: expected a finite number >= 0")));
        }
    }
    if s.pred_kl.is_some_and(|k| !(k.is_finite() && k >= -1e-6)) {
        return Err(damage(path, format!("`pred_kl` = {:?}: expected a finite KL >= 0", s.pred_kl)));
    }
    // The best epoch includes the last; top-5 includes top-1.
    let slack = 1e-9 * full;
    if s.best_top1 + slack < s.last_top1 || s.last_top5 + slack < s.last_top1 {
        return Err(damage(path, format!("best_top1 {} and last_top5 {} must be >= last_top1 {}", s.best_top1, s.last_top5, s.last_top1)));
    }
    if s.epochs == 0 || s.best_epoch == 0 || s.best_epoch > s.epochs {
        return Err(damage(path, format!("best_epoch {} of epochs {}: expected 1 <= best_epoch <= epochs", s.best_epoch, s.epochs)));
    }
    if s.peers_last_top1.len() != s.peers_best_top1.len() {
        return Err(damage(path, "peers_last_top1 and peers_best_top1 differ in length"));
    }
    if schema == 1 {
        upgrade(&mut s);
    }
    Ok(s)
}

/// Schema 1 → 2: fractions to percent.
fn upgrade(s: &mut Summary) {
    for x in [&mut s.best_top1, &mut s.last_top1, &mut s.last_top5, &mut s.last_ece] {
        *x *= 100.0;
    }
    for x in [&mut s.agreement, &mut s.teacher_top1].into_iter().flatten() {
        *x *= 100.0;
    }
    s.peers_last_top1.iter_mut().chain(s.peers_best_top1.iter_mut()).for_each(|x| *x *= 100.0);
}

/// `summary.json` as the current schema (key order as written by serde, `schema` first).
pub fn summary_json(s: &Summary) -> anyhow::Result<Value> {
    let mut v = serde_json::json!({ "schema": SCHEMA });
    if let (Some(o), Value::Object(fields)) = (v.as_object_mut(), serde_json::to_value(s)?) {
        o.extend(fields);
    }
    Ok(v)
}

/// `summary.json` checked on its own and against the planned run.
fn summary(dir: &RunDir, spec: &RunSpec) -> Result<Summary, Damage> {
    let path = dir.summary();
    let s = read_summary(&path)?;
    if s.id != spec.id {
        return Err(damage(&path, format!("`id` {} is not this run ({})", s.id, spec.id)));
    }
    if s.epochs != spec.train.epochs {
        return Err(damage(&path, format!("`epochs` {} but the run's config trains {} epochs", s.epochs, spec.train.epochs)));
    }
    Ok(s)
}

/// Whether a `metrics.csv` column holds an accuracy (percent from schema 2): top-k columns,
/// ECE and agreement.
pub fn is_accuracy_column(name: &str) -> bool {
    name.ends_with("_top1") || name.ends_with("_top5") || name == "test_ece" || name == "agreement"
}

/// The schema `metrics.csv` was written with (`results_schema` in `env.json`, else 1).
pub fn metrics_schema(dir: &RunDir) -> u32 {
    std::fs::read_to_string(dir.env())
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("results_schema").and_then(Value::as_u64))
        .map_or(1, |s| s as u32)
}

/// `metrics.csv`: header and numbers, accuracy columns in percent whatever the schema.
pub type Table = (Vec<String>, Vec<Vec<Option<f64>>>);

/// Reads `metrics.csv`, checks that its rows are epochs 1, 2, … in order (exactly `epochs`
/// of them when `complete`, at most that many otherwise), that every cell is a number or empty,
/// and that accuracies are in range for the file's schema; returns it in percent.
pub fn metrics(dir: &RunDir, epochs: u32, complete: bool) -> Result<Table, Damage> {
    let path = dir.metrics();
    let schema = metrics_schema(dir);
    if schema == 0 || schema > SCHEMA {
        return Err(damage(&dir.env(), format!("`results_schema` {schema}: this harness reads schemas 1 to {SCHEMA}")));
    }
    let mut r = csv::Reader::from_path(&path).map_err(|e| damage(&path, format!("cannot read: {e}")))?;
    let header: Vec<String> = r.headers().map_err(|e| damage(&path, format!("no header: {e}")))?.iter().map(str::to_string).collect();
    let Some(ep) = header.iter().position(|h| h == "epoch") else { return Err(damage(&path, "no `epoch` column")) };
    let acc: Vec<bool> = header.iter().map(|h| is_accuracy_column(h)).collect();
    let full = if schema == 1 { 1.0 } else { 100.0 };
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| damage(&path, format!("line {line}: {e}")))?;
        let mut row = Vec::with_capacity(rec.len());
        for (j, cell) in rec.iter().enumerate() {
            if cell.is_empty() {
                row.push(None);
                continue;
            }
            let x: f64 = cell.parse().map_err(|_| damage(&path, format!("line {line}, column `{}`: `{cell}` is not a number", header[j])))?;
            if acc[j] && !(x.is_finite() && (0.0..=full).contains(&x)) {
                return Err(damage(&path, format!("line {line}, column `{}` = {x} is outside [0, {full}] (metrics schema {schema})", header[j])));
            }
            row.push(Some(if acc[j] && schema == 1 { x * 100.0 } else { x }));
        }
        if row[ep] != Some((i + 1) as f64) {
            return Err(damage(&path, format!("line {line} is epoch {:?}, expected epoch {} (rows duplicated or missing?)", row[ep], i + 1)));
        }
        rows.push(row);
    }
    let n = rows.len() as u32;
    if (complete && n != epochs) || n > epochs {
        return Err(damage(&path, format!("{n} epoch rows, but the run trains {epochs} epochs")));
    }
    Ok((header, rows))
}

/// `resume.json` of an unfinished run: its epoch and rows agree with the config (a state at
/// epoch 99 of 40 would end the run early; one at epoch 0 would write epochs twice). Returns
/// its epoch, or `None` without one.
pub fn resume(dir: &RunDir, spec: &RunSpec) -> Result<Option<u32>, Damage> {
    let path = dir.path.join("resume.json");
    if !path.exists() {
        return Ok(None);
    }
    resume_state(&path, spec).map(Some)
}

/// Checks one resume state against its run's spec (what `train` calls before loading it).
pub fn resume_state(path: &Path, spec: &RunSpec) -> Result<u32, Damage> {
    let v = parse(path)?;
    let epochs = spec.train.epochs;
    if v.get("id").and_then(Value::as_str) != Some(spec.id.as_str()) {
        return Err(damage(path, format!("`id` {} is not this run ({})", v.get("id").unwrap_or(&Value::Null), spec.id)));
    }
    let epoch = v.get("epoch").and_then(Value::as_u64).filter(|&e| e >= 1 && e < epochs as u64);
    let Some(epoch) = epoch else {
        return Err(damage(
            path,
            format!("`epoch` {}: expected 1 to {} (the run trains {epochs} epochs)", v.get("epoch").unwrap_or(&Value::Null), epochs.saturating_sub(1)),
        ));
    };
    let best = v.get("best_epoch").and_then(Value::as_u64);
    if best.is_none_or(|b| b > epoch) {
        return Err(damage(path, format!("`best_epoch` {best:?} is after the saved epoch {epoch}")));
    }
    let header: Vec<&str> = v.get("header").and_then(Value::as_array).map(|h| h.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let rows = v.get("rows").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let ep = header.iter().position(|h| *h == "epoch");
    let ok = ep.is_some()
        && rows.len() as u64 == epoch
        && rows.iter().enumerate().all(|(i, r)| {
            let cells = r.as_array();
            cells.is_some_and(|c| c.len() == header.len()) && cells.and_then(|c| c[ep.unwrap_or(0)].as_str()) == Some(&(i + 1).to_string())
        });
    if !ok {
        return Err(damage(path, format!("`rows` must hold epochs 1 to {epoch}, one row each, as wide as `header`")));
    }
    Ok(epoch as u32)
}

/// A run left unfinished by a harness that wrote fractions (no `results_schema` in `env.json`)
/// and resumed by this one: the rows kept in `resume.json` are converted to percent (marked
/// `results_schema` there, in one atomic write) and `metrics.csv` is written again from them,
/// so the file never mixes units and a repeated call changes nothing. Returns whether it converted.
pub fn upgrade_partial(dir: &RunDir) -> anyhow::Result<bool> {
    let resume = dir.path.join("resume.json");
    if !resume.is_file() || metrics_schema(dir) != 1 {
        return Ok(false);
    }
    let mut v: Value = crate::store::read_json(&resume)?;
    let header: Vec<String> = v["header"].as_array().map(|h| h.iter().map(|c| c.as_str().unwrap_or_default().to_string()).collect()).unwrap_or_default();
    let converted = v.get("results_schema").is_some();
    if !converted {
        let pct = |cell: &str| cell.parse::<f64>().map(|x| format!("{}", x * 100.0)).unwrap_or_else(|_| cell.to_string());
        for row in v["rows"].as_array_mut().into_iter().flatten().filter_map(Value::as_array_mut) {
            for (cell, h) in row.iter_mut().zip(&header) {
                if let (true, Some(x)) = (is_accuracy_column(h), cell.as_str()) {
                    *cell = Value::String(pct(x));
                }
            }
        }
        v["results_schema"] = SCHEMA.into();
        crate::store::write_json(&resume, &v)?;
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&header)?;
    for row in v["rows"].as_array().into_iter().flatten().filter_map(Value::as_array) {
        w.write_record(row.iter().map(|c| c.as_str().unwrap_or_default()))?;
    }
    crate::store::write_atomic(&dir.metrics(), &w.into_inner().map_err(|e| anyhow::anyhow!("encoding metrics.csv: {e}"))?)?;
    Ok(!converted)
}

/// Moves every file of a damaged run (except its lock) into `damaged-<UTC time>/` inside the
/// run directory, so the run can train again while nothing is lost. Returns that folder.
pub fn move_aside(dir: &RunDir) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut to = dir.path.join(format!("damaged-{stamp}"));
    let mut k = 1;
    while to.exists() {
        k += 1;
        to = dir.path.join(format!("damaged-{stamp}-{k}"));
    }
    std::fs::create_dir(&to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(&dir.path).with_context(|| format!("listing {}", dir.path.display()))? {
        let p = e.with_context(|| format!("listing {}", dir.path.display()))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if name == "lock" || name.starts_with("damaged-") {
            continue;
        }
        std::fs::rename(&p, to.join(&name)).with_context(|| format!("moving {} to {}", p.display(), to.display()))?;
    }
    Ok(to)
}
