//! Secrets: read when the run starts, sent by the probes that name them, written out nowhere.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::util::{self, Workspace, events_of, faultline};

const TOKEN: &str = "tok-3f9a2c71d5e8";

/// An HTTP server that answers 200 to requests carrying `Authorization: Bearer TOKEN`, 401
/// to others; counts the ones that carried it. Serves at most 64 requests.
fn guarded_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let authorised = Arc::new(AtomicUsize::new(0));
    let seen = authorised.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            let ok = request.contains(&format!(
                "authorization: bearer {}",
                TOKEN.to_ascii_lowercase()
            ));
            if ok {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            let status = if ok { "200 OK" } else { "401 Unauthorized" };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (port, authorised)
}

/// `api` sends the token in a header and gates the run; `echo` is given it in its env and
/// prints it, so its samples would quote it.
fn experiment(ws: &Workspace, port: u16) -> std::path::PathBuf {
    ws.write(
        "secret.yaml",
        &format!(
            "apiVersion: faultline/v1\nmetadata: {{name: secret}}\nmax_duration: 1m\n\
             secrets: {{token: {{env: FAULTLINE_TEST_TOKEN}}}}\n\
             probes:\n\
             \x20 api: {{http: {{url: 'http://127.0.0.1:{port}/health', headers: {{Authorization: 'Bearer ${{secret.token}}'}}}}}}\n\
             \x20 echo: {{command: {{argv: [printenv, KEY], env: {{KEY: '${{secret.token}}'}}}}, expect: {{stdout_contains: never-printed}}, timeout: 200ms, interval: 250ms}}\n\
             steady_state:\n\
             \x20 before: {{probes: [api]}}\n\
             \x20 after: {{probes: [echo], within: 1s}}\n"
        ),
    )
}

#[test]
fn a_secret_is_sent_by_its_probe_and_written_out_nowhere() {
    let _serial = util::serial();
    let ws = Workspace::new();
    let (port, authorised) = guarded_server();
    let file = experiment(&ws, port);
    let out = faultline(&ws)
        .env("FAULTLINE_TEST_TOKEN", TOKEN)
        .arg("run")
        .arg(&file)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The gate passed with the token; `echo` never did (it prints the token, not the text
    // it must print).
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        authorised.load(Ordering::Relaxed) >= 1,
        "the probe sent the token"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");
    let mut written = 0;
    for entry in std::fs::read_dir(ws.report_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(TOKEN), "{} holds the secret", path.display());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", path.display());
        written += 1;
    }
    assert_eq!(written, 3, "journal, JUnit and HTML");
    let events = ws.journal();
    let printed = events_of(&events, "probe_sample")
        .into_iter()
        .filter(|e| e["probe"] == "echo")
        .any(|e| {
            e["value"]["stdout"]
                .as_str()
                .is_some_and(|o| o.contains("${secret.token}"))
        });
    assert!(
        printed,
        "what `echo` printed names the secret, not its value"
    );
}

#[test]
fn a_missing_secret_stops_the_run_before_anything_happens() {
    let ws = Workspace::new();
    let (port, _) = guarded_server();
    let file = experiment(&ws, port);
    let out = faultline(&ws)
        .env_remove("FAULTLINE_TEST_TOKEN")
        .arg("run")
        .arg(&file)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("FAULTLINE_TEST_TOKEN"), "{stderr}");
    assert!(!ws.report_dir().exists() && !ws.state_dir().exists());
}
