//! What this host can do, probed once per process: privileges, pidfd, the tc features the
//! kernel has, the cgroup hierarchies. `doctor`, the `plan` view, the check before anything
//! is injected and every fault's `prepare` read this one record, and the backend for a fault
//! (netem or NFQUEUE for a delay, cgroup v1 or v2 for a limit) is chosen here, once, so the
//! one `doctor` shows is the one a run takes.
//!
//! What depends on a network namespace or changes from moment to moment (the iptables variant
//! holding a namespace's rules, a free NFQUEUE number) is not a capability: it is read where
//! it is used.

use std::sync::OnceLock;

use serde::Serialize;

use crate::sys::cgroup::{Controller, Hierarchy, Mounts};
use crate::sys::proc::{CAP_KILL, CAP_NET_ADMIN, has_capability};
use crate::sys::tc::{self, Support, TcCapabilities};

/// Which mechanism delays packets: chosen at run time (`Auto`) unless the experiment forces one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayBackend {
    Auto,
    Netem,
    Nfqueue,
}

/// The mechanism a delay runs on, once chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayRoute {
    /// A netem qdisc in faultline's tc tree.
    Netem,
    /// iptables rules steer the packets to faultline's own delayer.
    Nfqueue,
}

impl DelayRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            DelayRoute::Netem => "netem",
            DelayRoute::Nfqueue => "nfqueue",
        }
    }
}

#[derive(Clone, Debug)]
pub struct HostCaps {
    /// `pidfd_open` works (kernel 5.3+): signals reach exactly the process selected.
    pub pidfd: Result<(), String>,
    pub cap_kill: bool,
    pub cap_net_admin: bool,
    pub tc: TcCapabilities,
    pub cgroups: Result<Mounts, String>,
}

impl HostCaps {
    /// This process's record, probed on first use.
    pub fn get() -> &'static HostCaps {
        static PROBED: OnceLock<HostCaps> = OnceLock::new();
        PROBED.get_or_init(HostCaps::probe)
    }

    /// Probe now. Changes nothing on the host (tc is tried in a scratch namespace).
    pub fn probe() -> HostCaps {
        let pidfd = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .map(drop)
        .map_err(|e| format!("unavailable ({e}); kernel 5.3 or newer is needed"));
        HostCaps {
            pidfd,
            cap_kill: has_capability(CAP_KILL),
            cap_net_admin: has_capability(CAP_NET_ADMIN),
            tc: tc::capabilities(),
            cgroups: Mounts::detect().map_err(|e| e.to_string()),
        }
    }

    /// The one place a delay's mechanism is chosen: netem where the kernel has it, otherwise
    /// faultline's NFQUEUE delayer; a backend the experiment forces is taken or refused.
    pub fn delay_route(&self, requested: DelayBackend) -> Result<DelayRoute, String> {
        match requested {
            DelayBackend::Nfqueue => Ok(DelayRoute::Nfqueue),
            DelayBackend::Netem => self
                .require_netem("backend: netem")
                .map(|()| DelayRoute::Netem),
            DelayBackend::Auto if self.tc.netem.is_available() => Ok(DelayRoute::Netem),
            DelayBackend::Auto => Ok(DelayRoute::Nfqueue),
        }
    }

    /// `what` (a fault only netem can inject) is possible here, or why not.
    pub fn require_netem(&self, what: &str) -> Result<(), String> {
        match &self.tc.netem {
            Support::Available => Ok(()),
            Support::Missing { reason } => Err(format!(
                "{what} needs netem, which this host lacks: {reason} (see `faultline doctor`)"
            )),
        }
    }

    /// The one place a limit's hierarchy is chosen: cgroup v2 where its root offers the
    /// controller, otherwise the v1 hierarchy that holds it.
    pub fn cgroup(&self, controller: Controller) -> Result<&Hierarchy, String> {
        let mounts = self.cgroups.as_ref().map_err(Clone::clone)?;
        mounts.find(controller).map_err(|e| e.to_string())
    }

    /// Egress shaping (tbf under htb) works here.
    pub fn can_shape(&self) -> bool {
        self.tc.tbf.is_available() && self.tc.htb.is_available()
    }

    /// Ingress shaping (ingress qdisc, u32 filter, mirred to an IFB device) works here.
    pub fn can_shape_ingress(&self) -> bool {
        self.tc.ifb.is_available()
            && self.tc.ingress.is_available()
            && self.tc.mirred.is_available()
            && self.tc.u32.is_available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_with(netem: Support) -> HostCaps {
        let mut caps = HostCaps::probe();
        caps.tc.netem = netem;
        caps
    }

    #[test]
    fn a_delay_takes_netem_where_the_kernel_has_it_and_nfqueue_elsewhere() {
        let with = caps_with(Support::Available);
        let without = caps_with(Support::Missing {
            reason: "kernel lacks sch_netem (CONFIG_NET_SCH_NETEM)".into(),
        });
        assert_eq!(with.delay_route(DelayBackend::Auto), Ok(DelayRoute::Netem));
        assert_eq!(
            without.delay_route(DelayBackend::Auto),
            Ok(DelayRoute::Nfqueue)
        );
        assert_eq!(
            with.delay_route(DelayBackend::Nfqueue),
            Ok(DelayRoute::Nfqueue)
        );
        assert_eq!(with.delay_route(DelayBackend::Netem), Ok(DelayRoute::Netem));
        let refused = without.delay_route(DelayBackend::Netem).unwrap_err();
        assert!(refused.contains("backend: netem needs netem"), "{refused}");
        assert!(refused.contains("CONFIG_NET_SCH_NETEM"), "{refused}");
    }

    #[test]
    fn this_host_is_probed_once_and_its_cpu_limits_have_a_hierarchy() {
        assert!(std::ptr::eq(HostCaps::get(), HostCaps::get()));
        let cpu = HostCaps::get()
            .cgroup(Controller::Cpu)
            .expect("cpu hierarchy");
        assert!(cpu.mount.starts_with("/sys/fs/cgroup"), "{cpu:?}");
    }
}
