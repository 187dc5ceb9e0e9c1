//! `faultline doctor`: which fault backends work on this host, and why not where they do
//! not (missing kernel module, missing binary, missing capability). Also run by `plan`.
//! It shows what [`HostCaps`] probed and the backend it chooses; the namespace's own facts
//! (iptables variant, a free NFQUEUE number, leftovers) are read here. Nothing on the host
//! changes.

use std::fmt::Write;

use serde::Serialize;

use crate::host::HostCaps;
use crate::sys::iptables::{self, Family, Variant};
use crate::sys::netns::Netns;
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
pub fn examine(netns: Option<&Netns>) -> Report {
    let host = HostCaps::get();
    let mut checks = Vec::new();
    checks.push(Check {
        area: "process",
        item: "pidfd_open / pidfd_send_signal".into(),
        ok: host.pidfd.is_ok(),
        detail: match &host.pidfd {
            Ok(()) => "signals reach exactly the process that was selected".into(),
            Err(e) => e.clone(),
        },
    });
    let kill = host.cap_kill;
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
    let net_admin = host.cap_net_admin;
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
    let caps = &host.tc;
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

    let facts = crate::fault::HostFacts {
        host,
        iptables: match (&variant, net_admin) {
            (Ok(_), true) => Ok(()),
            (Err(e), _) => Err(e.to_string()),
            (Ok(_), false) => Err("needs CAP_NET_ADMIN".into()),
        },
        nfqueue: queue.map(drop).map_err(|e| e.to_string()),
    };
    let backends = crate::fault::MODULE_KINDS
        .iter()
        .map(|module| {
            let backend = (module.backend)(&facts);
            BackendChoice {
                kind: module.kind.as_str(),
                backend: backend.name,
                detail: backend.detail,
            }
        })
        .collect();

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

/// Which container runtimes' APIs answer here. Asked by `faultline doctor` only: `plan` asks
/// a runtime when a target names a container, and not otherwise.
pub fn container_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    for runtime in [
        crate::sys::container::Runtime::Docker,
        crate::sys::container::Runtime::Podman,
    ] {
        let answer = crate::sys::container::version(runtime);
        checks.push(Check {
            area: "container",
            item: format!("{} API", runtime.as_str()),
            ok: answer.is_ok(),
            detail: match answer {
                Ok(found) => format!("{found}: `container` targets can name its containers"),
                Err(e) => e.to_string(),
            },
        });
    }
    checks
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
