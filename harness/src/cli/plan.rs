//! `plan`, `status`, `cancel`: what a suite will run, is running, or has queued.

use super::*;

pub(super) fn plan_cmd(a: PlanArgs) -> anyhow::Result<i32> {
    let (suite, plan, waiting) = load_plan_waiting(&a.suite, a.data.data_dir.as_deref())?;
    let missing = suite.missing_checkpoints();
    check_checkpoints(&suite, &plan)?;
    println!(
        "suite {} ({}): {} runs = {} teachers + {} students, from {} grid points",
        plan.suite,
        suite.path().display(),
        plan.runs.len(),
        plan.teachers(),
        plan.students(),
        plan.points
    );
    if let Some(m) = &waiting {
        println!("waiting for data: dataset {} not found (looked in {} for {})", suite.dataset, m.looked_in.display(), m.expected);
        println!("  to get it: {}", m.how);
        println!("  ids marked ~ are provisional: a run id includes the data's fingerprint, known once the data is there");
    }
    for (name, path) in &missing {
        println!("waiting for teacher `{name}`: checkpoint {} does not exist yet", path.display());
    }
    if !missing.is_empty() {
        println!("  to get mdistiller's released CIFAR-100 teachers: scripts/convert_released_teachers.sh cifar_teachers.tar (see README, Released teachers)");
        println!("  ids marked ~ are provisional: a student's id includes its teacher checkpoint's hash");
    }
    for line in sched::gate::teacher_lines(&plan, &sched::gate::Gate::new(&suite), &a.results) {
        println!("{line}");
    }
    let provisional = |s: &crate::suite::RunSpec| {
        waiting.is_some() || s.teachers.iter().any(|t| matches!(t, crate::suite::TeacherRef::Checkpoint { hash, .. } if hash == crate::suite::MISSING_CHECKPOINT))
    };
    // Columns as wide as the longest name (`mobilenetv2_tinyimagenet`), at least 12.
    let mw = plan.runs.iter().map(|r| r.spec.model.len()).max().unwrap_or(0).max(12);
    let tw = plan.runs.iter().map(|r| r.spec.teacher_models().len()).max().unwrap_or(0).max(12);
    println!("{:<16} {:<7} {:<mw$} {:<tw$} {:<6} {:>4}  {:<8} settings", "id", "role", "model", "teacher", "method", "seed", "status");
    for r in &plan.runs {
        let s = &r.spec;
        let status = match (&waiting, crate::store::verify::check(&crate::store::RunDir::new(&a.results, &plan.suite, &s.id), s)) {
            (Some(_), _) => "no data",
            _ if provisional(s) => "no teacher",
            (None, crate::store::verify::Health::Finished(_)) => "done",
            (None, crate::store::verify::Health::Damaged(_)) => "damaged",
            (None, _) => "pending",
        };
        let id = if provisional(s) { format!("~{}", s.id.get(..15).unwrap_or(&s.id)) } else { s.id.clone() };
        let role = if s.role == Role::Teacher { "teacher" } else { "student" };
        let mut params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if s.train.label_smoothing > 0.0 {
            params.push(format!("label_smoothing={}", s.train.label_smoothing));
        }
        if s.train.mixup_alpha > 0.0 {
            params.push(format!("mixup_alpha={}", s.train.mixup_alpha));
        }
        if !s.peers.is_empty() {
            params.push(format!("peers={}", s.peers.join("+")));
        }
        println!(
            "{:<16} {:<7} {:<mw$} {:<tw$} {:<6} {:>4}  {:<8} epochs={} bs={} lr={} {}",
            id,
            role,
            s.model,
            if s.teachers.is_empty() { "-".to_string() } else { s.teacher_models() },
            s.method,
            s.seed,
            status,
            s.train.epochs,
            s.train.batch_size,
            s.train.lr,
            params.join(" ")
        );
    }
    Ok(0)
}

pub(super) fn status_cmd(a: PlanArgs) -> anyhow::Result<i32> {
    let (suite, plan, _) = load_plan(&a.suite, a.data.data_dir.as_deref())?;
    for line in sched::gate::teacher_lines(&plan, &sched::gate::Gate::new(&suite), &a.results) {
        println!("{line}");
    }
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    // A suite submitted to Slurm also shows each run's job array task and its Slurm state.
    let submitted = !sched::slurm::read_jobs(&a.results, &plan.suite)?.is_empty();
    let tasks = if submitted {
        // The harness's own states stand without Slurm (e.g. on a machine without its client).
        sched::slurm::run_tasks(&a.results, &plan.suite).unwrap_or_else(|e| {
            eprintln!("warning: cannot read the Slurm states: {e:#}");
            Default::default()
        })
    } else {
        Default::default()
    };
    if submitted {
        println!("{:<16} {:<8} {:<34} {:<12} {:<12} detail", "id", "state", "run", "slurm job", "slurm state");
    } else {
        println!("{:<16} {:<8} {:<34} detail", "id", "state", "run");
    }
    for i in 0..plan.runs.len() {
        let (state, detail) = sched::state_of(&plan, &a.results, i);
        let (id, label) = (&plan.runs[i].spec.id, plan.runs[i].spec.label());
        if submitted {
            let (job, st) = match tasks.get(id) {
                Some(t) if t.reason.is_empty() || t.reason == "None" => (t.task.clone(), t.state.clone()),
                Some(t) => (t.task.clone(), format!("{}({})", t.state, t.reason)),
                None => ("-".into(), "-".into()),
            };
            println!("{id:<16} {state:<8} {label:<34} {job:<12} {st:<12} {detail}");
        } else {
            println!("{id:<16} {state:<8} {label:<34} {detail}");
        }
        *counts.entry(state).or_default() += 1;
    }
    let c: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!("{}: {}", plan.suite, c.join(", "));
    Ok(0)
}

pub(super) fn cancel_cmd(a: PlanArgs) -> anyhow::Result<i32> {
    let suite = Suite::load(&a.suite)?;
    let jobs = sched::slurm::cancel(&a.results, &suite.name)?;
    if jobs.is_empty() {
        println!("{}: no queued or running Slurm jobs", suite.name);
    } else {
        println!("{}: cancelled Slurm job(s) {}; `harness run` resumes the unfinished runs", suite.name, jobs.join(", "));
    }
    Ok(0)
}
