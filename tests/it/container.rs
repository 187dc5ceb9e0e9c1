//! Container targets against real Docker containers. There is no registry to pull from, so
//! each test imports a one-program image (Debian's static busybox) and removes it, and every
//! container it starts, when it ends, also on failure. Containers get no network
//! (`--network none`) unless a test needs one: then they are on Docker's default bridge,
//! and the test checks that Docker's rules, the bridge and the host's qdiscs are as they
//! were.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use faultline::sys::netns::Netns;

use crate::util::{
    self, Runner, Workspace, connects_here, cpu_share, echo_rtts_here, events_of, faultline,
    percentile, proc_state, run_to_end, wait_for,
};

const BUSYBOX: &str = "/bin/busybox";

/// `docker ARGS`, bounded: a daemon that hangs fails the test instead of stalling it.
fn docker(args: &[&str]) -> Output {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker CLI (the machine has a Docker Engine)");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("docker {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("docker output")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn unique(what: &str) -> String {
    static NTH: AtomicUsize = AtomicUsize::new(0);
    format!(
        "fl-it-{what}-{}-{}",
        std::process::id(),
        NTH.fetch_add(1, Ordering::Relaxed)
    )
}

/// An image holding only /bin/busybox, removed on drop.
struct Image(String);

impl Image {
    fn busybox() -> Image {
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} missing: install Debian's busybox-static (scripts/test.sh does)"
        );
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("bin")).expect("mkdir bin");
        std::fs::copy(BUSYBOX, root.path().join("bin/busybox")).expect("copy busybox");
        let tar = root.path().join("image.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .arg("-cf")
            .arg(&tar)
            .arg("bin")
            .status()
            .expect("tar");
        assert!(status.success(), "tar of the image failed");
        // The guard first: an import that fails half-way (or runs out of time while the
        // daemon goes on) is still removed.
        let image = Image(unique("image"));
        docker_ok(&["import", &tar.display().to_string(), &image.0]);
        image
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

/// A running container of `image`: `busybox sleep SECONDS` as its main process; removed
/// (with whatever runs in it) on drop.
struct Container {
    name: String,
    sleep: String,
}

impl Container {
    fn start(image: &Image, labels: &[&str]) -> Container {
        // A distinctive argument, so the test can find the container's processes and a
        // host process with the very same command line.
        static SECONDS: AtomicUsize = AtomicUsize::new(0);
        let sleep = (6000 + SECONDS.fetch_add(1, Ordering::Relaxed)).to_string();
        let mut options = vec!["--network", "none"];
        for label in labels {
            options.extend(["--label", label]);
        }
        Container::run(image, &options, &["sleep", &sleep], sleep.clone())
    }

    /// A sleeping container that Docker restarts whenever its main process ends.
    fn restarting(image: &Image, policy: &str) -> Container {
        Container::run(
            image,
            &["--network", "none", "--restart", policy],
            &["sleep", "6999"],
            "6999".into(),
        )
    }

    /// A container on Docker's default bridge whose main process is a TCP echo server on
    /// port 8080 (busybox's `nc`, forking a `cat` per connection).
    fn echo(image: &Image) -> Container {
        let container = Container::run(
            image,
            &["--network", "bridge"],
            &["nc", "-ll", "-p", "8080", "-e", BUSYBOX, "cat"],
            String::new(),
        );
        let addr = container.echo_addr();
        assert!(
            wait_for(Duration::from_secs(10), || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }),
            "the echo server in {} did not come up",
            container.name
        );
        container
    }

    /// Its echo server's address on Docker's bridge.
    fn echo_addr(&self) -> std::net::SocketAddr {
        let ip = docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}}",
            &self.name,
        ]);
        format!("{ip}:8080").parse().expect("a bridge address")
    }

    /// A container whose main process burns a CPU (a busy loop in busybox's shell).
    fn busy(image: &Image) -> Container {
        Container::run(
            image,
            &["--network", "none"],
            &["sh", "-c", "while :; do :; done"],
            String::new(),
        )
    }

    /// `docker run -d OPTIONS IMAGE busybox APPLET...`.
    fn run(image: &Image, options: &[&str], applet: &[&str], sleep: String) -> Container {
        // The guard first: a container created but not started is still removed.
        let container = Container {
            name: unique("box"),
            sleep,
        };
        let mut args = vec!["run", "-d", "--name", &container.name];
        args.extend(options);
        args.extend([image.0.as_str(), BUSYBOX]);
        args.extend(applet);
        docker_ok(&args);
        container
    }

    fn main_pid(&self) -> u32 {
        docker_ok(&["inspect", "-f", "{{.State.Pid}}", &self.name])
            .parse()
            .expect("a PID")
    }

    fn id(&self) -> String {
        docker_ok(&["inspect", "-f", "{{.Id}}", &self.name])
    }

    fn running(&self) -> bool {
        docker_ok(&["inspect", "-f", "{{.State.Running}}", &self.name]) == "true"
    }

    /// A second process in the container (`docker exec`), its host PID.
    fn exec_sleep(&self) -> u32 {
        let seconds = format!("{}1", self.sleep);
        docker_ok(&["exec", "-d", &self.name, BUSYBOX, "sleep", &seconds]);
        let wanted = format!("{BUSYBOX}\0sleep\0{seconds}\0");
        let mut found = None;
        assert!(
            wait_for(Duration::from_secs(10), || {
                found = pids_with_cmdline(&wanted).into_iter().next();
                found.is_some()
            }),
            "the exec'd process did not show up"
        );
        found.unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

fn pids_with_cmdline(wanted: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// A host process with the same command line as a container's main process: a selector
/// that leaked out of the container would take it too.
fn host_twin(container: &Container) -> util::Proc {
    let child = Command::new(BUSYBOX)
        .args(["sleep", &container.sleep])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn busybox sleep");
    util::Proc::adopt(child)
}

fn experiment(target: &str, fault: &str) -> String {
    format!(
        "apiVersion: faultline/v1\nmetadata: {{name: container}}\nmax_duration: 1m\n\
         targets: {{app: {{process: {target}}}}}\nfaults: [{fault}]\n"
    )
}

#[test]
fn process_stop_on_a_container_freezes_its_processes_and_no_host_twin() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let image = Image::busybox();
    let container = Container::start(&image, &[]);
    let main = container.main_pid();
    let exec = container.exec_sleep();
    let twin = host_twin(&container);
    let file = ws.write(
        "stop.yaml",
        &experiment(
            &format!("{{container: {}, runtime: docker}}", container.name),
            "{id: freeze, kind: process-stop, target: app, duration: 3s}",
        ),
    );

    let plan = faultline(&ws)
        .arg("plan")
        .arg(&file)
        .output()
        .expect("plan");
    let shown = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{shown}");
    let id = container.id();
    let line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("container "))
        .unwrap_or_else(|| panic!("no container line in:\n{shown}"));
    assert!(
        line.contains(&id[..12])
            && line.contains(&container.name)
            && line.contains("(docker)")
            && line.contains(&format!("main pid {main}"))
            && line.contains(", cgroup /")
            && line.contains("netns net:["),
        "{line}"
    );
    for pid in [main, exec] {
        assert!(shown.contains(&format!("would hit pid {pid} ")), "{shown}");
    }
    assert!(!shown.contains(&format!("pid {} ", twin.pid())), "{shown}");

    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(15));
    assert_eq!(proc_state(main), Some('T'));
    assert_eq!(proc_state(exec), Some('T'));
    assert!(twin.running(), "the host's twin was touched");
    assert_eq!(
        runner.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert!(
        matches!(proc_state(main), Some('S' | 'R')),
        "main not thawed"
    );
    assert!(
        matches!(proc_state(exec), Some('S' | 'R')),
        "exec not thawed"
    );
    let injected = events_of(&ws.journal(), "fault_injected").len();
    assert_eq!(injected, 1, "{}", runner.stderr());
}

#[test]
fn process_kill_by_label_ends_each_labelled_container_and_no_other() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let image = Image::busybox();
    let label = format!("{}=web", unique("service"));
    let first = Container::start(&image, &[&label]);
    let second = Container::start(&image, &[&label]);
    let other = Container::start(&image, &[]);
    let file = ws.write(
        "kill.yaml",
        &experiment(
            &format!("{{container: '{label}'}}"),
            "{id: kill, kind: process-kill, target: app}",
        ),
    );
    let (code, stderr) = run_to_end(&ws, &file);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        wait_for(Duration::from_secs(10), || !first.running()
            && !second.running()),
        "a labelled container still runs"
    );
    assert!(other.running(), "a container without the label was killed");
}

#[test]
fn cpu_limit_on_a_container_holds_it_to_the_quota_and_puts_it_back_in_its_cgroup() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let image = Image::busybox();
    let container = Container::busy(&image);
    let main = container.main_pid();
    let cgroups_before = std::fs::read_to_string(format!("/proc/{main}/cgroup")).expect("cgroup");
    let file = ws.write(
        "limit.yaml",
        &experiment(
            &format!("{{container: {}}}", container.name),
            "{id: squeeze, kind: cpu-limit, target: app, params: {quota: 25%}, duration: 6s}",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(15));
    let limited = cpu_share(main, Duration::from_secs(4));
    println!("container under a 25% quota: {:.1}%", limited * 100.0);
    assert!(
        (0.20..=0.30).contains(&limited),
        "{:.1}% of a CPU",
        limited * 100.0
    );
    assert_eq!(
        runner.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        runner.stderr()
    );
    let cgroups_after = std::fs::read_to_string(format!("/proc/{main}/cgroup")).expect("cgroup");
    assert_eq!(cgroups_before, cgroups_after, "back in exactly its cgroups");
    let free = cpu_share(main, Duration::from_secs(1));
    assert!(
        free > 0.6,
        "unthrottled after the revert: {:.1}%",
        free * 100.0
    );
    assert!(container.running());
}

#[test]
fn a_container_that_does_not_exist_injects_nothing_and_says_so() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let missing = unique("missing");
    let file = ws.write(
        "missing.yaml",
        &experiment(
            &format!("{{container: {missing}, runtime: docker}}"),
            "{id: freeze, kind: process-stop, target: app, duration: 2s}",
        ),
    );
    let (code, stderr) = run_to_end(&ws, &file);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("docker knows no container `{missing}`")),
        "{stderr}"
    );
    assert!(events_of(&ws.journal(), "fault_injected").is_empty());
}

/// An experiment acting on the traffic of one container (`network: {container: NAME, ...}`).
fn network_experiment(container: &Container, fault: &str) -> String {
    format!(
        "apiVersion: faultline/v1\nmetadata: {{name: container-network}}\nmax_duration: 2m\n\
         targets: {{app: {{network: {{container: {}, runtime: docker, protocol: tcp}}}}}}\n\
         faults: [{fault}]\n",
        container.name
    )
}

/// What a network fault could change in a network namespace, from its own tools (argv, no
/// shell): iptables (both variants, IPv4 and IPv6), the nft ruleset, links, addresses,
/// routes and qdiscs. Packet and byte counters are left out: traffic moves them.
fn network_state(netns: Option<&Netns>) -> String {
    let commands: &[&[&str]] = &[
        &["iptables-legacy-save"],
        &["ip6tables-legacy-save"],
        &["iptables-nft-save"],
        &["ip6tables-nft-save"],
        &["nft", "list", "ruleset"],
        &["ip", "-d", "link", "show"],
        &["ip", "addr", "show"],
        &["ip", "route", "show", "table", "all"],
        &["tc", "qdisc", "show"],
    ];
    // Counters move with traffic, and the bridge's timers with time.
    let counters = regex::Regex::new(r"\[\d+:\d+\]|packets \d+ bytes \d+").unwrap();
    let timers = regex::Regex::new(r"_timer +[\d.]+").unwrap();
    // New veths' IPv6 addresses are tentative until duplicate address detection is done,
    // and their local routes appear then: wait for that, so the kernel's own settling is not
    // taken for a change.
    let tentative = || {
        let mut command = match netns {
            Some(ns) => {
                faultline::sys::netns::command_in(ns, &["ip", "-6", "addr", "show", "tentative"])
            }
            None => {
                let mut command = Command::new("ip");
                command.args(["-6", "addr", "show", "tentative"]);
                command
            }
        };
        command.output().map(|o| o.stdout).unwrap_or_default()
    };
    assert!(
        wait_for(Duration::from_secs(10), || tentative().is_empty()),
        "IPv6 addresses still tentative after 10 s"
    );
    let mut state = String::new();
    for argv in commands {
        let mut command = match netns {
            Some(ns) => faultline::sys::netns::command_in(ns, argv),
            None => {
                let mut command = Command::new(argv[0]);
                command.args(&argv[1..]);
                command
            }
        };
        let out = command.output().expect("a network tool");
        let text = String::from_utf8_lossy(&out.stdout);
        let text = text
            .lines()
            .filter(|line| !line.starts_with("# "))
            .collect::<Vec<_>>()
            .join("\n");
        state.push_str(&format!(
            "$ {}\n{}\n",
            argv.join(" "),
            timers.replace_all(&counters.replace_all(&text, ""), "_timer")
        ));
    }
    state
}

/// A container's network namespace, as its main process has it now.
fn netns_of(container: &Container) -> Netns {
    faultline::sys::netns::of_process(container.main_pid(), &container.name).expect("its netns")
}

fn median_rtt(addr: std::net::SocketAddr, n: usize) -> f64 {
    percentile(&echo_rtts_here(addr, n, Duration::from_millis(5)), 50.0)
}

#[test]
fn a_delay_in_a_container_slows_only_its_traffic_and_leaves_host_and_docker_as_they_were() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let image = Image::busybox();
    let web = Container::echo(&image);
    let neighbour = Container::echo(&image);
    let (web_addr, neighbour_addr) = (web.echo_addr(), neighbour.echo_addr());
    let inside = netns_of(&web);
    let (host_before, inside_before) = (network_state(None), network_state(Some(&inside)));
    let baseline = median_rtt(web_addr, 30);
    let file = ws.write(
        "delay.yaml",
        &network_experiment(
            &web,
            "{id: slow, kind: network-delay, target: app, params: {delay: 100ms}, duration: 20s}",
        ),
    );

    let plan = faultline(&ws)
        .arg("plan")
        .arg(&file)
        .output()
        .expect("plan");
    let shown = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{shown}");
    let Netns::Process(process) = &inside else {
        unreachable!()
    };
    assert!(
        shown.contains(&format!(
            "in netns docker container {} ({})'s net:[{}] (pid {})",
            web.name,
            &web.id()[..12],
            process.inode,
            process.pid
        )),
        "{shown}"
    );

    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(15));
    let rtts = echo_rtts_here(web_addr, 60, Duration::from_millis(5));
    let neighbour_rtt = median_rtt(neighbour_addr, 30);
    let (p50, p95) = (percentile(&rtts, 50.0), percentile(&rtts, 95.0));
    println!(
        "container echo: baseline p50 {baseline:.3} ms; under a 100 ms delay p50 {p50:.3} ms \
         (error {:+.3} ms), p95 {p95:.3} ms; the neighbour on the same bridge p50 {neighbour_rtt:.3} ms",
        p50 - 100.0 - baseline
    );
    assert!(
        (p50 - (100.0 + baseline)).abs() <= 2.0,
        "p50 {p50:.3} ms for a 100 ms delay (baseline {baseline:.3})"
    );
    let fastest = rtts.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(
        fastest >= 100.0,
        "an echo came back early: {fastest:.3} ms in {rtts:?}"
    );
    assert!(
        neighbour_rtt < 5.0,
        "the other container on the bridge is slowed: {neighbour_rtt:.3} ms"
    );
    assert_eq!(
        network_state(None),
        host_before,
        "the fault changed the host's network"
    );
    assert_eq!(
        runner.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        runner.stderr()
    );

    let after = median_rtt(web_addr, 20);
    assert!(after < 5.0, "still slow after the revert: {after:.3} ms");
    assert_eq!(network_state(None), host_before);
    assert_eq!(
        network_state(Some(&inside)),
        inside_before,
        "the container's namespace is not as it was"
    );
}

#[test]
fn a_partition_in_a_container_is_reverted_by_the_watchdog_and_by_recover_after_kill_9() {
    let _serial = util::serial();
    let image = Image::busybox();
    let web = Container::echo(&image);
    let neighbour = Container::echo(&image);
    let (web_addr, neighbour_addr) = (web.echo_addr(), neighbour.echo_addr());
    let inside = netns_of(&web);
    let (host_before, inside_before) = (network_state(None), network_state(Some(&inside)));
    for watched in [true, false] {
        let ws = Workspace::new();
        let file = ws.write(
            "partition.yaml",
            &network_experiment(
                &web,
                "{id: cut, kind: network-partition, target: app, duration: 50s}",
            ),
        );
        let mut runner = if watched {
            Runner::spawn(&ws, &[&file])
        } else {
            Runner::spawn_unwatched(&ws, &[&file])
        };
        util::until_injected(&ws, &runner, Duration::from_secs(15));
        assert_eq!(
            connects_here(web_addr, 3),
            0,
            "the container's traffic is cut"
        );
        assert_eq!(
            connects_here(neighbour_addr, 3),
            3,
            "the neighbour is not cut"
        );
        runner.crash();
        if watched {
            assert!(
                wait_for(Duration::from_secs(10), || connects_here(web_addr, 3) == 3),
                "the watchdog did not restore the container's traffic"
            );
        } else {
            assert_eq!(
                connects_here(web_addr, 3),
                0,
                "the crash left the partition in place"
            );
            util::recover_ok(&ws);
            assert_eq!(
                connects_here(web_addr, 3),
                3,
                "recover restored the traffic"
            );
        }
        assert_eq!(network_state(None), host_before, "watched: {watched}");
        assert_eq!(
            network_state(Some(&inside)),
            inside_before,
            "watched: {watched}"
        );
    }
}

#[test]
fn a_container_recreated_while_its_traffic_is_cut_is_left_alone_by_the_revert() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let image = Image::busybox();
    let web = Container::echo(&image);
    let old = netns_of(&web);
    let file = ws.write(
        "partition.yaml",
        &network_experiment(
            &web,
            "{id: cut, kind: network-partition, target: app, duration: 8s}",
        ),
    );
    let mut runner = Runner::spawn(&ws, &[&file]);
    util::until_injected(&ws, &runner, Duration::from_secs(15));
    assert_eq!(
        connects_here(web.echo_addr(), 3),
        0,
        "the container's traffic is cut"
    );
    // A restart gives the container a new main process and a new network namespace.
    docker_ok(&["restart", "-t", "0", &web.name]);
    let addr = web.echo_addr();
    assert!(
        wait_for(Duration::from_secs(10), || connects_here(addr, 3) == 3),
        "the restarted container is not reachable"
    );
    let new = netns_of(&web);
    assert_ne!(new, old, "the restart kept the namespace");
    let new_before = network_state(Some(&new));
    assert_eq!(
        runner.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        runner.stderr()
    );
    assert_eq!(
        network_state(Some(&new)),
        new_before,
        "the revert touched the new container's namespace"
    );
    let events = ws.journal();
    let reverted = events_of(&events, "fault_reverted");
    let summary = reverted[0]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("is gone") && summary.contains(&web.name),
        "{summary}"
    );
}

#[test]
fn a_killed_container_is_reported_restarted_by_its_policy_with_the_time_it_took() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let image = Image::busybox();
    let always = Container::restarting(&image, "always");
    let never = Container::restarting(&image, "no");
    let (always_pid, never_pid) = (always.main_pid(), never.main_pid());
    let file = ws.write(
        "kill.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: container-restart}}\nmax_duration: 1m\n\
             targets: {{always: {{process: {{container: {}}}}}, never: {{process: {{container: {}}}}}}}\n\
             faults: [{{id: kill-always, kind: process-kill, target: always, duration: 8s}}, \
                      {{id: kill-never, kind: process-kill, target: never, duration: 3s}}]\n",
            always.name, never.name
        ),
    );
    let output = faultline(&ws)
        .arg("run")
        .arg(&file)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let events = ws.journal();
    let restarts = events_of(&events, "container_restart");
    assert_eq!(restarts.len(), 2, "{restarts:?}");
    let of = |fault: &str| {
        *restarts
            .iter()
            .find(|e| e["fault"] == fault)
            .unwrap_or_else(|| panic!("no restart event for {fault}: {restarts:?}"))
    };
    let restarted = of("kill-always");
    assert_eq!(restarted["restarted"], true, "{restarted}");
    assert_eq!(restarted["old_pid"], always_pid);
    let new_pid = restarted["new_pid"].as_u64().unwrap() as u32;
    assert_ne!(new_pid, always_pid);
    assert_eq!(
        always.main_pid(),
        new_pid,
        "the new main process is the one reported"
    );
    let took = restarted["restart_ms"].as_f64().unwrap();
    println!("docker restarted the killed container {took:.1} ms after the kill");
    assert!((0.0..10_000.0).contains(&took), "{restarted}");
    assert!(
        restarted["watched_ms"].as_f64().unwrap() < 7_000.0,
        "the watch went on after the restart: {restarted}"
    );
    let line = format!(
        "restarted {:.2} s after the kill (pid {always_pid} -> {new_pid})",
        took / 1000.0
    );
    assert!(
        stdout.contains(&line) || stderr.contains(&line),
        "{stdout}\n{stderr}"
    );

    let stayed = of("kill-never");
    assert_eq!(stayed["restarted"], false, "{stayed}");
    assert_eq!(stayed["old_pid"], never_pid);
    assert!(!never.running());
    let junit = std::fs::read_to_string(&ws.reports("xml")[0]).expect("junit");
    assert!(
        junit.contains(&format!(
            "restarted {:.2} s after the kill (pid {always_pid} -&gt; {new_pid})",
            took / 1000.0
        )) && junit.contains("NOT restarted within 3.0 s of the kill (restart policy no)"),
        "{junit}"
    );
}

/// What the shipped compose-style example creates, by the names it gives them: removed on
/// drop, so a failing run leaves nothing behind either.
struct ExampleLeftovers;

impl Drop for ExampleLeftovers {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "faultline-example-web", "faultline-example-db"]);
        let _ = docker(&["network", "rm", "faultline-example"]);
        let _ = docker(&["rmi", "-f", "faultline-example-empty"]);
        let _ = std::fs::remove_file("/tmp/faultline-example-empty.tar");
    }
}

#[test]
fn the_shipped_two_container_example_aborts_on_its_slow_dependency_and_cleans_up() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let _leftovers = ExampleLeftovers;
    let host_before = network_state(None);
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("experiments/container-dependency-latency-aborts.yaml");
    let output = faultline(&ws)
        .arg("run")
        .arg(&file)
        .arg("--var")
        .arg(format!("faultline_binary={}", util::faultline_bin()))
        .arg("--var")
        .arg(format!("web_port={}", util::free_port()))
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .expect("run");
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(2), "aborted: {said}");
    let events = ws.journal();
    let injected = events_of(&events, "fault_injected");
    assert_eq!(injected.len(), 1, "{said}");
    assert!(
        injected[0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("delay 300ms")),
        "{said}"
    );
    let abort = events_of(&events, "abort");
    assert_eq!(abort.len(), 1, "{said}");
    assert_eq!(abort[0]["trigger"], "probe_failure", "{said}");
    let after = events_of(&events, "gate")
        .into_iter()
        .find(|g| g["phase"] == "after")
        .unwrap_or_else(|| panic!("no after gate: {said}"));
    assert_eq!(after["passed"], true, "the web service recovered: {said}");
    let names = docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!names.contains("faultline-example"), "cleanup left {names}");
    assert_eq!(
        network_state(None),
        host_before,
        "the host's network is not as it was"
    );
}
