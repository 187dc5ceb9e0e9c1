//! Resource faults end to end through the `faultline` binary, measured by the test itself.

use std::time::Duration;

use crate::util::{self, Busy, Runner, Workspace, cpu_share, events_of, wait_for};

#[test]
fn cpu_limit_holds_a_busy_process_to_its_quota_and_puts_it_back() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let busy = Busy::start("resources-cpu-limit");
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
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    let limited = cpu_share(busy.pid(), Duration::from_secs(4));
    println!("busy process under a 25% quota: {:.1}%", limited * 100.0);
    assert!(
        (0.20..=0.30).contains(&limited),
        "{:.1}% of a CPU",
        limited * 100.0
    );
    assert_eq!(
        runner.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        runner.stderr()
    );

    let cgroups_after = std::fs::read_to_string(format!("/proc/{}/cgroup", busy.pid())).unwrap();
    assert_eq!(
        cgroups_before, cgroups_after,
        "back in exactly the cgroups it came from"
    );
    let free = cpu_share(busy.pid(), Duration::from_secs(1));
    assert!(
        free > 0.6,
        "unthrottled after the revert: {:.1}%",
        free * 100.0
    );
    assert_eq!(ws.state_records(), 0);
}

/// Try to write and sync 64 KiB in `dir`; the errno on failure.
fn write_64k(dir: &std::path::Path) -> Result<(), i32> {
    use std::io::Write;
    let path = dir.join("probe.bin");
    let result = std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&[1u8; 64 * 1024]).and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn fill_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".faultline-fill-")
        })
        .count()
}

#[test]
fn disk_fill_makes_writes_fail_with_enospc_until_it_is_reverted() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let fs =
        faultline::sys::loopdev::LoopFs::ext4(64 << 20).expect("loop-mounted ext4 (needs root)");
    let dir = fs.mount_point().to_path_buf();
    assert_eq!(write_64k(&dir), Ok(()));
    let file = ws.write(
        "fill.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: fill}}\nmax_duration: 1m\n\
             faults: [{{id: full, kind: disk-fill, params: {{path: '{}', leave_free: 0B}}, duration: 3s}}]\n",
            dir.display()
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    assert_eq!(
        write_64k(&dir),
        Err(libc::ENOSPC),
        "a writer gets ENOSPC while the disk is full"
    );
    assert_eq!(
        runner.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert_eq!(
        write_64k(&dir),
        Ok(()),
        "writes succeed again after the revert"
    );
    assert_eq!(fill_files(&dir), 0, "the fill file is gone");
    assert!(!runner.stderr().contains("warning"), "{}", runner.stderr());

    // Filling the filesystem that holds faultline's own state is allowed, but said first.
    let own_state = dir.join("state");
    let out = util::faultline(&ws)
        .arg("run")
        .arg(&file)
        .arg("--state-dir")
        .arg(&own_state)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "disk-fill `full` fills the filesystem of the state directory {}",
            own_state.display()
        )),
        "{stderr}"
    );
    assert_eq!(fill_files(&dir), 0, "the fill file is gone");
}

#[test]
fn kill_9_during_disk_fill_leaves_a_file_that_recover_deletes() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let fs =
        faultline::sys::loopdev::LoopFs::ext4(64 << 20).expect("loop-mounted ext4 (needs root)");
    let dir = fs.mount_point().to_path_buf();
    let file = ws.write(
        "fill.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: fill-crash}}\nmax_duration: 1m\n\
             faults: [{{id: full, kind: disk-fill, params: {{path: '{}', size: 90%}}, duration: 50s}}]\n",
            dir.display()
        ),
    );
    let mut runner = Runner::spawn_unwatched(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    runner.crash();
    assert_eq!(fill_files(&dir), 1, "the crash left the fill file");
    util::recover_ok(&ws);
    assert_eq!(fill_files(&dir), 0, "recover deleted it");
    assert_eq!(ws.state_records(), 0);
}

fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[test]
fn memory_pressure_holds_the_memory_resident_in_a_hog_the_oom_killer_takes_first() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let file = ws.write(
        "memory.yaml",
        "apiVersion: faultline/v1\nmetadata: {name: memory}\nmax_duration: 1m\n\
         faults: [{id: hog, kind: memory-pressure, params: {size: 256MiB}, duration: 4s}]\n",
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    // A bound, not a measurement: in the stock-kernel lane's emulated VM the hog's first
    // start (exec of a debug binary, 256 MiB touched) took more than 10 s.
    util::until_injected(&ws, &runner, Duration::from_secs(60));
    let events = ws.journal();
    let hog = events_of(&events, "fault_injected")[0]["details"]["hog"]["pid"]
        .as_u64()
        .unwrap() as u32;
    let rss = vm_rss_bytes(hog).expect("the hog runs");
    assert!(rss >= 256 << 20, "hog resident {} MiB", rss >> 20);
    let adj = std::fs::read_to_string(format!("/proc/{hog}/oom_score_adj")).unwrap();
    assert_eq!(
        adj.trim(),
        "1000",
        "the hog is the OOM killer's first choice"
    );
    let runner_adj =
        std::fs::read_to_string(format!("/proc/{}/oom_score_adj", runner.pid())).unwrap();
    assert_ne!(runner_adj.trim(), "1000", "faultline itself is not");
    assert_eq!(
        runner.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert!(
        util::proc_state(hog).is_none(),
        "the hog is gone after the revert"
    );
}

#[test]
fn kill_9_of_the_runner_takes_its_memory_hog_with_it() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let file = ws.write(
        "memory.yaml",
        "apiVersion: faultline/v1\nmetadata: {name: memory-crash}\nmax_duration: 1m\n\
         faults: [{id: hog, kind: memory-pressure, params: {size: 128MiB}, duration: 50s}]\n",
    );
    let mut runner = Runner::spawn_unwatched(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(10));
    let events = ws.journal();
    let hog = events_of(&events, "fault_injected")[0]["details"]["hog"]["pid"]
        .as_u64()
        .unwrap() as u32;
    runner.crash();
    assert!(
        wait_for(Duration::from_secs(5), || matches!(
            util::proc_state(hog),
            None | Some('Z')
        )),
        "the hog outlived its parent"
    );
    util::recover_ok(&ws);
    assert_eq!(ws.state_records(), 0);
}

#[test]
fn kill_9_during_cpu_limit_leaves_a_cgroup_that_recover_undoes_exactly() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let busy = Busy::start("resources-cpu-limit");
    let cgroups_before = std::fs::read_to_string(format!("/proc/{}/cgroup", busy.pid())).unwrap();
    let file = ws.write(
        "limit.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: limit-crash}}\nmax_duration: 1m\n\
             targets: {{busy: {{process: {{pid: {}}}}}}}\n\
             faults: [{{id: squeeze, kind: cpu-limit, target: busy, params: {{quota: 20%}}, duration: 50s}}]\n",
            busy.pid()
        ),
    );
    let mut runner = Runner::spawn_unwatched(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    runner.crash();
    let during = std::fs::read_to_string(format!("/proc/{}/cgroup", busy.pid())).unwrap();
    assert!(
        during.contains("faultline-"),
        "the crash left the process in faultline's cgroup: {during}"
    );

    util::recover_ok(&ws);
    let after = std::fs::read_to_string(format!("/proc/{}/cgroup", busy.pid())).unwrap();
    assert_eq!(cgroups_before, after, "recover moved it back exactly");
    let leftover = std::fs::read_dir("/sys/fs/cgroup/cpu")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("faultline-"))
        })
        .unwrap_or(false);
    assert!(!leftover, "no faultline cgroup is left");
}

#[test]
fn kill_9_during_disk_io_pressure_stops_the_io_and_recover_deletes_the_work_file() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let fs =
        faultline::sys::loopdev::LoopFs::ext4(128 << 20).expect("loop-mounted ext4 (needs root)");
    let dir = fs.mount_point().to_path_buf();
    let file = ws.write(
        "io.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: io-crash}}\nmax_duration: 1m\n\
             faults: [{{id: churn, kind: disk-io-pressure, params: {{path: '{}', throughput: 20MiB}}, duration: 50s}}]\n",
            dir.display()
        ),
    );
    let mut runner = Runner::spawn_unwatched(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(10));
    runner.crash();
    let work_files = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".faultline-io-")
            })
            .count()
    };
    assert_eq!(
        work_files(),
        1,
        "the crash left the work file (its writers died with the process)"
    );
    util::recover_ok(&ws);
    assert_eq!(work_files(), 0);
    assert_eq!(ws.state_records(), 0);
}

#[test]
fn kill_9_during_disk_io_limit_leaves_a_cgroup_that_recover_undoes_exactly() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let victim = util::Proc::sleep("858585");
    let cgroups_before = std::fs::read_to_string(format!("/proc/{}/cgroup", victim.pid())).unwrap();
    let file = ws.write(
        "iolimit.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: io-limit-crash}}\nmax_duration: 1m\n\
             targets: {{writer: {{process: {{pid: {}}}}}}}\n\
             faults: [{{id: slow-disk, kind: disk-io-limit, target: writer, params: {{path: /var/tmp, write_throughput: 10MiB}}, duration: 50s}}]\n",
            victim.pid()
        ),
    );
    let mut runner = Runner::spawn_unwatched(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(5));
    runner.crash();
    let during = std::fs::read_to_string(format!("/proc/{}/cgroup", victim.pid())).unwrap();
    assert!(
        during.contains("faultline-"),
        "the crash left the limit in place: {during}"
    );
    util::recover_ok(&ws);
    let after = std::fs::read_to_string(format!("/proc/{}/cgroup", victim.pid())).unwrap();
    assert_eq!(cgroups_before, after, "recover moved it back exactly");
    assert_eq!(ws.state_records(), 0);
}
