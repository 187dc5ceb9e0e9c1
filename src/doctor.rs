//! `faultline doctor`: which fault backends work on this host, and why not where they do
//! not (missing kernel module, missing binary, missing capability). Also run by `plan`.
//! Probes use scratch network namespaces or read-only checks; nothing on the host changes.

use std::fmt::Write;

use serde::Serialize;

use crate::sys::iptables::{self, Family, Variant};
use crate::sys::tc::{self, Support};

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub area: &'static str,
    pub item: String,
    pub ok: bool,
    pub detail: String,
}

/// What each fault kind will use here.
#[derive(Clone, Debug, Serialize)]
pub struct BackendChoice {
    pub kind: &'static str,
    /// `None`: the kind cannot run here; `detail` says why.
    pub backend: Option<String>,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub backends: Vec<BackendChoice>,
    /// faultline chains, qdiscs and devices present now (a crashed run; see `faultline recover`).
    pub leftovers: Vec<String>,
}

/// Is capability `bit` in this process's effective set?
pub fn has_capability(bit: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

pub const CAP_KILL: u32 = 5;
pub const CAP_NET_ADMIN: u32 = 12;

fn support_check(area: &'static str, item: &str, support: &Support) -> Check {
    Check {
        area,
        item: item.to_string(),
        ok: support.is_available(),
        detail: support
            .reason()
            .map(str::to_string)
            .unwrap_or_else(|| "works".into()),
    }
}

/// Examine this host (or the namespace `netns`).
pub fn examine(netns: Option<&str>) -> Report {
    let mut checks = Vec::new();
    let pidfd = rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    );
    checks.push(Check {
        area: "process",
        item: "pidfd_open / pidfd_send_signal".into(),
        ok: pidfd.is_ok(),
        detail: match pidfd {
            Ok(_) => "signals reach exactly the process that was selected".into(),
            Err(e) => format!("unavailable ({e}); kernel 5.3 or newer is needed"),
        },
    });
    let kill = has_capability(CAP_KILL);
    checks.push(Check {
        area: "process",
        item: "CAP_KILL".into(),
        ok: kill,
        detail: if kill {
            "can signal every user's processes".into()
        } else {
            "only this user's processes can be targeted".into()
        },
    });
    let net_admin = has_capability(CAP_NET_ADMIN);
    checks.push(Check {
        area: "network",
        item: "CAP_NET_ADMIN".into(),
        ok: net_admin,
        detail: if net_admin {
            "may change rules, qdiscs and devices".into()
        } else {
            "network faults need root (CAP_NET_ADMIN)".into()
        },
    });
    for variant in [Variant::Nft, Variant::Legacy] {
        for family in [Family::V4, Family::V6] {
            let binary = variant.binary(family);
            let found = iptables::installed(variant, family);
            checks.push(Check {
                area: "iptables",
                item: binary.to_string(),
                ok: found.is_some(),
                detail: match found {
                    Some(path) => path.display().to_string(),
                    None => "not installed (Debian: apt-get install iptables)".into(),
                },
            });
        }
    }
    let variant = iptables::detect(netns);
    checks.push(Check {
        area: "iptables",
        item: "variant in use".into(),
        ok: variant.is_ok(),
        detail: match &variant {
            Ok(v) => format!("{v:?}").to_lowercase(),
            Err(e) => e.to_string(),
        },
    });
    let caps = tc::capabilities();
    for (name, support) in [
        ("netem", &caps.netem),
        ("tbf", &caps.tbf),
        ("htb", &caps.htb),
        ("ingress", &caps.ingress),
        ("ifb", &caps.ifb),
        ("u32 filter", &caps.u32),
        ("mirred action", &caps.mirred),
    ] {
        checks.push(support_check("tc", name, support));
    }
    let queue = crate::sys::delayer::free_queue_number(netns);
    checks.push(Check {
        area: "nfqueue",
        item: "nfnetlink_queue".into(),
        ok: queue.is_ok() && net_admin,
        detail: match (&queue, net_admin) {
            (Ok(q), true) => format!("free queue {q} (delays packets in faultline itself)"),
            (Ok(_), false) => "needs CAP_NET_ADMIN".into(),
            (Err(e), _) => format!("unavailable: {e}"),
        },
    });

    let iptables_ok = variant.is_ok() && net_admin;
    let iptables_why = || match &variant {
        Err(e) => e.to_string(),
        Ok(_) => "needs CAP_NET_ADMIN".into(),
    };
    let netem = caps.netem.is_available() && net_admin;
    let netem_why = caps
        .netem
        .reason()
        .unwrap_or("needs CAP_NET_ADMIN")
        .to_string();
    let mut backends = vec![
        BackendChoice {
            kind: "process-kill, process-stop",
            backend: Some("pidfd signals".into()),
            detail: "always available".into(),
        },
        BackendChoice {
            kind: "network-delay",
            backend: if netem {
                Some("netem".into())
            } else if iptables_ok && queue.is_ok() {
                Some("nfqueue".into())
            } else {
                None
            },
            detail: if netem {
                "tc netem qdisc".into()
            } else {
                format!(
                    "no netem ({netem_why}); NFQUEUE: iptables rules steer packets to faultline's delayer"
                )
            },
        },
    ];
    for kind in ["network-loss", "network-partition"] {
        backends.push(BackendChoice {
            kind,
            backend: iptables_ok.then(|| "iptables".into()),
            detail: if iptables_ok {
                "rules in FAULTLINE-* chains".into()
            } else {
                iptables_why()
            },
        });
    }
    let shaping = caps.tbf.is_available() && caps.htb.is_available() && net_admin;
    let ingress = caps.ifb.is_available()
        && caps.ingress.is_available()
        && caps.mirred.is_available()
        && caps.u32.is_available();
    backends.push(BackendChoice {
        kind: "network-bandwidth",
        backend: shaping.then(|| "tc tbf/htb".into()),
        detail: match (shaping, ingress) {
            (true, true) => "egress on the interface, ingress through an IFB device".into(),
            (true, false) => "egress only (no IFB/ingress/mirred for ingress shaping)".into(),
            (false, _) => "needs tbf and htb qdiscs and CAP_NET_ADMIN".into(),
        },
    });
    for kind in ["network-duplicate", "network-corrupt", "network-reorder"] {
        backends.push(BackendChoice {
            kind,
            backend: netem.then(|| "netem".into()),
            detail: if netem {
                "tc netem qdisc".into()
            } else {
                netem_why.clone()
            },
        });
    }

    backends.push(BackendChoice {
        kind: "cpu-pressure, disk-io-pressure, disk-fill",
        backend: Some("threads / files".into()),
        detail: "worker threads inside faultline; files recorded before they exist".into(),
    });
    backends.push(BackendChoice {
        kind: "memory-pressure",
        backend: Some("hog process".into()),
        detail: "a child with oom_score_adj 1000 that dies with faultline".into(),
    });
    let cgroups = crate::sys::cgroup::Mounts::detect();
    for (kind, controller) in [
        ("cpu-limit", crate::sys::cgroup::Controller::Cpu),
        ("disk-io-limit", crate::sys::cgroup::Controller::Io),
    ] {
        let found = cgroups.as_ref().map_err(|e| e.to_string()).and_then(|m| {
            m.find(controller)
                .map(|h| format!("cgroup {:?} at {}", h.version, h.mount.display()).to_lowercase())
                .map_err(|e| e.to_string())
        });
        backends.push(BackendChoice {
            kind,
            backend: found.as_ref().ok().map(|_| "cgroup".to_string()),
            detail: match found {
                Ok(where_) => where_,
                Err(e) => e,
            },
        });
    }

    let mut leftovers = iptables::leftovers(netns);
    match tc::leftovers(netns) {
        Ok(found) => leftovers.extend(found),
        Err(e) => leftovers.push(format!("could not list qdiscs: {e}")),
    }
    Report {
        checks,
        backends,
        leftovers,
    }
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "checks");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "  {} {:<9} {:<26} {}",
                if c.ok { "ok " } else { "NO " },
                c.area,
                c.item,
                c.detail
            );
        }
        let _ = writeln!(out, "\nbackends on this host");
        out.push_str(&self.render_backends());
        if self.leftovers.is_empty() {
            let _ = writeln!(
                out,
                "\nno faultline rules, qdiscs or devices left on the host"
            );
        } else {
            let _ = writeln!(
                out,
                "\nLEFT BEHIND (a crashed run? `faultline status`, `faultline recover`):"
            );
            for l in &self.leftovers {
                let _ = writeln!(out, "  {l}");
            }
        }
        out
    }

    pub fn render_backends(&self) -> String {
        let mut out = String::new();
        for b in &self.backends {
            let _ = writeln!(
                out,
                "  {:<28} {:<16} {}",
                b.kind,
                b.backend.as_deref().unwrap_or("UNAVAILABLE"),
                b.detail
            );
        }
        out
    }

    pub fn backend_for(&self, kind: &str) -> Option<&BackendChoice> {
        self.backends
            .iter()
            .find(|b| b.kind.split(", ").any(|k| k == kind))
    }
}
