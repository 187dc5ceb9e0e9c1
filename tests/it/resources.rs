//! Resource faults end to end through the `faultline` binary, measured by the test itself.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Runner, Workspace, events_of, wait_for};

/// A process that burns one CPU until killed (by PID, in drop).
struct Busy(Child);

impl Busy {
    fn start() -> Busy {
        Busy(
            Command::new("python3")
                .args(["-c", "while True: pass"])
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn a busy loop"),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Share of one CPU `pid` used over `window`.
fn cpu_share(pid: u32, window: Duration) -> f64 {
    let (before, start) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(window);
    (cpu_seconds(pid) - before) / start.elapsed().as_secs_f64()
}

#[test]
fn cpu_limit_holds_a_busy_process_to_its_quota_and_puts_it_back() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let busy = Busy::start();
    let cgroups_before = std::fs::read_to_string(format!("/proc/{}/cgroup", busy.pid())).unwrap();
    let file = ws.write(
        "limit.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: limit}}\nmax_duration: 1m\n\
             targets: {{busy: {{process: {{pid: {}}}}}}}\n\
             faults: [{{id: squeeze, kind: cpu-limit, target: busy, params: {{quota: 25%}}, duration: 6s}}]\n",
            busy.pid()
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    assert!(
        wait_for(Duration::from_secs(5), || !events_of(&ws.journal(), "fault_injected").is_empty()),
        "{}",
        runner.stderr()
    );
    let limited = cpu_share(busy.pid(), Duration::from_secs(4));
    println!("busy process under a 25% quota: {:.1}%", limited * 100.0);
    assert!((0.20..=0.30).contains(&limited), "{:.1}% of a CPU", limited * 100.0);
    assert_eq!(runner.wait(Duration::from_secs(10)), Some(0), "{}", runner.stderr());

    let cgroups_after = std::fs::read_to_string(format!("/proc/{}/cgroup", busy.pid())).unwrap();
    assert_eq!(cgroups_before, cgroups_after, "back in exactly the cgroups it came from");
    let free = cpu_share(busy.pid(), Duration::from_secs(1));
    assert!(free > 0.8, "unthrottled after the revert: {:.1}%", free * 100.0);
    assert_eq!(ws.state_records(), 0);
}
