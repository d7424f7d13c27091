//! Reading a suite file: each section validated in turn, every error naming file, line and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::source::{Source, type_name, unknown};
use super::*;

impl Suite {
    /// Reads and validates a suite file. Errors are [`InputError`]s naming file, line and key.
    pub fn load(path: &Path) -> anyhow::Result<Suite> {
        let text = crate::files::read_to_string(path, "suite file")?;
        Suite::parse(path, text)
    }

    /// Validates suite text (`path` is used for messages and relative paths), section by section.
    pub fn parse(path: &Path, text: String) -> anyhow::Result<Suite> {
        let src = Source::parse(path, text).map_err(input)?;
        check_sections(&src)?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let Header { name, description, dataset, data_dir, seeds } = parse_header(&src, &base_dir)?;
        let train = parse_train(&src)?;
        let teachers = parse_teachers(&src, &base_dir)?;
        let methods = parse_methods(&src)?;
        let axes = parse_grid(&src, &teachers)?;
        check_axes(&src, &axes)?;
        let expected = parse_expected(&src)?;
        let report = parse_report(&src)?;
        let slurm = executor::parse(&src)?;
        Ok(Suite { name, description, dataset, data_dir, seeds, train, teachers, methods, axes, expected, report, slurm, allow_missing_checkpoints: false, src })
    }
}

/// Only the known sections.
fn check_sections(src: &Source) -> anyhow::Result<()> {
    let t = &src.table;
    for k in t.keys() {
        if !SUITE_SECTIONS.contains(&k.as_str()) {
            return Err(input(src.error(&[key(k)], unknown("section", k, SUITE_SECTIONS))));
        }
    }
    Ok(())
}

/// `[suite]`: what names the results and the data.
struct Header {
    name: String,
    description: String,
    dataset: String,
    data_dir: Option<PathBuf>,
    seeds: Vec<u64>,
}

fn parse_header(src: &Source, base_dir: &Path) -> anyhow::Result<Header> {
    let (t, path) = (&src.table, &src.path);
    let s =
        table_at(src, t, "suite")?.ok_or_else(|| input(format!("{}: missing [suite] section (needs at least `name` and `dataset`)", path.display())))?;
    for k in s.keys() {
        if !SUITE_KEYS.contains(&k.as_str()) {
            return Err(input(src.error(&[key("suite"), key(k)], unknown("key", k, SUITE_KEYS))));
        }
    }
    let name = req_str(src, s, &[key("suite")], "name")?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(input(src.error(&[key("suite"), key("name")], "expected letters, digits, `_` or `-` (it names the results directory)")));
    }
    let description = opt_str(src, s, &[key("suite")], "description")?.unwrap_or_default();
    let dataset = req_str(src, s, &[key("suite")], "dataset")?;
    let names: Vec<&str> = data::DATASETS.iter().map(|d| d.name).collect();
    if !names.contains(&dataset.as_str()) {
        return Err(input(src.error(&[key("suite"), key("dataset")], unknown("dataset", &dataset, &names))));
    }
    let data_dir = opt_str(src, s, &[key("suite")], "data_dir")?.map(|d| base_dir.join(d));
    let seeds = match s.get("seeds") {
        None => vec![0],
        Some(v) => {
            let p = [key("suite"), key("seeds")];
            let arr = v.as_array().ok_or_else(|| input(src.error(&p, format!("expected an array of integers, found {}", type_name(v)))))?;
            if arr.is_empty() {
                return Err(input(src.error(&p, "expected at least one seed")));
            }
            arr.iter().map(|x| seed_of(x).map_err(|m| input(src.error(&p, m)))).collect::<anyhow::Result<Vec<_>>>()?
        }
    };

    Ok(Header { name, description, dataset, data_dir, seeds })
}

/// `[train]`: the default recipe.
fn parse_train(src: &Source) -> anyhow::Result<Recipe> {
    let t = &src.table;
    let mut train = Recipe::default();
    if let Some(tr) = table_at(src, t, "train")? {
        for (k, v) in tr {
            train.set(k, v).map_err(|m| input(src.error(&[key("train"), key(k)], m)))?;
        }
        train.check().map_err(|m| input(src.error(&[key("train")], m)))?;
    }

    Ok(train)
}

/// `[teachers.<name>]`, each teacher's own teachers resolvable by name.
fn parse_teachers(src: &Source, base_dir: &Path) -> anyhow::Result<BTreeMap<String, TeacherDecl>> {
    let t = &src.table;
    let mut teachers = BTreeMap::new();
    if let Some(ts) = table_at(src, t, "teachers")? {
        for (tname, tv) in ts {
            let p = vec![key("teachers"), key(tname)];
            let tt = tv.as_table().ok_or_else(|| input(src.error(&p, format!("expected a table, found {}", type_name(tv)))))?;
            for k in tt.keys() {
                if !TEACHER_KEYS.contains(&k.as_str()) {
                    let mut kp = p.clone();
                    kp.push(key(k));
                    return Err(input(src.error(&kp, unknown("key", k, TEACHER_KEYS))));
                }
            }
            let model = req_str(src, tt, &p, "model")?;
            check_model(src, &[p.clone(), vec![key("model")]].concat(), &model)?;
            let seed = match tt.get("seed") {
                None => 0,
                Some(v) => seed_of(v).map_err(|m| input(src.error(&[p.clone(), vec![key("seed")]].concat(), m)))?,
            };
            let mut overrides = Vec::new();
            if let Some(trv) = tt.get("train") {
                let tp = [p.clone(), vec![key("train")]].concat();
                let trt = trv.as_table().ok_or_else(|| input(src.error(&tp, format!("expected a table, found {}", type_name(trv)))))?;
                for (k, v) in trt {
                    let kp = [tp.clone(), vec![key(k)]].concat();
                    // Validate now so errors point here, not at first use.
                    Recipe::default().set(k, v).map_err(|m| input(src.error(&kp, m)))?;
                    overrides.push((k.clone(), v.clone(), kp));
                }
            }
            let checkpoint = opt_str(src, tt, &p, "checkpoint")?.map(|c| base_dir.join(c));
            let mut ups: Vec<String> = opt_str(src, tt, &p, "teacher")?.into_iter().collect();
            if let Some(v) = tt.get("teachers") {
                let tp = [p.clone(), vec![key("teachers")]].concat();
                let arr = v.as_array().ok_or_else(|| input(src.error(&tp, format!("expected an array of teacher names, found {}", type_name(v)))))?;
                if !ups.is_empty() {
                    return Err(input(src.error(&tp, "set either `teacher` or `teachers`, not both")));
                }
                for x in arr {
                    ups.push(x.as_str().ok_or_else(|| input(src.error(&tp, format!("expected teacher names, found {}", type_name(x)))))?.to_string());
                }
            }
            let method = opt_str(src, tt, &p, "method")?;
            if let Some(m) = &method {
                if distill::find(m).is_none() {
                    return Err(input(src.error(&[p.clone(), vec![key("method")]].concat(), unknown("method", m, &distill::names()))));
                }
            }
            if checkpoint.is_some() && (!ups.is_empty() || method.is_some()) {
                return Err(input(src.error(&p, "a checkpoint teacher is not trained: drop `teacher`/`teachers`/`method`, or drop `checkpoint`")));
            }
            let prune = match tt.get("prune") {
                None => None,
                Some(pv) => Some(parse_prune(src, &[p.clone(), vec![key("prune")]].concat(), pv)?),
            };
            teachers.insert(tname.clone(), TeacherDecl { model, seed, train: overrides, checkpoint, teachers: ups, method, prune, path: p });
        }
    }

    for (tname, d) in &teachers {
        for u in &d.teachers {
            if !teachers.contains_key(u) && models::find(u).is_none() {
                let mut allowed: Vec<&str> = teachers.keys().map(String::as_str).collect();
                allowed.extend(models::names());
                return Err(input(src.error(&[d.path.clone(), vec![key("teacher")]].concat(), unknown(&format!("teacher of `{tname}`"), u, &allowed))));
            }
        }
    }

    Ok(teachers)
}

/// `[methods.<name>]`: suite-wide parameter overrides, checked against each method's declaration.
fn parse_methods(src: &Source) -> anyhow::Result<BTreeMap<String, BTreeMap<String, (toml::Value, Vec<Seg>)>>> {
    let t = &src.table;
    let mut methods = BTreeMap::new();
    if let Some(ms) = table_at(src, t, "methods")? {
        for (mname, mv) in ms {
            let p = vec![key("methods"), key(mname)];
            let info = distill::find(mname).ok_or_else(|| input(src.error(&p, unknown("method", mname, &distill::names()))))?;
            let mt = mv.as_table().ok_or_else(|| input(src.error(&p, format!("expected a table, found {}", type_name(mv)))))?;
            let mut params = BTreeMap::new();
            for (k, v) in mt {
                let kp = [p.clone(), vec![key(k)]].concat();
                info.check_param(k, v).map_err(|m| input(src.error(&kp, m)))?;
                params.insert(k.clone(), (v.clone(), kp));
            }
            methods.insert(mname.clone(), params);
        }
    }

    Ok(methods)
}

/// `[grid]`: zipped axes (arrays of tables) and crossed axes (arrays of values).
fn parse_grid(src: &Source, teachers: &BTreeMap<String, TeacherDecl>) -> anyhow::Result<Vec<Axis>> {
    let t = &src.table;
    let mut axes = Vec::new();
    if let Some(g) = table_at(src, t, "grid")? {
        let mut flat = Vec::new();
        flatten(g, String::new(), vec![key("grid")], &mut flat);
        for (k, v, p) in flat {
            let arr = v.as_array().ok_or_else(|| input(src.error(&p, format!("expected an array (a grid axis), found {}", type_name(&v)))))?;
            if arr.is_empty() {
                return Err(input(src.error(&p, "expected at least one value on the axis")));
            }
            if arr.iter().all(|x| x.is_table()) {
                let mut entries = Vec::new();
                for (i, e) in arr.iter().enumerate() {
                    let mut ep = p.clone();
                    ep.push(Seg::Idx(i));
                    let mut settings = Vec::new();
                    let mut ef = Vec::new();
                    flatten(e.as_table().into_iter().flatten(), String::new(), ep, &mut ef);
                    for (ek, evv, epp) in ef {
                        check_grid_key(src, &epp, &ek)?;
                        check_grid_value(src, &epp, &ek, &evv, &teachers)?;
                        settings.push(Setting { key: ek, value: evv, path: epp });
                    }
                    entries.push(settings);
                }
                axes.push(Axis::Zip { name: k, entries });
            } else if arr.iter().any(|x| x.is_table()) {
                return Err(input(src.error(&p, "an axis is either all tables (zipped) or all values (crossed), not a mix")));
            } else {
                check_grid_key(src, &p, &k)?;
                for (i, x) in arr.iter().enumerate() {
                    let mut vp = p.clone();
                    vp.push(Seg::Idx(i));
                    check_grid_value(src, &vp, &k, x, &teachers)?;
                }
                let values = arr
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        let mut vp = p.clone();
                        vp.push(Seg::Idx(i));
                        Setting { key: k.clone(), value: x.clone(), path: vp }
                    })
                    .collect();
                axes.push(Axis::Product { key: k, values });
            }
        }
    }
    Ok(axes)
}

/// Two axes must not set the same key (the result would depend on axis order), nor the grid and
/// `[suite].seeds` the seed.
fn check_axes(src: &Source, axes: &[Axis]) -> anyhow::Result<()> {
    let t = &src.table;
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for a in axes {
        let (aname, keys): (String, Vec<String>) = match a {
            Axis::Product { key, .. } => (key.clone(), vec![key.clone()]),
            Axis::Zip { name, entries } => {
                let mut ks: Vec<String> = entries.iter().flatten().map(|s| s.key.clone()).collect();
                ks.sort();
                ks.dedup();
                (name.clone(), ks)
            }
        };
        for k in keys {
            if let Some(prev) = owner.insert(k.clone(), aname.clone()) {
                return Err(input(
                    src.error(&[key("grid"), key(&aname)], format!("key `{k}` is also set by axis `{prev}`; set each key on one axis only")),
                ));
            }
        }
    }
    if owner.contains_key("seed") && t.get("suite").and_then(|s| s.get("seeds")).is_some() {
        return Err(input(src.error(&[key("suite"), key("seeds")], "seeds are given both here and as a grid axis `seed`; keep one")));
    }

    Ok(())
}

fn parse_report(src: &Source) -> anyhow::Result<ReportSpec> {
    let Some(v) = src.table.get("report") else { return Ok(ReportSpec::default()) };
    let p = vec![key("report")];
    let t = v.as_table().ok_or_else(|| input(src.error(&p, format!("expected a table, found {}", type_name(v)))))?;
    let at = |k: &str| [p.clone(), vec![key(k)]].concat();
    for k in t.keys() {
        if !REPORT_KEYS.contains(&k.as_str()) {
            return Err(input(src.error(&at(k), unknown("key", k, REPORT_KEYS))));
        }
    }
    let names = |k: &str| -> anyhow::Result<Option<Vec<String>>> {
        match t.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(toml::Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| input(src.error(&at(k), format!("expected column names (strings), found {}", type_name(x)))))
                })
                .collect::<anyhow::Result<Vec<_>>>()
                .map(Some),
            Some(other) => Err(input(src.error(&at(k), format!("expected a column name or a non-empty array of them, found {}", type_name(other))))),
        }
    };
    let num = |k: &str, lo: f64, hi: f64| -> anyhow::Result<Option<f64>> {
        let x = match t.get(k) {
            None => return Ok(None),
            Some(toml::Value::Float(f)) => *f,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(other) => return Err(input(src.error(&at(k), format!("expected a number, found {}", type_name(other))))),
        };
        if !(x > lo && x < hi) {
            return Err(input(src.error(&at(k), format!("expected a number in ({lo}, {hi}), found {x}"))));
        }
        Ok(Some(x))
    };
    let metric = opt_str(src, t, &p, "metric")?;
    if let Some(m) = &metric {
        if m != "best" && m != "last" {
            return Err(input(src.error(&at("metric"), unknown("metric", m, &["best", "last"]))));
        }
    }
    let baseline = opt_str(src, t, &p, "baseline")?;
    if let Some(b) = &baseline {
        if distill::find(b).is_none() {
            return Err(input(src.error(&at("baseline"), unknown("method", b, &distill::names()))));
        }
    }
    let min_seeds = match t.get("min_seeds") {
        None => None,
        Some(toml::Value::Integer(i)) if *i >= 2 => Some(*i as usize),
        Some(other) => return Err(input(src.error(&at("min_seeds"), format!("expected an integer >= 2, found {other}")))),
    };
    Ok(ReportSpec {
        rows: names("rows")?,
        cols: names("cols")?,
        metric,
        baseline,
        alpha: num("alpha", 0.0, 1.0)?,
        tolerance: num("tolerance", 0.0, f64::INFINITY)?,
        k_se: num("k_se", 0.0, f64::INFINITY)?,
        min_seeds,
        expected_tolerance: num("expected_tolerance", 0.0, f64::INFINITY)?,
        gap_x: opt_str(src, t, &p, "gap_x")?,
    })
}

fn parse_expected(src: &Source) -> anyhow::Result<Vec<Expected>> {
    let Some(v) = src.table.get("expected") else { return Ok(vec![]) };
    let p = vec![key("expected")];
    let arr = v.as_array().ok_or_else(|| input(src.error(&p, "expected an array of tables: [[expected]]")))?;
    let mut out = Vec::new();
    for (i, e) in arr.iter().enumerate() {
        let ep = vec![key("expected"), Seg::Idx(i)];
        let t = e.as_table().ok_or_else(|| input(src.error(&ep, format!("expected a table, found {}", type_name(e)))))?;
        for k in t.keys() {
            if !EXPECTED_KEYS.contains(&k.as_str()) {
                return Err(input(src.error(&[ep.clone(), vec![key(k)]].concat(), unknown("key", k, EXPECTED_KEYS))));
            }
        }
        let student = req_str(src, t, &ep, "student")?;
        check_model(src, &[ep.clone(), vec![key("student")]].concat(), &student)?;
        let teacher = opt_str(src, t, &ep, "teacher")?;
        if let Some(tm) = &teacher {
            check_model(src, &[ep.clone(), vec![key("teacher")]].concat(), tm)?;
        }
        let method = req_str(src, t, &ep, "method")?;
        if distill::find(&method).is_none() {
            return Err(input(src.error(&[ep.clone(), vec![key("method")]].concat(), unknown("method", &method, &distill::names()))));
        }
        let num = |k: &str| -> anyhow::Result<Option<f64>> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::Float(f)) => Ok(Some(*f)),
                Some(toml::Value::Integer(i)) => Ok(Some(*i as f64)),
                Some(other) => Err(input(src.error(&[ep.clone(), vec![key(k)]].concat(), format!("expected a number, found {}", type_name(other))))),
            }
        };
        let top1 = num("top1")?.ok_or_else(|| input(src.error(&ep, "missing required key `top1` (percent)")))?;
        let metric = opt_str(src, t, &ep, "metric")?.unwrap_or_else(|| "best".into());
        if metric != "best" && metric != "last" {
            return Err(input(src.error(&[ep.clone(), vec![key("metric")]].concat(), unknown("metric", &metric, &["best", "last"]))));
        }
        let source = req_str(src, t, &ep, "source")?;
        out.push(Expected { teacher, student, method, top1, std: num("std")?, metric, source });
    }
    Ok(out)
}

fn flatten<'a>(t: impl IntoIterator<Item = (&'a String, &'a toml::Value)>, prefix: String, path: Vec<Seg>, out: &mut Vec<(String, toml::Value, Vec<Seg>)>) {
    for (k, v) in t {
        let full = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        let mut p = path.clone();
        p.push(Seg::Key(k.clone()));
        match v {
            toml::Value::Table(sub) => flatten(sub, full, p, out),
            _ => out.push((full, v.clone(), p)),
        }
    }
}

fn check_grid_key(src: &Source, path: &[Seg], k: &str) -> anyhow::Result<()> {
    let ok = match k {
        "teacher"
        | "teachers"
        | "chain"
        | "peers"
        | "student"
        | "method"
        | "seed"
        | "save_model"
        | "exclusive"
        | "teacher.seed"
        | "teacher.prune.sparsity"
        | "teacher.prune.method"
        | "student_from_teacher" => Ok(()),
        _ => {
            if let Some(r) = k.strip_prefix("teacher.train.").or_else(|| k.strip_prefix("train.")) {
                if spec::RECIPE_KEYS.contains(&r) { Ok(()) } else { Err(unknown("recipe key", r, spec::RECIPE_KEYS)) }
            } else if let Some((m, p)) = k.split_once('.') {
                match distill::find(m) {
                    Some(info) if info.params.iter().any(|d| d.name == p) => Ok(()),
                    Some(info) => {
                        let allowed: Vec<&str> = info.params.iter().map(|d| d.name).collect();
                        Err(unknown(&format!("parameter of method `{m}`"), p, &allowed))
                    }
                    None => Err(unknown("method", m, &distill::names())),
                }
            } else {
                Err(unknown("grid key", k, GRID_KEYS))
            }
        }
    };
    ok.map_err(|m| input(src.error(path, m)))
}

/// Early checks of names in the grid (the full check happens when a point is resolved).
fn check_grid_value(src: &Source, path: &[Seg], k: &str, v: &toml::Value, teachers: &BTreeMap<String, TeacherDecl>) -> anyhow::Result<()> {
    let name = || -> anyhow::Result<&str> { v.as_str().ok_or_else(|| input(src.error(path, format!("expected a string, found {}", type_name(v))))) };
    match k {
        "student" => check_model(src, path, name()?),
        "peers" => {
            let arr = v.as_array().ok_or_else(|| input(src.error(path, format!("expected an array of model names, found {}", type_name(v)))))?;
            for m in arr {
                let m = m.as_str().ok_or_else(|| input(src.error(path, format!("expected model names, found {}", type_name(m)))))?;
                check_model(src, path, m)?;
            }
            Ok(())
        }
        "method" => {
            let m = name()?;
            if distill::find(m).is_none() {
                return Err(input(src.error(path, unknown("method", m, &distill::names()))));
            }
            Ok(())
        }
        "teacher" | "teachers" | "chain" => {
            let list: Vec<&toml::Value> = match v.as_array() {
                Some(a) if k != "teacher" => a.iter().collect(),
                _ => vec![v],
            };
            for item in list {
                let t = item.as_str().ok_or_else(|| input(src.error(path, format!("expected a teacher name, found {}", type_name(item)))))?;
                if !teachers.contains_key(t) && models::find(t).is_none() {
                    let mut allowed: Vec<&str> = teachers.keys().map(String::as_str).collect();
                    allowed.extend(models::names());
                    return Err(input(src.error(path, unknown("teacher", t, &allowed))));
                }
            }
            Ok(())
        }
        "seed" | "teacher.seed" => seed_of(v).map(|_| ()).map_err(|m| input(src.error(path, m))),
        "teacher.prune.sparsity" => sparsity_of(v).map(|_| ()).map_err(|m| input(src.error(path, m))),
        "teacher.prune.method" => prune_method_of(v).map(|_| ()).map_err(|m| input(src.error(path, m))),
        _ => Ok(()),
    }
}

fn check_model(src: &Source, path: &[Seg], name: &str) -> anyhow::Result<()> {
    if models::find(name).is_none() {
        return Err(input(src.error(path, unknown("model", name, &models::names()))));
    }
    Ok(())
}

/// A model runs on a dataset unless it is [`models::Input::Fixed`] to another H×W; channels
/// always come from the dataset.
pub(super) fn check_model_for(src: &Source, path: &[Seg], name: &str, info: &data::DatasetInfo) -> anyhow::Result<()> {
    check_model(src, path, name)?;
    if let Some(m) = models::find(name).filter(|m| !m.input.accepts(info.shape)) {
        let (c, h, w) = info.shape;
        return Err(input(src.error(path, format!("model `{name}` needs {} inputs but dataset `{}` has {c}x{h}x{w}", m.input, info.name))));
    }
    Ok(())
}

fn table_at<'a>(src: &Source, t: &'a toml::Table, k: &str) -> anyhow::Result<Option<&'a toml::Table>> {
    match t.get(k) {
        None => Ok(None),
        Some(toml::Value::Table(tt)) => Ok(Some(tt)),
        Some(v) => Err(input(src.error(&[key(k)], format!("expected a table, found {}", type_name(v))))),
    }
}

fn opt_str(src: &Source, t: &toml::Table, at: &[Seg], k: &str) -> anyhow::Result<Option<String>> {
    match t.get(k) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(input(src.error(&[at.to_vec(), vec![key(k)]].concat(), format!("expected a string, found {}", type_name(v))))),
    }
}

fn req_str(src: &Source, t: &toml::Table, at: &[Seg], k: &str) -> anyhow::Result<String> {
    opt_str(src, t, at, k)?.ok_or_else(|| input(src.error(at, format!("missing required key `{k}`"))))
}

pub(super) fn seed_of(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
        other => Err(format!("expected a non-negative integer seed, found {}", type_name(other))),
    }
}

pub(super) fn sparsity_of(v: &toml::Value) -> Result<f64, String> {
    let f = match v {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        other => return Err(format!("expected a sparsity in (0, 1), found {}", type_name(other))),
    };
    if !(f > 0.0 && f < 1.0) {
        return Err(format!("expected a sparsity in (0, 1), found {f}"));
    }
    Ok(f)
}

pub(super) fn prune_method_of(v: &toml::Value) -> Result<String, String> {
    match v.as_str() {
        Some(m) if spec::PRUNE_METHODS.contains(&m) => Ok(m.to_string()),
        Some(m) => Err(unknown("pruning method", m, spec::PRUNE_METHODS)),
        None => Err(format!("expected a pruning method name, found {}", type_name(v))),
    }
}

/// Validates a teacher's `prune = { method, sparsity, rate, batch, train }` table.
fn parse_prune(src: &Source, p: &[Seg], v: &toml::Value) -> anyhow::Result<PruneDecl> {
    let t =
        v.as_table().ok_or_else(|| input(src.error(p, format!("expected a table like {{ method = \"prue\", sparsity = 0.5 }}, found {}", type_name(v)))))?;
    let at = |k: &str| [p.to_vec(), vec![key(k)]].concat();
    for k in t.keys() {
        if !PRUNE_KEYS.contains(&k.as_str()) {
            return Err(input(src.error(&at(k), unknown("key of `prune`", k, PRUNE_KEYS))));
        }
    }
    let method = match t.get("method") {
        Some(m) => prune_method_of(m).map_err(|e| input(src.error(&at("method"), e)))?,
        None => return Err(input(src.error(p, format!("missing required key `method` (one of: {})", spec::PRUNE_METHODS.join(", "))))),
    };
    let sparsity = match t.get("sparsity") {
        Some(x) => sparsity_of(x).map_err(|e| input(src.error(&at("sparsity"), e)))?,
        None => 0.5,
    };
    let rate = match t.get("rate") {
        Some(x) => sparsity_of(x).map_err(|e| input(src.error(&at("rate"), e.replace("sparsity", "rate"))))?,
        None => 0.2,
    };
    let batch = match t.get("batch") {
        None => 500,
        Some(toml::Value::Integer(i)) if *i >= 1 && *i <= u32::MAX as i64 => *i as u32,
        Some(x) => return Err(input(src.error(&at("batch"), format!("expected an integer >= 1, found {x}")))),
    };
    let mut train = Vec::new();
    if let Some(trv) = t.get("train") {
        let tp = at("train");
        let trt = trv.as_table().ok_or_else(|| input(src.error(&tp, format!("expected a table, found {}", type_name(trv)))))?;
        for (k, v) in trt {
            let kp = [tp.clone(), vec![key(k)]].concat();
            Recipe::default().set(k, v).map_err(|m| input(src.error(&kp, m)))?;
            train.push((k.clone(), v.clone(), kp));
        }
    }
    Ok(PruneDecl { method, sparsity, rate, batch, train, path: p.to_vec() })
}
