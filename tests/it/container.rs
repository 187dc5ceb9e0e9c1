//! Container targets against real Docker containers. There is no registry to pull from, so
//! each test imports a one-program image (Debian's static busybox) and removes it, and every
//! container it starts, when it ends, also on failure. The containers get no network
//! (`--network none`): Docker adds no iptables rule for them.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::util::{
    self, Runner, Workspace, cpu_share, events_of, faultline, proc_state, run_to_end, wait_for,
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
        Container::run(image, labels, &["sleep", &sleep], sleep.clone())
    }

    /// A container whose main process burns a CPU (a busy loop in busybox's shell).
    fn busy(image: &Image) -> Container {
        Container::run(
            image,
            &[],
            &["sh", "-c", "while :; do :; done"],
            String::new(),
        )
    }

    fn run(image: &Image, labels: &[&str], applet: &[&str], sleep: String) -> Container {
        // The guard first: a container created but not started is still removed.
        let container = Container {
            name: unique("box"),
            sleep,
        };
        let mut args = vec!["run", "-d", "--name", &container.name, "--network", "none"];
        for label in labels {
            args.extend(["--label", label]);
        }
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
