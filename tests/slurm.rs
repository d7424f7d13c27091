//! The Slurm executor against a real single-node Slurm (`scripts/slurm.sh up`, which
//! `scripts/test.sh` runs): a digits suite gives the same metrics as the local executor, a student
//! waits for its teacher, a task killed with `scancel` mid-run resumes on a re-run, `harness
//! cancel` cancels a suite's jobs, a requeued task resumes where it was. Without a cluster the cluster test says so and skips, unless
//! `KD_HARNESS_REQUIRE_SLURM` is set (CI), where it fails. Option validation needs no cluster.

mod common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

/// True when a Slurm node is up; otherwise says why the test skips (or fails where required).
fn cluster_up() -> bool {
    let out = std::process::Command::new("sinfo").args(["-h", "-N", "-o", "%T"]).output();
    let state = out.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    if ["idle", "mixed", "allocated"].iter().any(|s| state.starts_with(s)) {
        return true;
    }
    let why = match &out {
        Err(e) => format!("sinfo cannot run ({e})"),
        Ok(o) => format!("sinfo reports `{state}` {}", String::from_utf8_lossy(&o.stderr).trim()),
    };
    if std::env::var_os("KD_HARNESS_REQUIRE_SLURM").is_some() {
        panic!("KD_HARNESS_REQUIRE_SLURM is set but no Slurm node is up: {why}; run scripts/slurm.sh up");
    }
    // Straight to the stderr handle: unlike eprintln!, not swallowed by the test harness's capture.
    let _ = writeln!(std::io::stderr(), "SKIPPED: Slurm executor tests need a Slurm cluster ({why}); `scripts/slurm.sh up` starts one (root)");
    false
}

fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn jobs(results: &Path, suite: &str) -> Vec<serde_json::Value> {
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(results.join(suite).join("slurm/jobs.json")).unwrap()).unwrap();
    j.as_array().unwrap().clone()
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

/// Cancels a suite's Slurm jobs when dropped, so that a failing assertion leaves no stalled task
/// holding a CPU of the cluster.
struct CancelOnDrop<'a>(&'a Path, Vec<String>);

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        for s in &self.1 {
            let _ = harness(&["cancel", s, "--results", "r"], self.0);
        }
    }
}

/// The status line of one run.
fn status_line(dir: &Path, suite: &str, results: &str, id: &str) -> String {
    let o = harness(&["status", suite, "--results", results], dir);
    text(&o).lines().find(|l| l.starts_with(id)).unwrap_or_default().to_string()
}

#[test]
fn slurm_runs_match_local_wait_for_teachers_and_resume_after_scancel_cancel_and_requeue() {
    if !cluster_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = write(dir, "s.toml", TINY_KD_SUITE);
    let c = write(
        dir,
        "c.toml",
        "[suite]\nname = \"c\"\ndataset = \"digits\"\n[train]\nepochs = 3\nbatch_size = 128\nmilestones = []\n[grid]\nstudent = [\"mlp\"]\n",
    );
    let _cleanup = CancelOnDrop(dir, vec![s.clone(), c.clone()]);
    let runs = ids(dir, &s);
    assert_eq!(runs.len(), 3, "{runs:?}");
    let teacher = runs.iter().find(|r| r.1 == "teacher").unwrap().0.clone();
    let kd = runs.iter().find(|r| r.2 == "kd").unwrap().0.clone();
    let run_dir = |results: &str, id: &str| -> PathBuf { dir.join(results).join("s/runs").join(id) };

    // The reference: the local executor, one thread per run (as each Slurm task gets).
    let o = harness(&["run", &s, "--results", "local", "--devices", "cpu", "--threads", "1"], dir);
    assert!(o.status.success(), "{}", text(&o));

    // Submit with the teacher stalling after epoch 2 (its resume state is on disk by then), and
    // cancel its array task with scancel while it runs (one run per task here: in a cohort the
    // ce baseline would share the teacher's task).
    let o = harness_cmd(&["run", &s, "--results", "r", "--executor", "slurm", "--threads", "1", "--no-cohort"], dir)
        .env("KD_HARNESS_FAULT", format!("stall:{teacher}:2"))
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success() && t.contains("submitted level 0") && t.contains("submitted level 1"), "{t}");
    let teacher_dir = run_dir("r", &teacher);
    wait_until("the teacher's epoch-2 resume state", 180, || teacher_dir.join("resume-e2.safetensors").exists());
    let first = jobs(&dir.join("r"), "s");
    assert_eq!(first.len(), 2, "one job array per DAG level: {first:?}");
    let level0 = first[0]["job_id"].as_str().unwrap().to_string();
    let level1 = first[1]["job_id"].as_str().unwrap().to_string();
    assert!(first[1]["sbatch"].as_array().unwrap().iter().any(|a| a.as_str() == Some(&format!("--dependency=afterok:{level0}"))), "{first:?}");
    let idx = first[0]["runs"].as_array().unwrap().iter().position(|r| r.as_str() == Some(&teacher)).unwrap();
    let line = status_line(dir, &s, "r", &teacher);
    assert!(line.contains(&format!("{level0}_{idx}")) && line.contains("RUNNING") && line.contains("running"), "{line}");
    // While the teacher runs, Slurm holds its student back.
    let line = status_line(dir, &s, "r", &kd);
    assert!(line.contains(&format!("{level1}_0")) && line.contains("PENDING(Dependency)"), "{line}");
    let o = std::process::Command::new("scancel").arg(format!("{level0}_{idx}")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // The student's array depends on the whole teacher level, so Slurm cancels it unstarted.
    wait_until("the kd student's job to be cancelled", 120, || status_line(dir, &s, "r", &kd).contains("CANCELLED"));
    let line = status_line(dir, &s, "r", &teacher);
    assert!(line.contains("CANCELLED") && !line.contains(" done ") && !line.contains("running"), "{line}");
    assert!(!teacher_dir.join("summary.json").exists() && teacher_dir.join("lock").exists(), "the teacher was killed mid-run");
    assert!(!run_dir("r", &kd).join("log.txt").exists(), "the kd student's task started although its teacher had not finished");

    let ce = runs.iter().find(|r| r.1 == "student" && r.2 == "ce").unwrap().0.clone();
    wait_until("the ce student (level 0, no teacher) to finish", 120, || status_line(dir, &s, "r", &ce).contains("COMPLETED"));
    // A plain re-run resubmits the unfinished runs; the teacher resumes after epoch 2.
    let o = harness(&["run", &s, "--results", "r", "--executor", "slurm", "--threads", "1", "--wait"], dir);
    let t = text(&o);
    assert!(o.status.success() && t.contains("2 finished now, 1 cached, 0 failed, 0 skipped"), "{t}");
    let log = std::fs::read_to_string(teacher_dir.join("log.txt")).unwrap();
    assert!(log.contains(&format!("resuming run {teacher} after epoch 2")), "{log}");
    let second = jobs(&dir.join("r"), "s");
    assert_eq!(second.len(), 4, "{second:?}");
    assert_ne!(second[3]["job_id"].as_str().unwrap(), level1);
    // The student's task started only once its teacher had finished.
    let log = std::fs::read_to_string(run_dir("r", &kd).join("log.txt")).unwrap();
    let started: u64 = log.lines().find_map(|l| l.split("starts at unix time ").nth(1)).and_then(|t| t.trim().parse().ok()).unwrap_or_else(|| panic!("{log}"));
    let finished = summary(&teacher_dir)["finished_unix"].as_u64().unwrap();
    assert!(started >= finished, "the kd student started at {started}, before its teacher finished at {finished}");

    // Every run has the local executor's metrics, epoch by epoch.
    for (id, _, _) in &runs {
        let (a, b) = (run_dir("r", id), run_dir("local", id));
        assert_eq!(metrics_without_timing(&a.join("metrics.csv")), metrics_without_timing(&b.join("metrics.csv")), "{id}");
        let (sa, sb) = (summary(&a), summary(&b));
        for k in ["best_top1", "best_epoch", "last_top1", "last_top5", "last_ece", "last_test_loss", "agreement", "pred_kl"] {
            assert_eq!(sa[k], sb[k], "{id} {k}");
        }
    }
    let o = harness(&["status", &s, "--results", "r"], dir);
    let st = text(&o);
    assert!(st.contains("s: 3 done") && st.contains("slurm state") && st.matches("COMPLETED").count() == 3, "{st}");
    let o = harness(&["run", &s, "--results", "r", "--executor", "slurm", "--wait"], dir);
    assert!(o.status.success() && text(&o).contains("0 finished now, 3 cached"), "{}", text(&o));

    // In cohorts (the default), the teacher and the ce baseline share one array task, with the
    // local executor's metrics.
    let o = harness(&["run", &s, "--results", "rc", "--executor", "slurm", "--threads", "1", "--wait"], dir);
    assert!(o.status.success() && text(&o).contains("3 finished now"), "{}", text(&o));
    let level0 = &jobs(&dir.join("rc"), "s")[0];
    assert_eq!(level0["tasks"].as_array().unwrap().len(), 1, "one task for the level's cohort: {level0:?}");
    for (id, _, _) in &runs {
        let (a, b) = (run_dir("rc", id), run_dir("local", id));
        assert_eq!(metrics_without_timing(&a.join("metrics.csv")), metrics_without_timing(&b.join("metrics.csv")), "{id}");
    }

    // `harness cancel` stops a suite's running task; the run stays resumable.
    let id = ids(dir, &c)[0].0.clone();
    let o = harness(&["run", &c, "--results", "local", "--devices", "cpu", "--threads", "1"], dir);
    assert!(o.status.success(), "{}", text(&o));
    let submit_stalling_at = |epoch: u32| {
        let o = harness_cmd(&["run", &c, "--results", "r", "--executor", "slurm", "--threads", "1"], dir)
            .env("KD_HARNESS_FAULT", format!("stall:{id}:{epoch}"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        jobs(&dir.join("r"), "c").last().unwrap()["job_id"].as_str().unwrap().to_string()
    };
    let job = submit_stalling_at(1);
    let run = dir.join("r/c/runs").join(&id);
    wait_until("epoch 1 of the run to cancel", 120, || run.join("resume-e1.safetensors").exists());
    let o = harness_cmd(&["run", &c, "--results", "r", "--executor", "slurm"], dir).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "a second submission while the first is queued is refused: {}", text(&o));
    assert!(text(&o).contains("still has Slurm tasks in the queue") && text(&o).contains(&format!("{job}_0")), "{}", text(&o));
    let o = harness(&["cancel", &c, "--results", "r"], dir);
    assert!(o.status.success() && text(&o).contains(&format!("cancelled Slurm job(s) {job}")), "{}", text(&o));
    wait_until("the cancelled run's process to end", 60, || {
        let l = status_line(dir, &c, "r", &id);
        l.contains("CANCELLED") && l.contains(" pending ")
    });
    assert!(!run.join("summary.json").exists());
    let o = harness(&["cancel", &c, "--results", "r"], dir);
    assert!(o.status.success() && text(&o).contains("no queued or running Slurm jobs"), "{}", text(&o));

    // Resubmitted, it resumes after epoch 1; requeued by Slurm after epoch 2 (as preemption does),
    // the same task resumes after epoch 2 and ends with the local executor's metrics.
    let job = submit_stalling_at(2);
    wait_until("epoch 2 of the run to requeue", 120, || run.join("resume-e2.safetensors").exists());
    let scontrol = |args: &[&str]| {
        let o = std::process::Command::new("scontrol").args(args).output().unwrap();
        assert!(o.status.success(), "scontrol {args:?}: {}", text(&o));
    };
    scontrol(&["requeue", &format!("{job}_0")]);
    // Slurm 22.05 delays a requeued job's start by two minutes; start it now instead.
    wait_until("the requeued task to be pending", 60, || {
        let l = status_line(dir, &c, "r", &id);
        l.contains("PENDING") || l.contains("COMPLETED")
    });
    // (Where Slurm does not delay it, the task may already have started: nothing to update then.)
    let _ = std::process::Command::new("scontrol").args(["update", &format!("JobId={job}_0"), "StartTime=now"]).output();
    wait_until("the requeued task to finish", 120, || status_line(dir, &c, "r", &id).contains("COMPLETED"));
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains(&format!("resuming run {id} after epoch 1")) && log.contains(&format!("resuming run {id} after epoch 2")), "{log}");
    assert_eq!(log.matches(&format!("slurm task {job}_0 on ")).count(), 2, "{log}");
    let local = dir.join("local/c/runs").join(&id);
    assert_eq!(metrics_without_timing(&run.join("metrics.csv")), metrics_without_timing(&local.join("metrics.csv")));
    assert_eq!(summary(&run)["last_top1"], summary(&local)["last_top1"]);
}

#[test]
fn slurm_options_are_validated_before_anything_is_submitted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = write(dir, "s.toml", TINY_KD_SUITE);
    let bad = |args: &[&str], want: &[&str]| {
        let mut a = vec!["run", s.as_str(), "--results", "r"];
        a.extend_from_slice(args);
        let o = harness(&a, dir);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        for w in want {
            assert!(text(&o).contains(w), "{args:?}: expected `{w}` in: {}", text(&o));
        }
    };
    bad(&["--partition", "gpu"], &["--partition applies to --executor slurm only"]);
    bad(&["--wait"], &["--wait applies to --executor slurm only"]);
    bad(&["--executor", "slurm", "--time", "1h"], &["--time", "HH:MM:SS", "`1h`"]);
    bad(&["--executor", "slurm", "--array-limit", "0"], &["--array-limit", "at least 1"]);
    bad(&["--executor", "slurm", "--sbatch-arg=--array=0-3"], &["--sbatch-arg", "`--array` is set by the executor"]);
    bad(&["--executor", "slurm", "--jobs", "2"], &["--jobs applies to the local executor", "--array-limit"]);
    bad(&["--executor", "slurm", "--devices", "cpu"], &["--devices applies to the local executor", "--gres"]);
    assert!(!dir.join("r/sl/slurm").exists(), "nothing may be written for rejected options");

    let suite_err = |extra: &str, want: &[&str]| {
        let p = write(dir, "bad.toml", &format!("{TINY_KD_SUITE}\n{extra}"));
        let o = harness(&["plan", &p], dir);
        assert_eq!(o.status.code(), Some(2), "{extra}: {}", text(&o));
        for w in want {
            assert!(text(&o).contains(w), "{extra}: expected `{w}` in: {}", text(&o));
        }
    };
    let line = TINY_KD_SUITE.lines().count() + 3; // TINY_KD_SUITE, a blank line, `[executor.slurm]`, then the key
    suite_err("[executor.slurm]\npartiton = \"gpu\"\n", &[&format!("bad.toml:{line}:"), "executor.slurm.partiton", "did you mean `partition`"]);
    suite_err("[executor.slurm]\narray_limit = 0\n", &["executor.slurm.array_limit", "expected a positive integer"]);
    suite_err("[executor.slurm]\ntime = \"2 hours\"\n", &["executor.slurm.time", "Slurm time limit"]);
    suite_err("[executor.slurm]\nsbatch_args = \"--qos=high\"\n", &["executor.slurm.sbatch_args", "expected an array of strings"]);
    suite_err("[executor.slurm]\nsbatch_args = [\"--dependency=afterok:1\"]\n", &["executor.slurm.sbatch_args", "`--dependency` is set by the executor"]);
    suite_err("[executor.slurmm]\npartition = \"gpu\"\n", &["executor.slurmm", "did you mean `slurm`"]);
    // Valid options parse, and the command line overrides them key by key.
    let p = write(
        dir,
        "ok.toml",
        &format!("{TINY_KD_SUITE}\n[executor.slurm]\npartition = \"gpu\"\ntime = \"01:00:00\"\narray_limit = 4\nsbatch_args = [\"--qos=high\"]\n"),
    );
    let suite = harness::suite::Suite::load(Path::new(&p)).unwrap();
    let flags = harness::suite::executor::SlurmOptions { time: Some("02:00:00".into()), sbatch_args: vec!["--account=lab".into()], ..Default::default() };
    let m = suite.slurm.merged(&flags);
    assert_eq!((m.partition.as_deref(), m.time.as_deref(), m.array_limit), (Some("gpu"), Some("02:00:00"), Some(4)));
    assert_eq!(m.sbatch_args, vec!["--qos=high".to_string(), "--account=lab".to_string()]);
    // Only a GPU request puts the runs on a GPU.
    assert!(!m.wants_gpu());
    let gpu = |o: harness::suite::executor::SlurmOptions| o.wants_gpu();
    assert!(gpu(harness::suite::executor::SlurmOptions { gres: Some("gpu:a100:1".into()), ..Default::default() }));
    assert!(gpu(harness::suite::executor::SlurmOptions { sbatch_args: vec!["--gpus-per-task=1".into()], ..Default::default() }));
    assert!(!gpu(harness::suite::executor::SlurmOptions { gres: Some("nvme:1".into()), ..Default::default() }));
}

#[test]
fn dag_levels_follow_teacher_chains_and_skip_finished_runs() {
    let text = "[suite]\nname = \"ch\"\ndataset = \"digits\"\n[teachers.t]\nmodel = \"cnn_small\"\n[grid]\npair = [{ student = \"mlp\", method = \"ce\" }, { chain = [\"t\", \"cnn_tiny\"], student = \"mlp\", method = \"kd\" }]\n";
    let suite = harness::suite::Suite::parse(Path::new("ch.toml"), text.to_string()).unwrap();
    let plan = suite.expand(&harness::suite::DataRef { name: "digits".into(), fingerprint: "fp".into() }).unwrap();
    let by_model = |finished: &[bool]| -> Vec<(String, Option<usize>)> {
        let l = harness::sched::slurm::levels(&plan, finished);
        plan.runs.iter().zip(l).map(|(r, l)| (format!("{} {}", r.spec.model, r.spec.method), l)).collect()
    };
    let mut all = by_model(&vec![false; plan.runs.len()]);
    all.sort();
    assert_eq!(
        all,
        vec![("cnn_small ce".to_string(), Some(0)), ("cnn_tiny kd".to_string(), Some(1)), ("mlp ce".to_string(), Some(0)), ("mlp kd".to_string(), Some(2))]
    );
    // With the first teacher finished, the assistant moves to level 0 and the student to 1.
    let done: Vec<bool> = plan.runs.iter().map(|r| r.spec.model == "cnn_small").collect();
    let mut rest = by_model(&done);
    rest.sort();
    assert_eq!(
        rest,
        vec![("cnn_small ce".to_string(), None), ("cnn_tiny kd".to_string(), Some(0)), ("mlp ce".to_string(), Some(0)), ("mlp kd".to_string(), Some(1))]
    );
}

/// The teacher gate under Slurm: the student's task compares its finished teacher with the
/// suite's published value when it starts and records the student as skipped with both numbers;
/// `--force` submits without the gate and the student trains.
#[test]
fn a_trained_teacher_outside_its_published_value_skips_its_students_under_slurm() {
    if !cluster_up() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = write(
        dir,
        "g.toml",
        r#"
[suite]
name = "g"
dataset = "digits"
[train]
epochs = 1
batch_size = 128
milestones = []
[teachers.t]
model = "cnn_tiny"
[grid]
pair = [{ teacher = "t", student = "mlp" }]
method = ["kd"]
[[expected]]
student = "cnn_tiny"
method = "ce"
top1 = 99.9
metric = "last"
source = "a test"
[report]
expected_tolerance = 0.05
"#,
    );
    let _cleanup = CancelOnDrop(dir, vec![g.clone()]);
    let runs = ids(dir, &g);
    let student = runs.iter().find(|r| r.1 == "student").unwrap().0.clone();
    let o = harness(&["run", &g, "--results", "r", "--executor", "slurm", "--threads", "1", "--wait"], dir);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("expected 99.90 ± 0.05 ([[expected]])"), "{t}");
    assert!(!dir.join("r/g/runs").join(&student).join("summary.json").exists(), "the student must not train");
    let line = status_line(dir, &g, "r", &student);
    assert!(line.contains("skipped") && line.contains("99.90"), "{line}");
    let o = harness(&["run", &g, "--results", "r", "--executor", "slurm", "--threads", "1", "--wait", "--force"], dir);
    assert!(o.status.success(), "{}", text(&o));
    assert!(dir.join("r/g/runs").join(&student).join("summary.json").exists());
}
