//! Resolving a grid point into runs: the student's method, parameters and recipe, its teachers
//! (named entries, model names, chains, pruned stages, recursively) and online peers.

use std::collections::BTreeMap;

use super::source::{type_name, unknown};
use super::parse::{check_model_for, prune_method_of, seed_of, sparsity_of};
use super::*;

/// One grid point's settings and what it is resolved for, with the suite's error helpers.
struct Point<'a> {
    suite: &'a Suite,
    settings: &'a [Setting],
    data: &'a DataRef,
    info: &'a data::DatasetInfo,
}

impl<'a> Point<'a> {
    fn get(&self, k: &str) -> Option<&'a Setting> {
        self.settings.iter().find(|s| s.key == k)
    }

    /// An input error pointing at the setting.
    fn err(&self, s: &Setting, m: String) -> anyhow::Error {
        input(self.suite.src.error(&s.path, m))
    }

    fn str_of(&self, s: &Setting) -> anyhow::Result<String> {
        s.value.as_str().map(str::to_string).ok_or_else(|| self.err(s, format!("expected a string, found {}", type_name(&s.value))))
    }

    fn bool_of(&self, s: &Setting) -> anyhow::Result<bool> {
        s.value.as_bool().ok_or_else(|| self.err(s, format!("expected true or false, found {}", type_name(&s.value))))
    }
}

/// What a point sets besides its model, method, teachers and peers.
struct Settings {
    train: Recipe,
    seed: u64,
    save_model: bool,
    exclusive: bool,
    student_from_teacher: bool,
}

/// A student's teachers: the runs they need (trained here), the references the student stores,
/// and the ids it waits for.
type Teachers = (Vec<RunSpec>, Vec<TeacherRef>, Vec<String>);

impl Suite {
    /// Resolves one grid point into (teacher runs trained here, student run), phase by phase:
    /// student and method, the point's settings, teachers, checks across them, online peers.
    pub(super) fn resolve(&self, point: &[Setting], data: &DataRef, info: &data::DatasetInfo) -> anyhow::Result<(Vec<RunSpec>, PlannedRun)> {
        let pt = Point { suite: self, settings: point, data, info };
        let student = pt.get("student").ok_or_else(|| {
            input(format!("{}: the grid sets no `student`; add e.g. `student = [\"resnet8x4\"]` under [grid] or in a `pair` entry", self.src.path.display()))
        })?;
        let model = pt.str_of(student)?;
        check_model_for(&self.src, &student.path, &model, info)?;
        let (method, minfo, mut params) = self.method_of(&pt)?;
        let st = settings_of(&pt, &model, &method, minfo, &mut params)?;
        st.train.check().map_err(|m| pt.err(student, m))?;
        let anchor = pt.get("method").unwrap_or(student);
        let (teacher_runs, teachers, deps) = self.teachers_of(&pt, minfo, (&method, &params), anchor, st.exclusive)?;
        check_teachers(&pt, &method, &model, &teachers, st.student_from_teacher, anchor)?;
        let peers = peers_of(&pt, minfo, &method, anchor)?;
        let mut spec = RunSpec {
            id: String::new(),
            suite: self.name.clone(),
            role: Role::Student,
            dataset: data.clone(),
            model,
            method,
            params,
            train: st.train,
            seed: st.seed,
            teachers,
            peers,
            save_model: st.save_model,
            exclusive: st.exclusive,
            prune: None,
            student_from_teacher: st.student_from_teacher,
        };
        spec.id = spec.compute_id();
        Ok((teacher_runs, PlannedRun { spec, deps }))
    }

    /// The point's method (default `ce`) and its parameters: declared defaults, then `[methods]`.
    fn method_of(&self, pt: &Point<'_>) -> anyhow::Result<(String, &'static distill::MethodInfo, BTreeMap<String, ParamValue>)> {
        let method = match pt.get("method") {
            Some(s) => pt.str_of(s)?,
            None => "ce".to_string(),
        };
        let minfo = match distill::find(&method) {
            Some(m) => m,
            None => {
                let s = pt.get("method").ok_or_else(|| input(format!("unknown method {method}")))?;
                return Err(pt.err(s, unknown("method", &method, &distill::names())));
            }
        };
        let mut params: BTreeMap<String, ParamValue> = minfo.params.iter().map(|p| (p.name.to_string(), p.default.clone())).collect();
        if let Some(over) = self.methods.get(&method) {
            for (k, (v, path)) in over {
                let pv = minfo.check_param(k, v).map_err(|m| input(self.src.error(path, m)))?;
                params.insert(k.clone(), pv);
            }
        }
        Ok((method, minfo, params))
    }

    /// The teachers a student distils from: `teacher = "name"`, `teachers = [..]` (multi-teacher
    /// methods) or a TAKD `chain`, each resolved into the runs it needs.
    fn teachers_of(
        &self,
        pt: &Point<'_>,
        minfo: &distill::MethodInfo,
        how: (&str, &BTreeMap<String, ParamValue>),
        anchor: &Setting,
        exclusive: bool,
    ) -> anyhow::Result<Teachers> {
        let method = how.0;
        let names = teacher_names(pt, minfo, method, anchor)?;
        let (mut teacher_runs, mut teachers, mut deps) = (Vec::new(), Vec::new(), Vec::new());
        let mut add = |runs: Vec<RunSpec>, tref: TeacherRef| {
            if let TeacherRef::Run { id, .. } = &tref {
                deps.push(id.clone());
            }
            teacher_runs.extend(runs);
            teachers.push(tref);
        };
        match pt.get("chain") {
            Some(cs) if minfo.teachers == distill::Teachers::Many => {
                return Err(pt.err(cs, format!("method `{method}` distils from several teachers; a `chain` ends in one")));
            }
            Some(cs) if minfo.teachers != distill::Teachers::None => {
                // TAKD: chain = [top teacher, assistant, ...]; each link after the first is trained
                // with this run's method and parameters from the link before it.
                let arr = cs.value.as_array().ok_or_else(|| pt.err(cs, format!("expected an array of teacher/model names, found {}", type_name(&cs.value))))?;
                let links: Vec<String> = arr
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).ok_or_else(|| pt.err(cs, "expected teacher/model names (strings)".into())))
                    .collect::<anyhow::Result<_>>()?;
                if links.is_empty() {
                    return Err(pt.err(cs, "expected at least one link".into()));
                }
                let ctx = At { at: cs, point: pt.settings, data: pt.data, info: pt.info, exclusive };
                let (runs, tref) = self.chain_run(&links, &ctx, how)?;
                add(runs, tref);
            }
            _ => {
                for (tname, ts) in names {
                    let ctx = At { at: ts, point: pt.settings, data: pt.data, info: pt.info, exclusive };
                    let (runs, tref) = self.teacher_run(&tname, &ctx, None, true, 0)?;
                    add(runs, tref);
                }
            }
        }
        Ok((teacher_runs, teachers, deps))
    }
}

/// Everything else the point sets: recipe keys, seed, flags, and this method's parameters
/// (another method's parameters are checked, then ignored).
fn settings_of(pt: &Point<'_>, model: &str, method: &str, minfo: &distill::MethodInfo, params: &mut BTreeMap<String, ParamValue>) -> anyhow::Result<Settings> {
    let mut st = Settings { train: pt.suite.train.clone(), seed: 0, save_model: false, exclusive: false, student_from_teacher: false };
    for s in pt.settings {
        let k = s.key.as_str();
        if let Some(r) = k.strip_prefix("train.") {
            st.train.set(r, &s.value).map_err(|m| pt.err(s, m))?;
        } else if k == "seed" {
            st.seed = seed_of(&s.value).map_err(|m| pt.err(s, m))?;
        } else if k == "exclusive" {
            st.exclusive = pt.bool_of(s)?;
        } else if k == "student_from_teacher" {
            st.student_from_teacher = pt.bool_of(s)?;
            if st.student_from_teacher && !models::has_width_plan(model) {
                return Err(pt.err(s, format!("student `{model}` has no width plan; `student_from_teacher` works for cnn_small, cnn_tiny and vgg8..vgg19")));
            }
        } else if k == "save_model" {
            st.save_model = pt.bool_of(s)?;
        } else if let Some((m, p)) = k.split_once('.') {
            if m == method {
                let pv = minfo.check_param(p, &s.value).map_err(|e| pt.err(s, e))?;
                params.insert(p.to_string(), pv);
            } else if let Some(other) = distill::find(m) {
                other.check_param(p, &s.value).map_err(|e| pt.err(s, e))?;
            }
        }
    }
    Ok(st)
}

/// `teacher = "name"` or `teachers = ["a", "b", ...]`, checked against how many the method needs.
fn teacher_names<'a>(pt: &Point<'a>, minfo: &distill::MethodInfo, method: &str, anchor: &Setting) -> anyhow::Result<Vec<(String, &'a Setting)>> {
    let mut names: Vec<(String, &Setting)> = Vec::new();
    if let Some(ts) = pt.get("teacher") {
        names.push((pt.str_of(ts)?, ts));
    }
    if let Some(ts) = pt.get("teachers") {
        if !names.is_empty() {
            return Err(pt.err(ts, "set either `teacher` or `teachers`, not both".into()));
        }
        let arr = ts.value.as_array().ok_or_else(|| pt.err(ts, format!("expected an array of teacher names, found {}", type_name(&ts.value))))?;
        for v in arr {
            names.push((v.as_str().ok_or_else(|| pt.err(ts, format!("expected teacher names (strings), found {}", type_name(v))))?.to_string(), ts));
        }
    }
    match minfo.teachers {
        distill::Teachers::None | distill::Teachers::Peers => names.clear(),
        distill::Teachers::One if names.len() != 1 && pt.get("chain").is_none() => {
            return Err(pt.err(
                anchor,
                format!("method `{method}` needs exactly one teacher; set `teacher` in the grid (a [teachers.<name>] entry or a model name)"),
            ));
        }
        distill::Teachers::Many if names.len() < 2 => {
            return Err(pt.err(anchor, format!("method `{method}` needs two or more teachers; set `teachers = [\"a\", \"b\"]` in the grid")));
        }
        _ => {}
    }
    if let Some(cs) = pt.get("chain") {
        if !names.is_empty() {
            return Err(pt.err(cs, "set either `chain` or `teacher`/`teachers`, not both".into()));
        }
    }
    Ok(names)
}

/// Checks across student and teachers: SOKD's bridge, a student formed from its teacher.
fn check_teachers(pt: &Point<'_>, method: &str, model: &str, teachers: &[TeacherRef], from_teacher: bool, anchor: &Setting) -> anyhow::Result<()> {
    if method == "sokd" {
        if let Some(t) = teachers.iter().find(|t| !distill::sokd::has_bridge(t.model())) {
            return Err(pt.err(pt.get("teacher").or(pt.get("chain")).unwrap_or(anchor), distill::sokd::no_bridge(t.model())));
        }
    }
    if let (true, Some(s)) = (from_teacher, pt.get("student_from_teacher")) {
        match teachers {
            [t] if t.model() == model => {}
            [t] => {
                return Err(pt.err(
                    s,
                    format!("a student formed from its teacher has the teacher's architecture: set `student = \"{}\"` (found `{model}`)", t.model()),
                ));
            }
            _ => return Err(pt.err(s, format!("`student_from_teacher` needs exactly one teacher; method `{method}` has {}", teachers.len()))),
        }
    }
    Ok(())
}

/// Online peers: required by online methods, meaningless for the others.
fn peers_of(pt: &Point<'_>, minfo: &distill::MethodInfo, method: &str, anchor: &Setting) -> anyhow::Result<Vec<String>> {
    let mut peers = Vec::new();
    if let Some(ps) = pt.get("peers") {
        if minfo.teachers != distill::Teachers::Peers {
            return Err(pt.err(ps, format!("method `{method}` trains no online peers; `peers` is for dml, switokd, bdkd_online")));
        }
        for v in ps.value.as_array().into_iter().flatten() {
            let m = v.as_str().unwrap_or_default().to_string();
            check_model_for(&pt.suite.src, &ps.path, &m, pt.info)?;
            peers.push(m);
        }
    }
    if minfo.teachers == distill::Teachers::Peers && peers.is_empty() {
        return Err(pt.err(anchor, format!("method `{method}` trains online peers; set `peers = [\"model\", ...]` in the grid")));
    }
    Ok(peers)
}

impl Suite {
    /// Resolves one teacher by name (a `[teachers.*]` entry or a model name) into the runs it
    /// needs (its own teachers first, recursively) and the reference a student stores.
    /// `upstream`: a precomputed (runs, reference, method, params) this teacher distils from
    /// (chains); `direct`: grid keys `teacher.train.*`/`teacher.seed` apply only to direct teachers.
    fn teacher_run(&self, name: &str, ctx: &At, upstream: Option<Upstream>, direct: bool, depth: usize) -> anyhow::Result<(Vec<RunSpec>, TeacherRef)> {
        let (mut runs, tref) = self.dense_teacher_run(name, ctx, upstream, direct, depth)?;
        let (point, data, exclusive) = (ctx.point, ctx.data, ctx.exclusive);
        let decl = self.teachers.get(name);
        let mut prune = decl.and_then(|d| d.prune.clone());
        if direct {
            for s in point {
                if s.key == "teacher.prune.sparsity" || s.key == "teacher.prune.method" {
                    let p = prune.as_mut().ok_or_else(|| {
                        input(self.src.error(&s.path, format!("`{}` needs a pruned teacher, but teacher `{name}` has no `prune` table (add e.g. prune = {{ method = \"prue\", sparsity = 0.5 }} to [teachers.{name}])", s.key)))
                    })?;
                    if s.key == "teacher.prune.sparsity" {
                        p.sparsity = sparsity_of(&s.value).map_err(|m| input(self.src.error(&s.path, m)))?;
                    } else {
                        p.method = prune_method_of(&s.value).map_err(|m| input(self.src.error(&s.path, m)))?;
                    }
                }
            }
        }
        let Some(p) = prune else { return Ok((runs, tref)) };
        // The fine-tuning recipe: the teacher's own, then the `prune.train` overrides.
        let (mut train, seed) = match runs.last() {
            Some(t) if matches!(&tref, TeacherRef::Run { id, .. } if *id == t.id) => (t.train.clone(), t.seed),
            _ => (self.teacher_recipe(decl, point, direct)?, decl.map(|d| d.seed).unwrap_or(0)),
        };
        for (k, v, kp) in &p.train {
            train.set(k, v).map_err(|m| input(self.src.error(kp, m)))?;
        }
        train.check().map_err(|m| input(self.src.error(&p.path, m)))?;
        let (rounds, amount) = if p.method == "prue" {
            (1, p.sparsity)
        } else {
            let n = super::spec::rounds_for(p.sparsity, p.rate);
            if n == 0 {
                return Err(input(self.src.error(
                    &p.path,
                    format!("sparsity {} is closer to 0 than to one round removing {} of the weights; raise `sparsity` or lower `rate`", p.sparsity, p.rate),
                )));
            }
            (n, p.rate)
        };
        let ce = distill::find("ce").ok_or_else(|| input("method `ce` is not registered".to_string()))?;
        let model = tref.model().to_string();
        let mut parent = tref;
        for round in 1..=rounds {
            let mut t = RunSpec {
                id: String::new(),
                suite: self.name.clone(),
                role: Role::Teacher,
                dataset: data.clone(),
                model: model.clone(),
                method: "ce".into(),
                params: ce.defaults(),
                train: train.clone(),
                seed,
                teachers: vec![],
                peers: vec![],
                save_model: true,
                exclusive,
                prune: Some(spec::PruneStage {
                    method: p.method.clone(),
                    amount,
                    round,
                    rounds,
                    target: p.sparsity,
                    batch: if p.method == "prue" { p.batch } else { 0 },
                    parent: parent.clone(),
                }),
                student_from_teacher: false,
            };
            t.id = t.compute_id();
            parent = TeacherRef::Run { id: t.id.clone(), model: model.clone() };
            runs.push(t);
        }
        Ok((runs, parent))
    }

    /// A teacher's recipe: the suite's, its `[teachers.*].train`, then (direct teachers) the grid's
    /// `teacher.train.*` keys.
    fn teacher_recipe(&self, decl: Option<&TeacherDecl>, point: &[Setting], direct: bool) -> anyhow::Result<Recipe> {
        let mut train = self.train.clone();
        for (k, v, p) in decl.map(|d| d.train.clone()).unwrap_or_default() {
            train.set(&k, &v).map_err(|m| input(self.src.error(&p, m)))?;
        }
        if direct {
            for s in point {
                if let Some(r) = s.key.strip_prefix("teacher.train.") {
                    train.set(r, &s.value).map_err(|m| input(self.src.error(&s.path, m)))?;
                }
            }
        }
        Ok(train)
    }

    /// The unpruned teacher (see [`Suite::teacher_run`]).
    fn dense_teacher_run(&self, name: &str, ctx: &At, upstream: Option<Upstream>, direct: bool, depth: usize) -> anyhow::Result<(Vec<RunSpec>, TeacherRef)> {
        let (point, data, info, exclusive) = (ctx.point, ctx.data, ctx.info, ctx.exclusive);
        let err = |m: String| input(self.src.error(&ctx.at.path, m));
        if depth > MAX_CHAIN {
            return Err(err(format!("teacher `{name}` is part of a cycle of teachers distilling from each other")));
        }
        let decl = self.teachers.get(name);
        let tmodel = match decl {
            Some(d) => d.model.clone(),
            None if models::find(name).is_some() => name.to_string(),
            None => {
                let mut allowed: Vec<&str> = self.teachers.keys().map(String::as_str).collect();
                allowed.extend(models::names());
                return Err(err(unknown("teacher", name, &allowed)));
            }
        };
        check_model_for(&self.src, &ctx.at.path, &tmodel, info)?;
        if let Some(ck) = decl.and_then(|d| d.checkpoint.clone()) {
            let decl_path = decl.map(|d| d.path.clone()).unwrap_or_default();
            if self.allow_missing_checkpoints && std::fs::symlink_metadata(&ck).is_err() {
                return Ok((vec![], TeacherRef::Checkpoint { path: ck.display().to_string(), model: tmodel, hash: MISSING_CHECKPOINT.into() }));
            }
            let bytes = crate::files::read(&ck, "teacher checkpoint")
                .map_err(|e| input(self.src.error(&[decl_path, vec![key("checkpoint")]].concat(), format!("{e:#}"))))?;
            return Ok((vec![], TeacherRef::Checkpoint { path: ck.display().to_string(), model: tmodel, hash: blake3::hash(&bytes).to_hex().to_string() }));
        }
        let mut runs = Vec::new();
        let mut refs = Vec::new();
        let (method, params) = match upstream {
            Some((r, t, m, p)) => {
                runs.extend(r);
                refs.push(t);
                (m, p)
            }
            None => {
                let ups = decl.map(|d| d.teachers.clone()).unwrap_or_default();
                let m = decl.and_then(|d| d.method.clone()).unwrap_or_else(|| if ups.is_empty() { "ce".into() } else { "kd".into() });
                let minfo = distill::find(&m).ok_or_else(|| err(unknown("method", &m, &distill::names())))?;
                let ok = match minfo.teachers {
                    distill::Teachers::None => ups.is_empty(),
                    distill::Teachers::One => ups.len() == 1,
                    distill::Teachers::Many => ups.len() >= 2,
                    distill::Teachers::Peers => false,
                };
                if !ok {
                    return Err(err(format!("teacher `{name}` is trained with `{m}` ({:?} teacher(s)), but names {} teacher(s)", minfo.teachers, ups.len())));
                }
                let mut params = minfo.defaults();
                if let Some(over) = self.methods.get(&m) {
                    for (k, (v, path)) in over {
                        params.insert(k.clone(), minfo.check_param(k, v).map_err(|e| input(self.src.error(path, e)))?);
                    }
                }
                for u in &ups {
                    let (r, t) = self.teacher_run(u, ctx, None, false, depth + 1)?;
                    runs.extend(r);
                    refs.push(t);
                }
                (m, params)
            }
        };
        let train = self.teacher_recipe(decl, point, direct)?;
        train.check().map_err(&err)?;
        let mut seed = decl.map(|d| d.seed).unwrap_or(0);
        if direct {
            for s in point.iter().filter(|s| s.key == "teacher.seed") {
                seed = seed_of(&s.value).map_err(|m| input(self.src.error(&s.path, m)))?;
            }
        }
        let mut t = RunSpec {
            id: String::new(),
            suite: self.name.clone(),
            role: Role::Teacher,
            dataset: data.clone(),
            model: tmodel.clone(),
            method,
            params,
            train,
            seed,
            teachers: refs,
            peers: vec![],
            save_model: true,
            exclusive,
            prune: None,
            student_from_teacher: false,
        };
        t.id = t.compute_id();
        let tref = TeacherRef::Run { id: t.id.clone(), model: tmodel };
        runs.push(t);
        Ok((runs, tref))
    }

    /// A TAKD chain `[top, assistant, ...]`: the first link is resolved as a teacher; every later
    /// link is trained with (method, params) from the one before.
    fn chain_run(&self, links: &[String], ctx: &At, how: (&str, &BTreeMap<String, ParamValue>)) -> anyhow::Result<(Vec<RunSpec>, TeacherRef)> {
        let n = links.len();
        if n == 1 {
            return self.teacher_run(&links[0], ctx, None, true, 0);
        }
        let (runs, up) = self.chain_run(&links[..n - 1], ctx, how)?;
        self.teacher_run(&links[n - 1], ctx, Some((runs, up, how.0.to_string(), how.1.clone())), false, n)
    }
}

/// The grid point a teacher is resolved for: the setting that named it (errors point there),
/// the point's settings, the data and whether the student's runs are exclusive.
struct At<'a> {
    at: &'a Setting,
    point: &'a [Setting],
    data: &'a DataRef,
    info: &'a data::DatasetInfo,
    exclusive: bool,
}

/// A chain link's upstream: the runs before it, the link it learns from, and the chain's method
/// and parameters.
type Upstream = (Vec<RunSpec>, TeacherRef, String, BTreeMap<String, ParamValue>);
