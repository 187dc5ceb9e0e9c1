//! `memory-pressure`: a child process (the hog) allocates and touches the requested memory
//! and keeps it resident until the revert kills it.
//!
//! The hog is a process, not a thread, so that the OOM killer can be aimed at it alone: it
//! sets its own `oom_score_adj` to 1000 while faultline's stays as it was. It cannot
//! outlive faultline: it is started with `PR_SET_PDEATHSIG(SIGKILL)` from a keeper thread
//! that lives exactly as long as the hog (the death signal follows the *thread* that forked,
//! so the spawn never happens on a pool thread that may exit), and it checks that its
//! parent is still the process that started it. Its argv carries the recipe's id, so a
//! `recover` in a fresh process can still find it by id and kill it (after a crash it is
//! normally dead already, and the revert is a no-op).
//!
//! Memory is mapped anonymous and private, and one byte per page is written, in steps over
//! the ramp. It is not `mlock`ed: locking counts against `RLIMIT_MEMLOCK` (8 MiB for
//! unprivileged users), and locked pages cannot be swapped, which changes *how* a host
//! under pressure behaves (straight to the OOM killer instead of swapping) — not the
//! pressure an experiment asks for. Instead the hog re-writes every page once a second, so
//! its pages stay hot in the LRU and come back if swapped out. Without swap (as here),
//! anonymous pages cannot be reclaimed anyway.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::cpu::{this_process, unique_id};
use super::{
    Applied, Backend, BuildContext, Fault, FaultAction, FaultError, KindPlan, ModuleKind, ProcRef,
    Reverted,
};
use crate::experiment::Sp;
use crate::experiment::model::{FaultDef, FaultKind, PercentSpec};
use crate::experiment::params::ParamChecks;
use crate::sys::pidfd::{self, SignalError};

/// The hidden subcommand that runs [`hog_main`].
pub const HOG_SUBCOMMAND: &str = "__memory-hog";

/// Never take the last 256 MiB unless told otherwise.
pub const DEFAULT_KEEP_FREE: u64 = 256 * MIB;

const MIB: u64 = 1024 * 1024;

/// Lines the hog writes on stdout, so its parent knows how far it got.
const HOG_LINE: &str = "faultline-memory-hog";

/// How often the hog re-writes every page, and checks that its parent is still there.
const RETOUCH_PERIOD: Duration = Duration::from_secs(1);

/// How long the revert waits for a killed hog to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryAmount {
    Bytes(u64),
    /// Percent of `MemTotal`.
    Percent(f64),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPressureParams {
    pub amount: MemoryAmount,
    /// Linear rise from nothing to `amount` over this long; zero touches it all at once.
    pub ramp: Duration,
    /// Never take the last this many bytes: the amount is clamped to `MemAvailable` minus it.
    pub keep_free: u64,
}

/// What `revert` needs: the id the hog carries in its argv, and who started it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecipe {
    pub id: String,
    pub owner: ProcRef,
    /// What the experiment asked for, in bytes.
    pub requested_bytes: u64,
    /// What the hog takes: the request clamped to `MemAvailable - keep_free`, whole pages.
    pub bytes: u64,
    pub ramp_ms: u64,
    /// `MemAvailable` when the fault was prepared.
    pub mem_available_before: u64,
}

/// How the hog is started: `faultline __memory-hog ...` in production; tests re-execute the
/// test binary instead (it has no such subcommand).
#[derive(Clone, Copy, Debug)]
enum Launcher {
    CurrentExe,
    #[cfg(test)]
    TestEntry,
}

pub struct MemoryPressure {
    params: MemoryPressureParams,
    launcher: Launcher,
}

impl MemoryPressure {
    pub fn new(params: MemoryPressureParams) -> Self {
        MemoryPressure {
            params,
            launcher: Launcher::CurrentExe,
        }
    }

    /// Size the hog from /proc/meminfo; touches nothing.
    pub fn prepare_recipe(&self) -> Result<(String, MemoryRecipe, serde_json::Value), FaultError> {
        let meminfo = read_meminfo()?;
        let requested = match self.params.amount {
            MemoryAmount::Bytes(bytes) => bytes,
            MemoryAmount::Percent(percent) if percent > 0.0 && percent <= 100.0 => {
                (meminfo.total as f64 * percent / 100.0) as u64
            }
            MemoryAmount::Percent(percent) => {
                return Err(FaultError::Unsupported(format!(
                    "memory-pressure percent must be above 0 and at most 100, not {percent}"
                )));
            }
        };
        let room = meminfo.available.saturating_sub(self.params.keep_free);
        let page = page_size();
        let bytes = requested.min(room) / page * page;
        if bytes == 0 {
            return Err(FaultError::Unsupported(format!(
                "no memory to take: {} MiB available and {} MiB must stay free (keep_free); lower keep_free or free some memory",
                meminfo.available / MIB,
                self.params.keep_free / MIB
            )));
        }
        let recipe = MemoryRecipe {
            id: unique_id("faultline-mem"),
            owner: this_process()?,
            requested_bytes: requested,
            bytes,
            ramp_ms: u64::try_from(self.params.ramp.as_millis()).unwrap_or(u64::MAX),
            mem_available_before: meminfo.available,
        };
        let clamped = bytes < requested / page * page;
        let mut summary = format!("hold {} MiB resident", bytes / MIB);
        if clamped {
            summary.push_str(&format!(
                " (asked {} MiB: clamped to MemAvailable {} MiB minus keep_free {} MiB)",
                requested / MIB,
                meminfo.available / MIB,
                self.params.keep_free / MIB
            ));
        }
        if recipe.ramp_ms > 0 {
            summary.push_str(&format!(", ramped over {} ms", recipe.ramp_ms));
        }
        let details = json!({
            "requested_bytes": requested,
            "bytes": bytes,
            "clamped": clamped,
            "keep_free": self.params.keep_free,
            "mem_total": meminfo.total,
            "mem_available": meminfo.available,
            "ramp_ms": recipe.ramp_ms,
        });
        Ok((summary, recipe, details))
    }

    /// Start the hog and wait until it has mapped its memory (and, without a ramp, touched
    /// all of it, bounded by a few seconds).
    pub fn apply_recipe(&self, recipe: &MemoryRecipe) -> Result<Applied, FaultError> {
        let hog = Hog::spawn(self.launcher, recipe)?;
        let target = hog.proc_ref;
        let wait = if recipe.ramp_ms == 0 {
            Duration::from_secs(5 + 2 * recipe.bytes.div_ceil(1024 * MIB))
        } else {
            Duration::from_secs(5)
        };
        let reached = hog.wait_for(wait, |s| {
            s.exited || (s.ready && (recipe.ramp_ms > 0 || s.resident))
        });
        let (ready, error) = (reached.ready, reached.error.clone());
        let exited = reached.exited.then_some(reached.exit_status);
        drop(reached);
        if exited.is_some() || !ready {
            let stderr = hog.finish();
            let how = match exited {
                Some(Some(status)) => format!("exited ({status})"),
                Some(None) => "exited".into(),
                None => "did not start within 5 s".into(),
            };
            return Err(FaultError::Failed(format!(
                "the memory hog (pid {}) {how}: {}",
                target.pid,
                error.unwrap_or(stderr)
            )));
        }
        let resident = vm_rss(target.pid).unwrap_or(0);
        let anon = rss_anon(target.pid).unwrap_or(0);
        Ok(Applied {
            summary: format!(
                "memory hog pid {} holds {} MiB of {} MiB",
                target.pid,
                resident / MIB,
                recipe.bytes / MIB
            ),
            details: json!({
                "hog": target,
                "bytes": recipe.bytes,
                "resident_bytes": resident,
                "resident_anon_bytes": anon,
                "mem_available": read_meminfo().ok().map(|m| m.available),
            }),
            live: Some(super::LiveHandle::Memory(hog)),
        })
    }
}

/// Kill the hog and wait until it is gone. Idempotent; works in a fresh process (the hog
/// is then found by the id in its argv, if a crash left it alive at all).
/// `ours` is the hog this process started, when it did.
pub fn revert(recipe: &MemoryRecipe, ours: Option<Hog>) -> Result<Reverted, FaultError> {
    let target = match &ours {
        Some(hog) => Some(hog.proc_ref),
        None => find_hog(&recipe.id)?,
    };
    let Some(target) = target else {
        return Ok(Reverted {
            summary: format!("memory hog {} is not running (already gone)", recipe.id),
            details: serde_json::Value::Null,
        });
    };
    let resident = vm_rss(target.pid);
    let anon = rss_anon(target.pid);
    let available_during = read_meminfo().ok().map(|m| m.available);
    match pidfd::send_signal(target, libc::SIGKILL) {
        Ok(()) | Err(SignalError::Gone(_)) => {}
        Err(e) => {
            // The record stays; `recover` finds the hog again by the id in its argv.
            if let Some(hog) = ours {
                std::mem::forget(hog);
            }
            return Err(FaultError::Failed(format!("killing the memory hog: {e}")));
        }
    }
    let killed = Instant::now();
    let gone = match ours {
        Some(hog) => {
            let exited = hog.wait_for(KILL_WAIT, |s| s.exited).exited;
            if exited {
                hog.finish();
            } else {
                // Stuck (D state, a frozen cgroup): dropping it would wait for its keeper,
                // which waits for the hog. The record stays, and `recover` tries again.
                std::mem::forget(hog);
            }
            exited
        }
        None => wait_gone(target, KILL_WAIT),
    };
    if !gone {
        return Err(FaultError::Failed(format!(
            "the memory hog (pid {}) was sent SIGKILL but is still there after {} s",
            target.pid,
            KILL_WAIT.as_secs()
        )));
    }
    let available_after = read_meminfo().ok().map(|m| m.available);
    let mib = |b: Option<u64>| b.map_or("?".to_string(), |b| (b / MIB).to_string());
    Ok(Reverted {
        summary: format!(
            "killed memory hog pid {} in {} ms: asked {} MiB, {} MiB resident before the revert; MemAvailable {} MiB before, {} MiB during, {} MiB after",
            target.pid,
            killed.elapsed().as_millis(),
            recipe.bytes / MIB,
            mib(resident),
            recipe.mem_available_before / MIB,
            mib(available_during),
            mib(available_after),
        ),
        details: json!({
            "hog": target,
            "requested_bytes": recipe.requested_bytes,
            "bytes": recipe.bytes,
            "resident_bytes_before_revert": resident,
            "resident_anon_bytes_before_revert": anon,
            "mem_available_before": recipe.mem_available_before,
            "mem_available_during": available_during,
            "mem_available_after": available_after,
        }),
    })
}

/// One line for `faultline status`.
pub fn describe(recipe: &MemoryRecipe) -> String {
    format!(
        "kill memory hog {} ({} MiB) started by faultline pid {}",
        recipe.id,
        recipe.bytes / MIB,
        recipe.owner.pid
    )
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant; no memory is shared.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

// ---------------------------------------------------------------------------------------
// /proc

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

/// `MemTotal` and `MemAvailable` from the text of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(parse_kib)
    };
    Some(MemInfo {
        total: field("MemTotal")?,
        available: field("MemAvailable")?,
    })
}

/// `  1234 kB` → bytes.
fn parse_kib(value: &str) -> Option<u64> {
    let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

pub fn read_meminfo() -> Result<MemInfo, FaultError> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| FaultError::Failed(format!("reading /proc/meminfo: {e}")))?;
    parse_meminfo(&text).ok_or_else(|| {
        FaultError::Unsupported("/proc/meminfo has no MemTotal or MemAvailable".into())
    })
}

/// Resident bytes of a process (`VmRSS` in `/proc/PID/status`).
pub fn vm_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS")
}

/// Resident anonymous bytes (`RssAnon`): the hog's memory without its program's pages.
pub fn rss_anon(pid: u32) -> Option<u64> {
    status_bytes(pid, "RssAnon")
}

fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(parse_kib)
}

/// A live process whose argv holds `id` as one argument.
fn find_hog(id: &str) -> Result<Option<ProcRef>, FaultError> {
    let pids = crate::sys::proc::list_pids()
        .map_err(|e| FaultError::Failed(format!("listing /proc: {e}")))?;
    Ok(pids.into_iter().find_map(|pid| {
        let info = crate::sys::proc::read(pid).ok()?;
        (info.state != 'Z' && info.cmdline.split(' ').any(|arg| arg == id)).then(|| info.proc_ref())
    }))
}

/// Poll until `target` has exited (gone, its PID reused, or a zombie: its memory is freed
/// by then).
fn wait_gone(target: ProcRef, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let alive = crate::sys::proc::read_stat(target.pid)
            .is_ok_and(|s| s.start_time == target.start_time && s.state != 'Z');
        if !alive {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// The parent's side of the hog

/// What the hog has said so far.
#[derive(Debug, Default)]
struct HogState {
    ready: bool,
    resident: bool,
    error: Option<String>,
    exited: bool,
    exit_status: Option<std::process::ExitStatus>,
    stderr: String,
}

type Shared = Arc<(Mutex<HogState>, Condvar)>;

/// The hog child of one injection and the keeper thread that reaps it; dropping it kills the
/// hog.
pub struct Hog {
    proc_ref: ProcRef,
    shared: Shared,
    keeper: Option<JoinHandle<()>>,
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.kill_and_join();
    }
}

fn lock_state(shared: &Shared) -> MutexGuard<'_, HogState> {
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

fn hog_args(recipe: &MemoryRecipe) -> Vec<String> {
    vec![
        "--bytes".into(),
        recipe.bytes.to_string(),
        "--ramp-ms".into(),
        recipe.ramp_ms.to_string(),
        "--parent".into(),
        std::process::id().to_string(),
        "--id".into(),
        recipe.id.clone(),
    ]
}

fn hog_command(launcher: Launcher, recipe: &MemoryRecipe) -> Result<Command, FaultError> {
    let exe = std::env::current_exe().map_err(|e| {
        FaultError::Failed(format!(
            "cannot find faultline's own executable to start the memory hog: {e}"
        ))
    })?;
    let mut command = Command::new(exe);
    match launcher {
        Launcher::CurrentExe => {
            command.arg(HOG_SUBCOMMAND).args(hog_args(recipe));
        }
        #[cfg(test)]
        Launcher::TestEntry => {
            // libtest takes no extra options, so the hog's arguments travel in the
            // environment; the id is also a (never matching) name filter, so that the hog
            // can be found by its argv like the real one.
            command
                .args(tests::HOG_ENTRY_ARGS)
                .arg(&recipe.id)
                .env(tests::HOG_ARGS_ENV, hog_args(recipe).join("\n"));
        }
    }
    Ok(command)
}

impl Hog {
    /// Start the hog from a keeper thread that then reads its output and reaps it.
    fn spawn(launcher: Launcher, recipe: &MemoryRecipe) -> Result<Hog, FaultError> {
        let mut command = hog_command(launcher, recipe)?;
        let parent = std::process::id();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal reaches faultline, which then
            // reverts in order, and not the hog directly.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before the death signal was armed.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::other("faultline exited"));
                }
                Ok(())
            });
        }
        let shared: Shared = Arc::default();
        let (spawned_tx, spawned_rx) = std::sync::mpsc::channel();
        let keeper_shared = shared.clone();
        let keeper = std::thread::Builder::new()
            .name("fl-mem-keeper".into())
            .spawn(move || keep(command, &keeper_shared, &spawned_tx))
            .map_err(|e| FaultError::Failed(format!("starting the memory hog's keeper: {e}")))?;
        match spawned_rx.recv() {
            Ok(Ok(proc_ref)) => Ok(Hog {
                proc_ref,
                shared,
                keeper: Some(keeper),
            }),
            Ok(Err(e)) => {
                let _ = keeper.join();
                Err(FaultError::Failed(format!("starting the memory hog: {e}")))
            }
            Err(_) => {
                let _ = keeper.join();
                Err(FaultError::Failed(
                    "the memory hog's keeper thread died".into(),
                ))
            }
        }
    }

    fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&HogState) -> bool,
    ) -> MutexGuard<'_, HogState> {
        let (_, condvar) = &*self.shared;
        let guard = lock_state(&self.shared);
        condvar
            .wait_timeout_while(guard, limit, |s| !done(s))
            .map(|(guard, _)| guard)
            .unwrap_or_else(|p| p.into_inner().0)
    }

    /// Join the keeper (the hog has exited, or is being killed) and return its stderr.
    fn finish(mut self) -> String {
        self.kill_and_join();
        let state = lock_state(&self.shared);
        state.stderr.trim().to_string()
    }

    fn kill_and_join(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        if !lock_state(&self.shared).exited {
            let _ = pidfd::send_signal(self.proc_ref, libc::SIGKILL);
        }
        let _ = keeper.join();
    }
}

/// The keeper thread: spawn, report the hog's identity, follow its stdout, reap it.
fn keep(
    mut command: Command,
    shared: &Shared,
    spawned: &std::sync::mpsc::Sender<Result<ProcRef, String>>,
) {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = spawned.send(Err(e.to_string()));
            return;
        }
    };
    let pid = child.id();
    match crate::sys::proc::start_time(pid) {
        Ok(start_time) => {
            let _ = spawned.send(Ok(ProcRef { pid, start_time }));
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = spawned.send(Err(format!("reading /proc/{pid}/stat: {e}")));
            return;
        }
    }
    let (_, condvar) = &**shared;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Found anywhere in the line: under the test harness it follows `test name ... `.
            let Some((_, said)) = line.split_once(HOG_LINE) else {
                continue;
            };
            let mut words = said.split_whitespace();
            let mut state = lock_state(shared);
            match words.next() {
                Some("ready") => state.ready = true,
                Some("resident") => state.resident = true,
                Some("error") => state.error = Some(words.collect::<Vec<_>>().join(" ")),
                _ => {}
            }
            condvar.notify_all();
        }
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = child.wait().ok();
    let mut state = lock_state(shared);
    state.stderr = stderr;
    state.exited = true;
    state.exit_status = status;
    condvar.notify_all();
}

// ---------------------------------------------------------------------------------------
// The hog itself

/// Exit codes of [`hog_main`].
pub const HOG_BAD_ARGS: u8 = 2;
pub const HOG_NO_OOM_ADJ: u8 = 3;
pub const HOG_NO_MEMORY: u8 = 4;
pub const HOG_ORPHANED: u8 = 5;

#[derive(Debug, PartialEq)]
struct HogArgs {
    bytes: u64,
    ramp: Duration,
    parent: Option<u32>,
}

fn parse_hog_args(args: &[String]) -> Result<HogArgs, String> {
    let mut bytes = None;
    let mut ramp = Duration::ZERO;
    let mut parent = None;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} wants a whole number, not `{value}`"))
        };
        match flag.as_str() {
            "--bytes" => bytes = Some(number()?),
            "--ramp-ms" => ramp = Duration::from_millis(number()?),
            "--parent" => parent = Some(u32::try_from(number()?).map_err(|e| e.to_string())?),
            // Carried only so that a fresh faultline can find this process.
            "--id" => {}
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(HogArgs {
        bytes: bytes.ok_or("--bytes is required")?,
        ramp,
        parent,
    })
}

fn say(words: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{HOG_LINE} {words}");
    let _ = out.flush();
}

fn parent_changed(parent: Option<u32>) -> bool {
    // SAFETY: getppid has no preconditions.
    let now = unsafe { libc::getppid() };
    parent.is_some_and(|p| u32::try_from(now).ok() != Some(p))
}

/// The memory hog: `faultline __memory-hog --bytes N [--ramp-ms M] [--parent PID] [--id ID]`.
/// Makes itself the OOM killer's first choice, maps `N` bytes, touches them over the ramp
/// and keeps them resident until it is killed. Returns only on failure.
pub fn hog_main(args: &[String]) -> u8 {
    let args = match parse_hog_args(args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("faultline {HOG_SUBCOMMAND}: {e}");
            return HOG_BAD_ARGS;
        }
    };
    // Armed again here in case it was started without the parent's pre-exec hook.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if parent_changed(args.parent) {
        return HOG_ORPHANED;
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        say(&format!("error cannot set oom_score_adj to 1000: {e}"));
        return HOG_NO_OOM_ADJ;
    }
    let Ok(len) = usize::try_from(args.bytes) else {
        return HOG_NO_MEMORY;
    };
    // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        say(&format!(
            "error mmap of {} bytes failed: {}",
            args.bytes,
            std::io::Error::last_os_error()
        ));
        return HOG_NO_MEMORY;
    }
    let base = base.cast::<u8>();
    let page = usize::try_from(page_size()).unwrap_or(4096);
    let pages = len / page;
    let touch = |from: usize, to: usize| {
        for index in from..to {
            // SAFETY: `index < pages`, so the byte lies inside the mapping.
            unsafe { base.add(index * page).write_volatile((index as u8) | 1) };
        }
    };
    say(&format!("ready {}", args.bytes));
    let started = Instant::now();
    let mut touched = 0;
    while touched < pages {
        let elapsed = started.elapsed();
        let goal = if args.ramp.is_zero() || elapsed >= args.ramp {
            pages
        } else {
            (pages as f64 * elapsed.as_secs_f64() / args.ramp.as_secs_f64()) as usize
        };
        touch(touched, goal);
        touched = goal.max(touched);
        if touched < pages {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    say(&format!("resident {}", args.bytes));
    loop {
        std::thread::sleep(RETOUCH_PERIOD);
        if parent_changed(args.parent) {
            return HOG_ORPHANED;
        }
        touch(0, pages);
    }
}

// ---- the kind: its parameters, checks, summary and fault -------------------------------

/// The kind, as the list in [`super::MODULE_KINDS`] registers it.
pub const KIND: ModuleKind = ModuleKind {
    kind: FaultKind::MemoryPressure,
    keys: &["ramp", "size", "keep_free"],
    compile: |fault, checks| compile(fault, checks).map(FaultAction::MemoryPressure),
    backend: |_| {
        Backend::always(
            "hog process",
            "a child with oom_score_adj 1000 that dies with faultline",
        )
    },
};

/// Check a memory-pressure's `params` and compile them; `None` after reporting what is wrong.
pub fn compile(fault: &Sp<FaultDef>, checks: &mut ParamChecks<'_>) -> Option<MemoryPressureParams> {
    checks.needs_duration(fault);
    let ramp = checks.ramp(fault);
    let p = &fault.params;
    let size = checks.required(fault, "size", &p.size, "512MiB")?;
    let amount = if size.trim_end().ends_with('%') {
        let spec = Sp::at(PercentSpec::Text(size.value.clone()), size.pos);
        MemoryAmount::Percent(checks.percent(&spec, 100.0)?)
    } else {
        MemoryAmount::Bytes(checks.size(size, "`size`")?)
    };
    let keep_free = match &p.keep_free {
        Some(k) => checks.size(k, "`keep_free`")?,
        None => DEFAULT_KEEP_FREE,
    };
    Some(MemoryPressureParams {
        amount,
        ramp,
        keep_free,
    })
}

impl KindPlan for MemoryPressureParams {
    fn summary(&self) -> String {
        format!(
            "hold {} resident (keeping {} free){}",
            match self.amount {
                MemoryAmount::Bytes(b) => crate::units::bytes(b),
                MemoryAmount::Percent(p) => format!("{}% of RAM", (p * 100.0).round() / 100.0),
            },
            crate::units::bytes(self.keep_free),
            super::summary::ramp(self.ramp)
        )
    }

    fn build(&self, _: &BuildContext<'_>) -> Box<dyn Fault> {
        Box::new(MemoryPressure::new(self.clone()))
    }
}

fault_with_recipe!(MemoryPressure, MemoryPressure);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fault::cpu::tests::{ChildGuard, serial, spawn_test_entry};

    pub(super) const HOG_ENTRY: &str = "fault::memory::tests::memory_hog_entry";
    pub(super) const HOG_ENTRY_ARGS: [&str; 5] = [
        "--ignored",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        HOG_ENTRY,
    ];
    pub(super) const HOG_ARGS_ENV: &str = "FAULTLINE_TEST_HOG_ARGS";

    /// Not a test: the hog, when this binary is re-executed by [`Launcher::TestEntry`].
    #[test]
    #[ignore = "child-process entry point for other tests"]
    fn memory_hog_entry() {
        let Ok(args) = std::env::var(HOG_ARGS_ENV) else {
            return;
        };
        let args: Vec<String> = args.split('\n').map(String::from).collect();
        std::process::exit(i32::from(hog_main(&args)));
    }

    /// Not a test: a faultline stand-in that starts a hog, prints its recipe and waits to be
    /// killed (`FAULTLINE_TEST_MEM_PARENT=bytes`).
    #[test]
    #[ignore = "child-process entry point for other tests"]
    fn memory_parent_entry() {
        let Ok(bytes) = std::env::var("FAULTLINE_TEST_MEM_PARENT") else {
            return;
        };
        let fault = test_fault(bytes.parse().unwrap(), Duration::ZERO);
        let (_, recipe, _) = fault.prepare_recipe().unwrap();
        let applied = fault.apply_recipe(&recipe).unwrap();
        println!("recipe {}", serde_json::to_string(&recipe).unwrap());
        std::thread::sleep(Duration::from_secs(30));
        revert(&recipe, Some(hog_handle(applied))).unwrap();
    }

    fn test_fault(bytes: u64, ramp: Duration) -> MemoryPressure {
        MemoryPressure {
            params: MemoryPressureParams {
                amount: MemoryAmount::Bytes(bytes),
                ramp,
                keep_free: DEFAULT_KEEP_FREE,
            },
            launcher: Launcher::TestEntry,
        }
    }

    fn oom_score_adj(pid: &str) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn hog_of(applied: &Applied) -> ProcRef {
        serde_json::from_value(applied.details["hog"].clone()).unwrap()
    }

    fn hog_handle(applied: Applied) -> Hog {
        match applied.live {
            Some(crate::fault::LiveHandle::Memory(hog)) => hog,
            other => panic!("apply returned no hog: {other:?}"),
        }
    }

    fn available() -> u64 {
        read_meminfo().unwrap().available
    }

    /// Anonymous bytes charged to this process's memory cgroup (v1 `rss`, v2 `anon`).
    fn own_cgroup_anon() -> u64 {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let (file, key) = cgroups
            .lines()
            .find_map(|line| {
                let (_, rest) = line.split_once(':')?;
                let (controllers, path) = rest.split_once(':')?;
                if controllers.split(',').any(|c| c == "memory") {
                    Some((format!("/sys/fs/cgroup/memory{path}/memory.stat"), "rss"))
                } else if controllers.is_empty()
                    && std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
                {
                    Some((format!("/sys/fs/cgroup{path}/memory.stat"), "anon"))
                } else {
                    None
                }
            })
            .expect("this process has a memory cgroup");
        let stat = std::fs::read_to_string(&file).unwrap();
        stat.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no `{key}` in {file}"))
    }

    /// Poll `check` every 10 ms for at most `limit`; true once it holds.
    fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if check() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn hog_of_512_mib_is_resident_oom_first_and_gone_after_revert() {
        let _serial = serial();
        let own_adj = oom_score_adj("self");
        let before = available();
        let bytes = 512 * MIB;
        let fault = test_fault(bytes, Duration::ZERO);
        let (summary, recipe, _) = fault.prepare_recipe().unwrap();
        assert_eq!(summary, "hold 512 MiB resident");
        let applied = fault.apply_recipe(&recipe).unwrap();
        let hog = hog_of(&applied);
        let started = Instant::now();
        assert!(
            within(Duration::from_secs(5), || rss_anon(hog.pid)
                .is_some_and(|rss| rss >= bytes)),
            "hog RssAnon {:?} after {:?}",
            rss_anon(hog.pid),
            started.elapsed()
        );
        println!(
            "512 MiB resident {:?} after apply returned; {}",
            started.elapsed(),
            applied.summary
        );
        assert_eq!(oom_score_adj(&hog.pid.to_string()), "1000");
        assert_eq!(
            oom_score_adj("self"),
            own_adj,
            "faultline's own score changed"
        );
        assert!(
            find_hog(&recipe.id).unwrap() == Some(hog),
            "hog found by its id"
        );
        // It stays resident (re-touched, not swapped or freed) for a while.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(vm_rss(hog.pid).unwrap() >= bytes);
        assert!(rss_anon(hog.pid).unwrap() >= bytes);

        let held = available();
        let anon_held = own_cgroup_anon();
        let reverted = revert(&recipe, Some(hog_handle(applied))).unwrap();
        println!("{}", reverted.summary);
        assert!(
            wait_gone(hog, Duration::ZERO),
            "hog still there after revert"
        );
        assert!(
            reverted.details["resident_anon_bytes_before_revert"]
                .as_u64()
                .unwrap()
                >= bytes
        );
        // The memory is given back at once. Counted in the anonymous memory of this test's
        // own memory cgroup (the hog's too): MemAvailable is shared with the other work on
        // the host, which moved it by up to 400 MiB within the 50 ms of a revert here.
        let anon_after = own_cgroup_anon();
        assert!(
            anon_held.saturating_sub(anon_after).abs_diff(bytes) <= 64 * MIB,
            "cgroup anon {} MiB after revert, {} MiB just before",
            anon_after / MIB,
            anon_held / MIB
        );
        println!(
            "MemAvailable {} MiB before the fault, {} MiB with the hog, {} MiB after",
            before / MIB,
            held / MIB,
            available() / MIB
        );
        let again = revert(&recipe, None).unwrap();
        assert!(again.summary.contains("not running"), "{}", again.summary);
    }

    #[test]
    fn ramp_touches_memory_progressively() {
        let _serial = serial();
        let bytes = 256 * MIB;
        let fault = test_fault(bytes, Duration::from_secs(2));
        let (_, recipe, _) = fault.prepare_recipe().unwrap();
        let applied = fault.apply_recipe(&recipe).unwrap();
        let hog = hog_of(&applied);
        std::thread::sleep(Duration::from_secs(1));
        let halfway = rss_anon(hog.pid).unwrap();
        let full = within(Duration::from_secs(3), || {
            rss_anon(hog.pid).is_some_and(|rss| rss >= bytes)
        });
        revert(&recipe, Some(hog_handle(applied))).unwrap();
        assert!(
            (bytes / 4..=bytes * 3 / 4).contains(&halfway),
            "{} MiB resident halfway through a 2 s ramp to 256 MiB",
            halfway / MIB
        );
        assert!(full, "never reached 256 MiB");
    }

    #[test]
    fn a_killed_faultline_takes_its_hog_along_and_revert_is_a_no_op() {
        let _serial = serial();
        let mut parent = ChildGuard(spawn_test_entry(
            "fault::memory::tests::memory_parent_entry",
            &[("FAULTLINE_TEST_MEM_PARENT", (32 * MIB).to_string())],
            &[],
        ));
        let stdout = parent.0.stdout.take().unwrap();
        let line = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| Some(l.split_once("recipe ")?.1.to_string()))
            .expect("the stand-in printed its recipe");
        let recipe: MemoryRecipe = serde_json::from_str(&line).unwrap();
        let hog = find_hog(&recipe.id).unwrap().expect("hog running");
        assert_eq!(oom_score_adj(&hog.pid.to_string()), "1000");
        parent.0.kill().unwrap();
        parent.0.wait().unwrap();
        assert!(
            wait_gone(hog, Duration::from_secs(1)),
            "hog outlived its faultline"
        );
        // A fresh process (no hog of its own) reverting the recipe from the state file.
        let reverted = revert(&recipe, None).unwrap();
        assert!(
            reverted.summary.contains("not running"),
            "{}",
            reverted.summary
        );
    }

    #[test]
    fn revert_in_a_fresh_process_finds_a_live_hog_by_its_id() {
        let _serial = serial();
        let fault = test_fault(16 * MIB, Duration::ZERO);
        let (_, recipe, _) = fault.prepare_recipe().unwrap();
        let applied = fault.apply_recipe(&recipe).unwrap();
        let hog = hog_of(&applied);
        // The handle is kept out of the revert, as a crashed faultline's successor never had
        // it; the keeper still reaps the hog.
        let forgotten = hog_handle(applied);
        let restored: MemoryRecipe =
            serde_json::from_str(&serde_json::to_string(&recipe).unwrap()).unwrap();
        let reverted = revert(&restored, None).unwrap();
        assert!(
            reverted.summary.starts_with("killed memory hog"),
            "{}",
            reverted.summary
        );
        assert!(wait_gone(hog, Duration::ZERO));
        assert!(
            forgotten
                .wait_for(Duration::from_secs(2), |s| s.exited)
                .exited
        );
        forgotten.finish();
        assert!(describe(&recipe).contains("16 MiB"));
    }

    #[test]
    fn amount_is_clamped_to_keep_the_last_bytes_free() {
        let fault = MemoryPressure::new(MemoryPressureParams {
            amount: MemoryAmount::Percent(100.0),
            ramp: Duration::ZERO,
            keep_free: available().saturating_sub(64 * MIB),
        });
        let (summary, recipe, details) = fault.prepare_recipe().unwrap();
        assert!(summary.contains("clamped to MemAvailable"), "{summary}");
        assert!(recipe.bytes < 128 * MIB, "{} bytes", recipe.bytes);
        assert_eq!(details["clamped"], true);
        let none_left = MemoryPressure::new(MemoryPressureParams {
            amount: MemoryAmount::Bytes(MIB),
            ramp: Duration::ZERO,
            keep_free: u64::MAX,
        });
        assert!(matches!(
            none_left.prepare_recipe(),
            Err(FaultError::Unsupported(m)) if m.contains("keep_free")
        ));
    }

    #[test]
    fn hog_arguments_and_meminfo_parse() {
        let args: Vec<String> = [
            "--bytes",
            "4096",
            "--ramp-ms",
            "250",
            "--parent",
            "7",
            "--id",
            "x",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            parse_hog_args(&args).unwrap(),
            HogArgs {
                bytes: 4096,
                ramp: Duration::from_millis(250),
                parent: Some(7)
            }
        );
        assert!(parse_hog_args(&["--ramp-ms".into(), "1".into()]).is_err());
        assert_eq!(hog_main(&["--bytes".into(), "lots".into()]), HOG_BAD_ARGS);
        let text = "MemTotal:       24684096 kB\nMemFree:  1 kB\nMemAvailable:   24050492 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some(MemInfo {
                total: 24684096 * 1024,
                available: 24050492 * 1024
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }
}
