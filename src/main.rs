use std::process::ExitCode;

use clap::Parser;

use faultline::cli::{Cli, Command};

fn main() -> ExitCode {
    // The memory-pressure hog is this binary re-executed; it must not start a runtime or
    // parse the user-facing command line.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(faultline::fault::memory::HOG_SUBCOMMAND) {
        return ExitCode::from(faultline::fault::memory::hog_main(&args[2..]));
    }
    // Likewise the run's watchdog: small, synchronous, and alive after the runner is gone.
    if args.get(1).map(String::as_str) == Some(faultline::watchdog::SUBCOMMAND) {
        return ExitCode::from(faultline::watchdog::watchdog_main(&args[2..]));
    }
    // glibc gives each thread that allocates an arena of its own; the runner's few threads
    // (probes, reverts, the runtime's workers) allocate little, and arenas they do not need
    // cost resident memory on the host under test (measured: 0.4 MiB of 12.6).
    faultline::sys::limit_malloc_arenas(2);
    // Before anything else a run does: a SIGINT/SIGTERM/SIGHUP from here on is acted on
    // once the runner listens, never lost or fatal half-way through settling leftovers.
    if let Err(e) = faultline::engine::interrupt::take_over() {
        eprintln!("faultline: cannot take over SIGINT/SIGTERM/SIGHUP: {e}");
        return ExitCode::from(faultline::outcome::EXIT_ERROR);
    }
    // Usage errors are invalid input (64), not clap's default 2 — which is `aborted` here.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                faultline::outcome::EXIT_INVALID_INPUT
            } else {
                0 // --help, --version
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Only runs (and `inject`) have faults to revert; everything else keeps the defaults.
    if !matches!(cli.command, Command::Run(_) | Command::Inject(_)) {
        faultline::engine::interrupt::give_back();
    }
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FAULTLINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();

    if let Command::DemoTarget(args) = &cli.command
        && args.worker
    {
        // Name the process before the runtime starts threads, so /proc/PID/comm shows it.
        faultline::demo::set_process_name(faultline::demo::WORKER_NAME);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faultline: cannot start the async runtime: {e}");
            return ExitCode::from(faultline::outcome::EXIT_ERROR);
        }
    };
    // On a worker, not on this thread: a probe's sample then wakes the engine on the worker
    // that took it (tokio runs a task woken by the running one next, on the same thread)
    // instead of waking this thread, and the other worker still runs everything else while
    // one is held up in a slow write.
    let code = runtime.block_on(async {
        match tokio::spawn(faultline::commands::dispatch(cli.command)).await {
            Ok(code) => code,
            Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
            Err(_) => faultline::outcome::EXIT_ERROR,
        }
    });
    // A target resolution abandoned when the run stopped (a pidfile on a hung mount) may
    // still be blocked on its thread: exit without waiting for it.
    runtime.shutdown_background();
    ExitCode::from(code)
}
