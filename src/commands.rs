//! What each subcommand does. `main` parses the command line and calls [`dispatch`]; every
//! path ends in an exit code from the table in `outcome`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::adhoc;
use crate::cli::{Command, DemoArgs, InjectArgs, RunArgs, RunnerArgs, StateArgs, VarArgs};
use crate::engine::{self, RealBackend, RunContext, RunReport, interrupt};
use crate::experiment::{Diagnostics, Overrides, Source};
use crate::outcome::{EXIT_ERROR, EXIT_INVALID_INPUT, Outcome};
use crate::plan::Plan;
use crate::report::journal::Journal;
use crate::report::{self, RunRecord, RunView};
use crate::state::{StateDir, recover};
use crate::watchdog::Watchdog;

pub async fn dispatch(command: Command) -> u8 {
    match command {
        Command::Run(args) => run(args).await,
        Command::Inject(args) => inject(*args).await,
        Command::Validate { files, vars } => match overrides(&vars) {
            Ok(overrides) => validate(&files, &overrides),
            Err(code) => code,
        },
        Command::Plan { file, json, vars } => match overrides(&vars) {
            Ok(overrides) => plan(&file, json, &overrides),
            Err(code) => code,
        },
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::plan::schema::json_schema())
                    .expect("schema serialises")
            );
            0
        }
        Command::Recover {
            state,
            include_active,
        } => recover_command(&state, include_active),
        Command::Status { state, json } => status(&state, json),
        Command::Doctor { netns, json } => {
            let mut report =
                crate::doctor::examine(netns.clone().map(crate::sys::netns::Netns::Named).as_ref());
            report.checks.extend(crate::doctor::container_checks());
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serialises")
                );
            } else {
                print!("{}", report.render());
            }
            0
        }
        Command::Report {
            journals,
            out,
            name,
        } => report_command(&journals, out, name),
        Command::DemoTarget(args) => demo(args).await,
    }
}

fn report_command(journals: &[PathBuf], out: Option<PathBuf>, name: Option<String>) -> u8 {
    let mut runs = Vec::new();
    for path in journals {
        match RunRecord::read(path) {
            Ok(record) => runs.push(RunView::from_record(&record)),
            Err(e) => {
                crate::say!("faultline: cannot read the journal {}: {e}", path.display());
                return EXIT_INVALID_INPUT;
            }
        }
    }
    let stem = name.unwrap_or_else(|| match journals {
        [one] => one
            .file_stem()
            .map_or("report".into(), |s| s.to_string_lossy().into_owned()),
        _ => "game-day".into(),
    });
    let dir = out.unwrap_or_else(|| {
        journals[0]
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    });
    match write_reports(&dir, &stem, &runs) {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            0
        }
        Err(message) => {
            crate::say!("faultline: {message}");
            EXIT_ERROR
        }
    }
}

/// Every report format for `runs`, as `<dir>/<stem>.<extension>`; returns the paths.
fn write_reports(dir: &Path, stem: &str, runs: &[RunView]) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for reporter in report::reporters() {
        let path = dir.join(format!("{stem}.{}", reporter.extension()));
        std::fs::create_dir_all(dir)
            .and_then(|()| report::write_private(&path, reporter.render(stem, runs).as_bytes()))
            .map_err(|e| format!("cannot write the report {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn state_dir(args: &StateArgs) -> StateDir {
    StateDir::new(
        args.state_dir
            .clone()
            .unwrap_or_else(StateDir::default_location),
    )
}

fn load(path: &Path, overrides: &Overrides) -> Result<Plan, Diagnostics> {
    crate::plan::load_plan_with(path, overrides)
}

/// The `--var` arguments, or the exit code after saying what is wrong with them.
fn overrides(args: &VarArgs) -> Result<Overrides, u8> {
    Overrides::from_assignments(&args.vars).map_err(|e| {
        crate::say!("faultline: {e}; nothing was run");
        EXIT_INVALID_INPUT
    })
}

fn print_diagnostics(diagnostics: &Diagnostics) {
    use std::io::IsTerminal;
    eprint!("{}", diagnostics.render(std::io::stderr().is_terminal()));
}

fn validate(files: &[PathBuf], overrides: &Overrides) -> u8 {
    let mut code = 0;
    for file in files {
        match load(file, overrides) {
            Ok(plan) => println!(
                "ok: {} ({} fault{}, {} probe{})",
                file.display(),
                plan.faults.len(),
                if plan.faults.len() == 1 { "" } else { "s" },
                plan.probes.len(),
                if plan.probes.len() == 1 { "" } else { "s" },
            ),
            Err(diagnostics) => {
                print_diagnostics(&diagnostics);
                code = EXIT_INVALID_INPUT;
            }
        }
    }
    code
}

fn plan(file: &Path, json: bool, overrides: &Overrides) -> u8 {
    match load(file, overrides) {
        Ok(plan) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan).expect("plans serialise")
            );
            0
        }
        Ok(plan) => {
            print!("{}", crate::view::render(&plan));
            0
        }
        Err(diagnostics) => {
            print_diagnostics(&diagnostics);
            EXIT_INVALID_INPUT
        }
    }
}

fn recover_command(args: &StateArgs, include_active: bool) -> u8 {
    let state = state_dir(args);
    match recover::recover(&state, include_active) {
        Ok(report) => {
            print_recover_report(&state, &report);
            if report.clean() {
                0
            } else {
                Outcome::RevertFailed.exit_code()
            }
        }
        Err(e) => {
            crate::say!("faultline recover: {e}");
            EXIT_ERROR
        }
    }
}

fn print_recover_report(state: &StateDir, report: &recover::RecoverReport) {
    for (record, summary) in &report.reverted {
        println!(
            "recovered {} (fault {} of {}, run {}): {summary}",
            record.id, record.fault_id, record.experiment, record.run_id
        );
    }
    for record in &report.active {
        println!(
            "left alone {}: its run (pid {}) is still going; wait for it, or use --include-active",
            record.id, record.owner.pid
        );
    }
    for (record, error) in &report.failed {
        crate::say!(
            "REVERT FAILED {} (fault {} of {}): {error}\n  the host still carries: {}\n  fix the cause and run `faultline recover --state-dir {}` again",
            record.id,
            record.fault_id,
            record.experiment,
            record.revert.describe(),
            state.root().display()
        );
    }
    for problem in &report.unreadable {
        crate::say!(
            "UNREADABLE {problem}\n  inspect it by hand; delete it once the host is known to be clean"
        );
    }
    if report.reverted.is_empty()
        && report.failed.is_empty()
        && report.unreadable.is_empty()
        && report.active.is_empty()
    {
        println!("nothing to recover in {}", state.root().display());
    }
}

fn status(args: &StateArgs, json: bool) -> u8 {
    let state = state_dir(args);
    match recover::status(&state) {
        Ok((live, unreadable)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&live).expect("records serialise")
                );
            } else if live.is_empty() && unreadable.is_empty() {
                println!("no live faults in {}", state.root().display());
            } else {
                for entry in &live {
                    let r = &entry.record;
                    println!(
                        "{}  {}/{}  {}  since {}  owner pid {} ({})  revert: {}",
                        r.id,
                        r.experiment,
                        r.fault_id,
                        r.summary,
                        r.recorded_at,
                        r.owner.pid,
                        if entry.owner_alive {
                            "running"
                        } else {
                            "gone: run `faultline recover`"
                        },
                        r.revert.describe()
                    );
                }
                for problem in &unreadable {
                    println!("unreadable: {problem}");
                }
            }
            0
        }
        Err(e) => {
            crate::say!("faultline status: {e}");
            EXIT_ERROR
        }
    }
}

/// Before a run: faults left by a crashed run are reverted now (the host comes back before
/// anything new is injected); if that fails, or another run is live, refuse to start.
fn settle_leftovers(state: &StateDir) -> Result<(), (Outcome, String)> {
    let (live, unreadable) =
        recover::status(state).map_err(|e| (Outcome::NotReady, e.to_string()))?;
    if let Some(active) = live.iter().find(|e| e.owner_alive) {
        return Err((
            Outcome::NotReady,
            format!(
                "another faultline run (pid {}) holds live faults in {}; wait for it to finish, or use another --state-dir",
                active.record.owner.pid,
                state.root().display()
            ),
        ));
    }
    if live.is_empty() && unreadable.is_empty() {
        return Ok(());
    }
    crate::say!(
        "faultline: {} fault(s) left behind by an earlier run that did not finish; reverting them first",
        live.len() + unreadable.len()
    );
    let report =
        recover::recover(state, false).map_err(|e| (Outcome::RevertFailed, e.to_string()))?;
    print_recover_report(state, &report);
    if report.clean() {
        Ok(())
    } else {
        Err((
            Outcome::RevertFailed,
            format!(
                "unrecovered faults remain in {}; fix them (see above) and run `faultline recover --state-dir {}` before starting a new run",
                state.root().display(),
                state.root().display()
            ),
        ))
    }
}

async fn run(args: RunArgs) -> u8 {
    // Every file is checked before anything runs: a typo in the third experiment of a game
    // day must not surface after the first two have broken things.
    let overrides = match overrides(&args.vars) {
        Ok(overrides) => overrides,
        Err(code) => return code,
    };
    let mut plans = Vec::new();
    let mut invalid = false;
    if args.files.is_empty() {
        match crate::plan::plan_source(&Source::quickstart(), &overrides) {
            Ok(plan) => plans.push(plan),
            Err(d) => {
                print_diagnostics(&d);
                invalid = true;
            }
        }
    }
    for file in &args.files {
        match load(file, &overrides) {
            Ok(plan) => plans.push(plan),
            Err(d) => {
                print_diagnostics(&d);
                invalid = true;
            }
        }
    }
    if invalid {
        crate::say!("faultline: invalid input; nothing was run");
        return EXIT_INVALID_INPUT;
    }
    run_plans(plans, &args.runner).await
}

/// Run validated plans in order (a game day when there are several) and write the reports.
async fn run_plans(plans: Vec<Plan>, options: &RunnerArgs) -> u8 {
    // Every experiment's secrets are read before anything runs, like its file.
    let mut secrets = Vec::with_capacity(plans.len());
    for plan in &plans {
        match crate::secrets::Secrets::read(&plan.secrets) {
            Ok(values) => {
                crate::secrets::hide(&values);
                secrets.push(values);
            }
            Err(e) => {
                crate::say!("faultline: {}: {e}; nothing was run", plan.source.display());
                return EXIT_INVALID_INPUT;
            }
        }
    }
    let state = state_dir(&options.state);
    let report_dir = options
        .report_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("faultline-reports"));
    for plan in &plans {
        for warning in fills_own_records(plan, state.root(), &report_dir) {
            crate::say!("faultline: warning: {warning}");
        }
    }
    if let Err((outcome, message)) = settle_leftovers(&state) {
        crate::say!("faultline: refusing to start: {message}");
        return outcome.exit_code();
    }

    let (handle, interrupt) = interrupt::channel();
    if let Err(e) = interrupt::install_signal_handlers(handle) {
        crate::say!(
            "faultline: cannot install signal handlers, so Ctrl-C could not revert faults: {e}"
        );
        return EXIT_ERROR;
    }
    // After the leftovers are settled (so it never sees another run's records as ours) and
    // before the first fault.
    let mut watchdog = if !options.no_watchdog {
        match Watchdog::start(&state) {
            Ok(watchdog) => Some(watchdog),
            Err(e) => {
                crate::say!(
                    "faultline: warning: no watchdog ({e}): if faultline is killed, its faults \
                     stay until `faultline recover`"
                );
                None
            }
        }
    } else {
        None
    };

    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let game_day = format!("{stamp}-{}", std::process::id());
    let mut reports: Vec<(RunReport, PathBuf)> = Vec::new();
    // What the JUnit and HTML reports are made from: the journals' events.
    let mut views: Vec<RunView> = Vec::new();
    let total = plans.len();
    for (index, (plan, secrets)) in plans.into_iter().zip(secrets).enumerate() {
        if interrupt.level() >= interrupt::Level::Abort {
            crate::say!(
                "faultline: interrupted; {} experiment(s) not started",
                total - index
            );
            break;
        }
        let run_id = if total == 1 {
            game_day.clone()
        } else {
            format!("{game_day}-{}", index + 1)
        };
        let journal_path = report_dir.join(format!(
            "{run_id}-{}.jsonl",
            crate::units::file_safe(&plan.name)
        ));
        let journal = match Journal::create(&journal_path) {
            Ok(j) => j,
            Err(e) => {
                crate::say!(
                    "faultline: cannot write the journal {}: {e}; nothing was run",
                    journal_path.display()
                );
                // Ended by itself: earlier experiments' leftovers (a failed revert) were
                // reported, and are for a person, not for the watchdog.
                if let Some(watchdog) = watchdog.take() {
                    watchdog.stand_down();
                }
                return EXIT_ERROR;
            }
        };
        if let Some(watchdog) = watchdog.as_mut() {
            watchdog.journal(&run_id, &journal_path);
        }
        let context = RunContext {
            backend: Arc::new(RealBackend::with_secrets(secrets)),
            state: state.clone(),
            journal: journal.clone(),
            run_id,
            interrupt: interrupt.clone(),
            quiet: options.quiet,
        };
        let report = engine::run(Arc::new(plan), context).await;
        if let Some(e) = journal.take_error() {
            crate::say!(
                "faultline: warning: the journal {} is incomplete: {e}",
                journal_path.display()
            );
        }
        print_summary(&report, &journal_path);
        // Read back from the journal, with any event its file could not take (its filesystem
        // filled by a fault) in its place, so the reports are complete.
        views.push(RunView::from_journal(&journal));
        reports.push((report, journal_path));
    }

    // Every experiment ended by itself, its faults reverted or their failures reported.
    if let Some(watchdog) = watchdog {
        watchdog.stand_down();
    }

    if reports.len() > 1 {
        print_game_day(&reports);
        let summary_path = report_dir.join(format!("{game_day}-summary.json"));
        let summary: Vec<serde_json::Value> = reports
            .iter()
            .map(|(r, journal)| {
                serde_json::json!({
                    "experiment": r.name,
                    "outcome": r.outcome,
                    "exit_code": r.outcome.exit_code(),
                    "reason": r.reason,
                    "duration_ms": crate::report::ms(r.duration),
                    "journal": journal,
                })
            })
            .collect();
        let _ = report::write_private(
            &summary_path,
            &serde_json::to_vec_pretty(&summary).expect("serialises"),
        );
    }
    if !reports.is_empty() {
        let stem = match reports.as_slice() {
            [(_, journal)] => journal
                .file_stem()
                .map_or_else(|| game_day.clone(), |s| s.to_string_lossy().into_owned()),
            _ => format!("{game_day}-game-day"),
        };
        match write_reports(&report_dir, &stem, &views) {
            Ok(paths) => {
                for path in paths {
                    crate::say!("   report: {}", path.display());
                }
            }
            // The outcome stays the run's: a missing report must not hide an abort.
            Err(message) => crate::say!("faultline: warning: {message}"),
        }
    }
    let worst = Outcome::worst(reports.iter().map(|(r, _)| r.outcome));
    let interrupted_before_any = reports.is_empty() && interrupt.level() >= interrupt::Level::Abort;
    if interrupted_before_any {
        Outcome::Interrupted.exit_code()
    } else {
        worst.exit_code()
    }
}

/// `faultline inject`: the command line becomes an experiment, checked like a file; a dry run
/// shows it and its plan, otherwise it runs like `faultline run` would run the file.
async fn inject(args: InjectArgs) -> u8 {
    let command_line =
        adhoc::quoted_command_line(adhoc::without_output_flags(std::env::args().skip(1)));
    let source = match adhoc::experiment_source(&args, &format!("faultline {command_line}")) {
        Ok(source) => source,
        Err(e) => {
            crate::say!("faultline inject: {e}; nothing was run");
            return EXIT_INVALID_INPUT;
        }
    };
    let plan = match crate::plan::plan_source(&source, &Overrides::none()) {
        Ok(plan) => plan,
        Err(diagnostics) => {
            print_diagnostics(&diagnostics);
            crate::say!(
                "faultline inject: the command line above makes this experiment:\n{}",
                source.text
            );
            return EXIT_INVALID_INPUT;
        }
    };
    if let Some(path) = &args.save {
        if let Err(e) = std::fs::write(path, &source.text) {
            crate::say!(
                "faultline inject: cannot write {}: {e}; nothing was run",
                path.display()
            );
            return EXIT_ERROR;
        }
        crate::say!(
            "saved: {} (run it with `faultline run {}`)",
            path.display(),
            path.display()
        );
    }
    if args.dry_run {
        println!("{}", source.text);
        print!("{}", crate::view::render(&plan));
        return 0;
    }
    run_plans(vec![plan], &args.runner).await
}

/// Faults that fill a filesystem which also holds the state directory or the reports: while
/// it is full, later injections cannot be recorded (they fail safely, as injection_failed)
/// and the journal stops growing. Said before the run, not discovered after it.
fn fills_own_records(plan: &Plan, state_dir: &Path, report_dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    // The nearest existing ancestor: the report dir may not exist yet.
    let device = |path: &Path| {
        path.ancestors()
            .find_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.dev())
    };
    let mut warnings = Vec::new();
    for fault in &plan.faults {
        let Some(filled) = fault.action.fills().and_then(device) else {
            continue;
        };
        for (what, dir) in [
            ("state directory", state_dir),
            ("report directory", report_dir),
        ] {
            if device(dir) == Some(filled) {
                warnings.push(format!(
                    "{}: {} `{}` fills the filesystem of the {what} {}; while it is \
                     full, faultline cannot record further injections (they fail as \
                     injection_failed) or extend the journal. Put `--state-dir` / \
                     `--report-dir` on another filesystem to avoid this.",
                    plan.name,
                    fault.kind.as_str(),
                    fault.id,
                    dir.display()
                ));
            }
        }
    }
    warnings
}

fn print_summary(report: &RunReport, journal: &Path) {
    let outcome = report.outcome;
    if outcome == Outcome::RevertFailed {
        crate::say!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        crate::say!("!! REVERT FAILED — THE HOST MAY STILL CARRY FAULTS");
        for failure in &report.revert_failures {
            crate::say!("!!   {failure}");
        }
        crate::say!("!! `faultline status` lists them; `faultline recover` retries the reverts.");
        crate::say!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
    }
    crate::say!(
        "\n== {}: {} (exit {}) in {:.1}s",
        report.name,
        outcome.as_str().to_uppercase(),
        outcome.exit_code(),
        report.duration.as_secs_f64()
    );
    crate::say!("   {}", report.reason);
    if let Some(abort) = &report.abort {
        crate::say!(
            "   abort: {} fault(s) reverted {:.1} ms after the breach",
            abort.faults_reverted,
            abort.breach_to_all_reverted_ms
        );
    }
    crate::say!("   journal: {}", journal.display());
}

fn print_game_day(reports: &[(RunReport, PathBuf)]) {
    crate::say!("\ngame day: {} experiments", reports.len());
    for (report, _) in reports {
        crate::say!(
            "  {:<17} {:<32} {:>7.1}s  {}",
            report.outcome.as_str(),
            report.name,
            report.duration.as_secs_f64(),
            report.reason
        );
    }
    let worst = Outcome::worst(reports.iter().map(|(r, _)| r.outcome));
    crate::say!("  overall: {} (exit {})", worst, worst.exit_code());
}

async fn demo(args: DemoArgs) -> u8 {
    let result = if args.worker {
        crate::demo::worker(args.worker_port).await
    } else if args.dependency_only {
        crate::demo::dependency(args.listen).await
    } else {
        crate::demo::serve(crate::demo::DemoOptions {
            listen: args.listen,
            pidfile: args.pidfile,
            restart_delay: args.restart_delay,
            worker_port: args.worker_port,
            dependency: args.dependency,
        })
        .await
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            crate::say!("faultline demo-target: {e}");
            EXIT_ERROR
        }
    }
}
