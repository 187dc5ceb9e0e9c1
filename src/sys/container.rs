//! Containers, as their runtime's API describes them: which containers a reference means
//! (a name, an ID of 12 characters or more, or a `key=value` label) and, for each, its ID,
//! name, main PID, state and restart policy, so a fault acts on the container's processes.
//! A fault records the processes it picked by PID and start time (`ProcRef`), so its revert
//! never touches a container recreated under the same name.
//!
//! The Docker Engine API (and Podman's compatible one) is asked over its unix socket with
//! two GET requests, HTTP/1.0 so the answer is the body up to the end of the connection.
//! That is a few dozen lines; a client crate (bollard) would bring the whole API's generated
//! types and a second HTTP stack into a binary whose resident code pages are most of the
//! runner's footprint. The connection, every read and write, and the whole lookup have a
//! timeout: a daemon that hangs must not hang the run that asked it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The container runtimes whose API faultline speaks (also the experiment's `runtime:`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "ContainerRuntime")]
pub enum Runtime {
    Docker,
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }

    /// Where this runtime's API listens: for Docker `DOCKER_HOST` when it is set (then only
    /// there: another socket could be another daemon than the one the operator's CLI
    /// talks to), else the usual socket.
    fn sockets(self) -> Result<Vec<PathBuf>, ContainerError> {
        match self {
            Runtime::Docker => match std::env::var("DOCKER_HOST") {
                Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
                    Some(path) => Ok(vec![PathBuf::from(path)]),
                    None => Err(ContainerError::RemoteHost { host }),
                },
                _ => Ok(vec!["/var/run/docker.sock".into()]),
            },
            Runtime::Podman => Ok(vec!["/run/podman/podman.sock".into()]),
        }
    }
}

/// How long one request may take, connection to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long finding the containers of one reference may take in all (a label's list and an
/// inspect of each container it lists).
const FIND_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest ID prefix taken as an ID: what `docker ps` shows. A shorter one (`db`,
/// `cafe`) could be a name that does not exist matching some other container's ID.
const SHORTEST_ID_PREFIX: usize = 12;
/// More than any inspect or list answer of a host's containers.
const ANSWER_CAP: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no container runtime's API socket here (looked for {tried}); is its daemon running?")]
    NoRuntime { tried: String },
    #[error(
        "DOCKER_HOST is {host}: faultline asks only a runtime on this host, over a unix socket (unix://PATH)"
    )]
    RemoteHost { host: String },
    #[error(
        "{runtime} has no container named `{reference}`; the ID of {id} only starts with that (give a name, or at least {SHORTEST_ID_PREFIX} characters of an ID)"
    )]
    PrefixOnly {
        runtime: &'static str,
        reference: String,
        id: String,
    },
    #[error("cannot ask {runtime} at {socket}: {source}")]
    Io {
        runtime: &'static str,
        socket: String,
        source: std::io::Error,
    },
    #[error("{runtime} knows no container `{reference}`")]
    NotFound {
        runtime: &'static str,
        reference: String,
    },
    #[error("{runtime} answered {status} for `{reference}`: {message}")]
    Refused {
        runtime: &'static str,
        reference: String,
        status: u16,
        message: String,
    },
    #[error("{runtime} gave an answer faultline cannot read: {source}")]
    Unreadable {
        runtime: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ContainerError {
    pub fn cause(&self) -> super::Cause {
        match self {
            ContainerError::NotFound { .. } | ContainerError::PrefixOnly { .. } => {
                super::Cause::Gone
            }
            ContainerError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                super::Cause::Permission
            }
            ContainerError::NoRuntime { .. } | ContainerError::RemoteHost { .. } => {
                super::Cause::Unsupported
            }
            _ => super::Cause::Failed,
        }
    }
}

/// One container as its runtime describes it now.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Container {
    pub runtime: Runtime,
    /// The full ID.
    pub id: String,
    /// Its name, without Docker's leading `/`.
    pub name: String,
    /// The main process, as the host's PID namespace numbers it; 0 when not running.
    pub pid: u32,
    pub running: bool,
    /// `no`, `always`, `on-failure`, `unless-stopped` (empty when the runtime says none).
    pub restart_policy: String,
    /// When its main process last started (RFC 3339, as the runtime says it); a restart
    /// changes it.
    #[serde(default)]
    pub started_at: String,
}

/// Where a running container's main process lives, read from the host's /proc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Its cgroup: the v2 path, or on v1 the `cpu` hierarchy's (else the first listed).
    pub cgroup: String,
    pub cgroup_version: u8,
    /// `net:[INODE]`, as `/proc/PID/ns/net` links it.
    pub netns: String,
}

/// The cgroup a `/proc/PID/cgroup` text puts a process in, and the version of the
/// hierarchy that says so: v1 when any controller has a hierarchy of its own (the `cpu`
/// one's path, else the first), v2 otherwise.
pub fn cgroup_of(text: &str) -> Option<(String, u8)> {
    let memberships = super::cgroup::parse_proc_cgroup(text);
    let v1 = |m: &&super::cgroup::Membership| {
        !m.controllers.is_empty() && !m.controllers.iter().any(|c| c.starts_with("name="))
    };
    memberships
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == "cpu"))
        .or_else(|| memberships.iter().find(v1))
        .map(|m| (m.path.clone(), 1))
        .or_else(|| {
            memberships
                .iter()
                .find(|m| m.controllers.is_empty())
                .map(|m| (m.path.clone(), 2))
        })
}

impl Container {
    /// Where its main process is now; `None` when it is not running or has just exited.
    pub fn placement(&self) -> Option<Placement> {
        if !self.running || self.pid == 0 {
            return None;
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid)).ok()?;
        let (cgroup, cgroup_version) = cgroup_of(&cgroup)?;
        let netns = std::fs::read_link(format!("/proc/{}/ns/net", self.pid)).ok()?;
        Some(Placement {
            cgroup,
            cgroup_version,
            netns: netns.display().to_string(),
        })
    }

    /// The ID as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// The containers `reference` means: `key=value` selects by label (every container that has
/// it, running or not), anything else is a name or an ID prefix (one container). With no
/// `runtime`, the first runtime whose socket exists is asked.
pub fn find(reference: &str, runtime: Option<Runtime>) -> Result<Vec<Container>, ContainerError> {
    Api::connect(runtime)?.find(reference)
}

impl Api {
    fn find(&self, reference: &str) -> Result<Vec<Container>, ContainerError> {
        let api = self;
        match reference.split_once('=') {
            Some(_) => {
                let filters = serde_json::json!({ "label": [reference] }).to_string();
                let path = format!(
                    "/containers/json?all=1&filters={}",
                    percent_encode(&filters)
                );
                let listed: Vec<Listed> = api.get(&path, reference)?;
                let mut found = Vec::new();
                for listed in &listed {
                    match api.inspect(&listed.id) {
                        Ok(container) => found.push(container),
                        // Removed between the list and its inspect (a scale-down): not there.
                        Err(ContainerError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(found)
            }
            None => {
                let container = api.inspect(reference)?;
                // The API takes a reference as a name, else as an ID prefix: a name that does
                // not exist must not pick the container whose ID happens to start with it.
                let by_id =
                    reference.len() >= SHORTEST_ID_PREFIX && container.id.starts_with(reference);
                if container.name != reference && !by_id {
                    return Err(ContainerError::PrefixOnly {
                        runtime: api.runtime.as_str(),
                        reference: reference.to_string(),
                        id: container.short_id().to_string(),
                    });
                }
                Ok(vec![container])
            }
        }
    }
}

/// Whether `runtime`'s API answers here: its socket and the engine's version, for `doctor`.
pub fn version(runtime: Runtime) -> Result<String, ContainerError> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(rename = "Version", default)]
        version: String,
        #[serde(rename = "ApiVersion", default)]
        api_version: String,
    }
    let api = Api::connect(Some(runtime))?;
    let answer: Version = api.get("/version", "/version")?;
    Ok(format!(
        "{} at {} (engine {}, API {})",
        runtime.as_str(),
        api.socket.display(),
        answer.version,
        answer.api_version
    ))
}

/// The one container `reference` names now, if it still exists.
pub fn inspect(reference: &str, runtime: Runtime) -> Result<Container, ContainerError> {
    Api::connect(Some(runtime))?.inspect(reference)
}

struct Api {
    runtime: Runtime,
    socket: PathBuf,
    /// Every request of this lookup ends by then.
    deadline: std::time::Instant,
}

#[derive(Debug, Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
}

#[derive(Deserialize)]
struct Inspected {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "State")]
    state: InspectedState,
    #[serde(rename = "HostConfig", default)]
    host_config: Option<InspectedHostConfig>,
}

#[derive(Deserialize)]
struct InspectedState {
    #[serde(rename = "Running", default)]
    running: bool,
    #[serde(rename = "Pid", default)]
    pid: i64,
    #[serde(rename = "StartedAt", default)]
    started_at: String,
}

#[derive(Deserialize)]
struct InspectedHostConfig {
    #[serde(rename = "RestartPolicy", default)]
    restart_policy: Option<InspectedRestart>,
}

#[derive(Deserialize)]
struct InspectedRestart {
    #[serde(rename = "Name", default)]
    name: String,
}

#[derive(Deserialize)]
struct ApiMessage {
    #[serde(default)]
    message: String,
}

impl Api {
    fn connect(runtime: Option<Runtime>) -> Result<Api, ContainerError> {
        let runtimes = match runtime {
            Some(runtime) => vec![runtime],
            None => vec![Runtime::Docker, Runtime::Podman],
        };
        let mut tried = Vec::new();
        for runtime in runtimes {
            for socket in runtime.sockets()? {
                // Only a socket that is not there is passed over: one this user may not
                // reach is the runtime, and asking it says so (permission denied).
                match std::fs::metadata(&socket) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        tried.push(socket.display().to_string());
                    }
                    _ => {
                        return Ok(Api {
                            runtime,
                            socket,
                            deadline: std::time::Instant::now() + FIND_TIMEOUT,
                        });
                    }
                }
            }
        }
        Err(ContainerError::NoRuntime {
            tried: tried.join(", "),
        })
    }

    fn inspect(&self, reference: &str) -> Result<Container, ContainerError> {
        let path = format!("/containers/{}/json", percent_encode(reference));
        let inspected: Inspected = self.get(&path, reference)?;
        Ok(Container {
            runtime: self.runtime,
            name: inspected.name.trim_start_matches('/').to_string(),
            pid: u32::try_from(inspected.state.pid).unwrap_or(0),
            running: inspected.state.running,
            started_at: inspected.state.started_at,
            restart_policy: inspected
                .host_config
                .and_then(|h| h.restart_policy)
                .map(|r| r.name)
                .unwrap_or_default(),
            id: inspected.id,
        })
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        reference: &str,
    ) -> Result<T, ContainerError> {
        let runtime = self.runtime.as_str();
        let io_error = |source| ContainerError::Io {
            runtime,
            socket: self.socket.display().to_string(),
            source,
        };
        let answer = request(&self.socket, path, self.deadline).map_err(io_error)?;
        let (status, body) = parse_answer(&answer).map_err(|e| ContainerError::Unreadable {
            runtime,
            source: e.into(),
        })?;
        match status {
            200 => serde_json::from_slice(&body).map_err(|e| ContainerError::Unreadable {
                runtime,
                source: e.into(),
            }),
            404 => Err(ContainerError::NotFound {
                runtime,
                reference: reference.to_string(),
            }),
            _ => Err(ContainerError::Refused {
                runtime,
                reference: reference.to_string(),
                status,
                message: serde_json::from_slice::<ApiMessage>(&body)
                    .map(|m| m.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned()),
            }),
        }
    }
}

/// One GET over the socket, the whole answer (HTTP/1.0: the server closes after it), within
/// [`REQUEST_TIMEOUT`] and before `deadline`, connection included.
fn request(socket: &Path, path: &str, deadline: std::time::Instant) -> std::io::Result<Vec<u8>> {
    let deadline = deadline.min(std::time::Instant::now() + REQUEST_TIMEOUT);
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no complete answer within {REQUEST_TIMEOUT:?}"),
        )
    };
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|left| !left.is_zero())
    };
    let mut stream = connect_within(socket, left().ok_or_else(timed_out)?)?;
    stream.set_write_timeout(Some(left().ok_or_else(timed_out)?))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| {
        match e.kind() {
            std::io::ErrorKind::WouldBlock => timed_out(),
            _ => e,
        }
    })?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        stream.set_read_timeout(Some(left().ok_or_else(timed_out)?))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(answer),
            Ok(n) if answer.len() + n > ANSWER_CAP => {
                return Err(std::io::Error::other(format!(
                    "answer larger than {ANSWER_CAP} bytes"
                )));
            }
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A read timeout comes back as EAGAIN.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(timed_out()),
            Err(e) => return Err(e),
        }
    }
}

/// Connect to a unix socket, waiting at most `timeout`: a daemon that no longer accepts
/// leaves connect(2) waiting on its full backlog, bounded only by the send timeout, which
/// `UnixStream::connect` gives no way to set first.
fn connect_within(socket: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is a valid value of the type.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a usable unix socket path",
        ));
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    stream.set_write_timeout(Some(timeout))?;
    let length = std::mem::size_of::<libc::sa_family_t>() + bytes.len();
    loop {
        // SAFETY: address is a valid sockaddr_un of at least `length` bytes.
        let rc = unsafe {
            libc::connect(
                stream.as_raw_fd(),
                (&raw const address).cast(),
                length as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(stream);
        }
        let error = std::io::Error::last_os_error();
        match error.kind() {
            std::io::ErrorKind::Interrupted => continue,
            // A connect interrupted and retried that had completed meanwhile.
            _ if error.raw_os_error() == Some(libc::EISCONN) => return Ok(stream),
            std::io::ErrorKind::WouldBlock => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the socket accepted no connection within {timeout:?}"),
                ));
            }
            _ => return Err(error),
        }
    }
}

/// The status and body of an HTTP answer; a chunked body is decoded (a server may send one
/// even to HTTP/1.0).
fn parse_answer(answer: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&answer[..split]).map_err(|_| "headers are not text")?;
    let body = &answer[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_ascii_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or("no status line")?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut decoded = Vec::new();
    let mut rest = body;
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size line")?;
        let size_text =
            std::str::from_utf8(&rest[..end]).map_err(|_| "a chunk size is not text")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "a chunk size is not hex")?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok((status, decoded));
        }
        if size.checked_add(2).is_none_or(|needed| rest.len() < needed) {
            return Err("a chunk shorter than its size".into());
        }
        decoded.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Everything but unreserved characters as `%XX`, for a path segment or a query value.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_answer_gives_its_status_and_body() {
        let answer = b"HTTP/1.0 404 Not Found\r\nContent-Type: application/json\r\n\r\n{\"message\":\"No such container: web\"}\n";
        let (status, body) = parse_answer(answer).unwrap();
        assert_eq!(status, 404);
        assert_eq!(
            serde_json::from_slice::<ApiMessage>(&body).unwrap().message,
            "No such container: web"
        );
    }

    #[test]
    fn a_chunked_answer_is_decoded() {
        let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[{\"Id\r\n9;ext=1\r\n\":\"abc\"}]\r\n0\r\n\r\n";
        let (status, body) = parse_answer(answer).unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, b"[{\"Id\":\"abc\"}]");
        assert!(
            parse_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab").is_err()
        );
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn an_inspect_answer_gives_id_name_pid_and_restart_policy() {
        // The fields faultline reads, as Docker 20.10 (API 1.41) sends them.
        let body = br#"{"Id":"4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c",
            "Created":"2026-12-04T20:00:00Z","Path":"/bin/busybox","Args":["sleep","600"],
            "State":{"Status":"running","Running":true,"Paused":false,"Pid":4242,"ExitCode":0},
            "Name":"/web-1","HostConfig":{"RestartPolicy":{"Name":"always","MaximumRetryCount":0}},
            "Config":{"Labels":{"com.docker.compose.service":"web"}}}"#;
        let inspected: Inspected = serde_json::from_slice(body).unwrap();
        assert_eq!(inspected.state.pid, 4242);
        assert!(inspected.state.running);
        assert_eq!(inspected.name, "/web-1");
        assert_eq!(
            inspected.host_config.unwrap().restart_policy.unwrap().name,
            "always"
        );
        // A stopped container has Pid 0 and may carry no HostConfig at all (Podman).
        let stopped: Inspected =
            serde_json::from_slice(br#"{"Id":"x","State":{"Running":false,"Pid":0}}"#).unwrap();
        assert_eq!(stopped.state.pid, 0);
        assert!(stopped.host_config.is_none());
    }

    #[test]
    fn the_cgroup_is_the_cpu_hierarchy_on_v1_and_the_unified_path_on_v2() {
        let v1 = "12:pids:/docker/4f1c\n4:cpu,cpuacct:/docker/4f1c\n1:name=systemd:/docker/4f1c\n0::/system.slice/containerd.service\n";
        assert_eq!(cgroup_of(v1), Some(("/docker/4f1c".into(), 1)));
        let v2 = "0::/system.slice/docker-4f1c.scope\n";
        assert_eq!(
            cgroup_of(v2),
            Some(("/system.slice/docker-4f1c.scope".into(), 2))
        );
        assert_eq!(cgroup_of("garbage\n"), None);
    }

    #[test]
    fn references_and_label_filters_are_encoded_for_the_url() {
        assert_eq!(percent_encode("web-1"), "web-1");
        assert_eq!(percent_encode("a/../b"), "a%2F..%2Fb");
        assert_eq!(
            percent_encode(r#"{"label":["com.docker.compose.service=web"]}"#),
            "%7B%22label%22%3A%5B%22com.docker.compose.service%3Dweb%22%5D%7D"
        );
    }

    /// A fake API on a unix socket in a temporary directory: answers each request with the
    /// canned answer for its path (404 otherwise) and records the request lines.
    fn fake_api(
        answers: Vec<(&'static str, &'static str)>,
    ) -> (tempfile::TempDir, Api, std::thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for _ in 0..answers.len() + 2 {
                let Ok((mut stream, _)) = listener.accept() else {
                    break;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                requests.push(line);
                let answer = match answers.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => format!("HTTP/1.0 200 OK\r\n\r\n{body}"),
                    None if path == "/stop" => break,
                    None => {
                        "HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container\"}".into()
                    }
                };
                let _ = stream.write_all(answer.as_bytes());
            }
            requests
        });
        let api = Api {
            runtime: Runtime::Docker,
            socket,
            deadline: std::time::Instant::now() + FIND_TIMEOUT,
        };
        (dir, api, server)
    }

    #[test]
    fn a_label_lists_the_containers_then_inspects_each() {
        let label_query =
            "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22app%3Dweb%22%5D%7D";
        let (_dir, api, server) = fake_api(vec![
            // ccc333 is removed between the list and its inspect: left out, not an error.
            (
                label_query,
                r#"[{"Id":"aaa111"},{"Id":"ccc333"},{"Id":"bbb222"}]"#,
            ),
            (
                "/containers/aaa111/json",
                r#"{"Id":"aaa111","Name":"/web-1","State":{"Running":true,"Pid":11}}"#,
            ),
            (
                "/containers/bbb222/json",
                r#"{"Id":"bbb222","Name":"/web-2","State":{"Running":false,"Pid":0},"HostConfig":{"RestartPolicy":{"Name":"always"}}}"#,
            ),
        ]);
        let found = api.find("app=web").unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].name.as_str(), found[0].pid, found[0].running),
            ("web-1", 11, true)
        );
        assert_eq!(
            (found[1].name.as_str(), found[1].restart_policy.as_str()),
            ("web-2", "always")
        );
        let missing = api.find("web-3").unwrap_err();
        assert!(
            matches!(missing, ContainerError::NotFound { .. }),
            "{missing}"
        );
        assert_eq!(missing.to_string(), "docker knows no container `web-3`");
        let _ = request(&api.socket, "/stop", api.deadline);
        let requests = server.join().unwrap();
        assert_eq!(requests[0], format!("GET {label_query} HTTP/1.0"));
        assert_eq!(requests[4], "GET /containers/web-3/json HTTP/1.0");
    }

    #[test]
    fn a_name_that_only_starts_an_id_is_not_that_container() {
        // Docker answers an inspect of `db` with the container whose ID starts with `db`
        // when no container is named so.
        let id = "db0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd";
        let answer = r#"{"Id":"db0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd","Name":"/payments","State":{"Running":true,"Pid":7}}"#;
        let (_dir, api, server) = fake_api(vec![
            ("/containers/db/json", answer),
            ("/containers/db0123456789/json", answer),
            ("/containers/payments/json", answer),
        ]);
        let error = api.find("db").unwrap_err();
        assert!(
            matches!(error, ContainerError::PrefixOnly { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("no container named `db`"),
            "{error}"
        );
        assert_eq!(api.find("db0123456789").unwrap()[0].id, id);
        assert_eq!(api.find("payments").unwrap()[0].name, "payments");
        let _ = request(&api.socket, "/stop", api.deadline);
        server.join().unwrap();
    }

    #[test]
    fn a_daemon_that_never_answers_is_given_up_on_within_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("silent.sock");
        // Accepts (the backlog does), never answers.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let started = std::time::Instant::now();
        let deadline = started + Duration::from_millis(300);
        let error = request(&socket, "/version", deadline).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn a_missing_socket_says_where_it_looked() {
        // Asked directly, a socket that is not there is an I/O error naming it...
        let api = Api {
            runtime: Runtime::Podman,
            socket: "/nonexistent/podman.sock".into(),
            deadline: std::time::Instant::now() + FIND_TIMEOUT,
        };
        let error = api.get::<Listed>("/containers/x/json", "x").unwrap_err();
        assert!(matches!(error, ContainerError::Io { .. }), "{error}");
        assert!(
            error.to_string().contains("/nonexistent/podman.sock"),
            "{error}"
        );
        // ... and looking for a runtime passes it over and says where it looked.
        let error = Api::connect(Some(Runtime::Podman));
        if !Path::new("/run/podman/podman.sock").exists() {
            let text = error.err().unwrap().to_string();
            assert!(text.contains("/run/podman/podman.sock"), "{text}");
        }
    }
}
