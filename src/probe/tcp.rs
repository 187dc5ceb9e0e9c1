//! The `tcp` probe: can a connection be opened, and how long does the handshake take.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpStream;

use super::slo::exceeds_max_latency;
use super::{Probe, Sample};
use crate::experiment::Dur;
use crate::plan::{ProbeKind, ProbeSpec};

pub struct TcpProbe {
    address: String,
    timeout: Duration,
    max_latency: Option<Duration>,
}

impl TcpProbe {
    pub fn new(spec: &ProbeSpec) -> TcpProbe {
        let address = match &spec.kind {
            ProbeKind::Tcp { address } => address.clone(),
            // `probe::build` dispatches on the kind, so this is a caller bug; it still must not
            // panic mid-experiment, and an empty address fails every sample with a clear error.
            _ => String::new(),
        };
        TcpProbe {
            address,
            timeout: spec.timeout,
            max_latency: spec.check.max_latency,
        }
    }

    /// Resolve, then try each address in order (as `TcpStream::connect` does) and return the
    /// first that connects with the time its handshake took.
    async fn connect(&self) -> Result<(SocketAddr, Duration), String> {
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host(self.address.as_str())
            .await
            .map_err(|e| {
                format!(
                    "cannot resolve `{}`: {}",
                    self.address,
                    describe_io_error(&e)
                )
            })?
            .collect();
        if addresses.is_empty() {
            return Err(format!("`{}` resolved to no addresses", self.address));
        }
        let mut failures = Vec::new();
        for address in addresses {
            let started = Instant::now();
            match TcpStream::connect(address).await {
                // Dropping the stream closes it: the probe only proves the handshake.
                Ok(_stream) => return Ok((address, started.elapsed())),
                Err(e) => failures.push(format!("{} ({address})", describe_io_error(&e))),
            }
        }
        Err(failures.join(", "))
    }
}

#[async_trait::async_trait]
impl Probe for TcpProbe {
    async fn sample(&self) -> Sample {
        let started = Instant::now();
        let (peer, latency) = match tokio::time::timeout(self.timeout, self.connect()).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => return Sample::fail(started.elapsed(), None, error),
            Err(_) => {
                let error = format!(
                    "timed out after {} connecting to {}",
                    Dur(self.timeout),
                    self.address
                );
                return Sample::fail(started.elapsed(), None, error);
            }
        };
        let value = json!({ "connected": peer.to_string() });
        match exceeds_max_latency(latency, self.max_latency) {
            Some(failure) => Sample::fail(latency, Some(value), failure),
            None => Sample::pass(latency, value),
        }
    }
}

/// An I/O error as a short lowercase phrase ("connection refused"), without the
/// "(os error 111)" suffix that tells an operator nothing.
pub fn describe_io_error(error: &io::Error) -> String {
    let phrase = match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset by peer",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::TimedOut => "timed out",
        io::ErrorKind::HostUnreachable => "host unreachable",
        io::ErrorKind::NetworkUnreachable => "network unreachable",
        io::ErrorKind::AddrNotAvailable => "address not available",
        io::ErrorKind::PermissionDenied => "permission denied (a firewall rule may reject it)",
        _ => {
            return match error.raw_os_error() {
                Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
                None => error.to_string(),
            };
        }
    };
    phrase.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Check;
    use tokio::net::TcpListener;

    fn probe(address: &str, max_latency: Option<Duration>) -> TcpProbe {
        TcpProbe::new(&ProbeSpec {
            name: "tcp".into(),
            kind: ProbeKind::Tcp {
                address: address.into(),
            },
            check: Check {
                max_latency,
                ..Check::default()
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            failure_threshold: 1,
            slo: None,
        })
    }

    /// A port nothing listens on: bind an ephemeral one, then release it.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn connects_to_a_live_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let sample = probe(&address.to_string(), Some(Duration::from_secs(1)))
            .sample()
            .await;
        assert!(sample.ok, "{sample:?}");
        assert_eq!(
            sample.value,
            Some(json!({ "connected": address.to_string() }))
        );
        assert!(sample.latency < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn latency_bound_fails_a_slow_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let sample = probe(&address.to_string(), Some(Duration::ZERO))
            .sample()
            .await;
        assert!(!sample.ok);
        let error = sample.error.unwrap();
        assert!(
            error.starts_with("latency ") && error.ends_with("ms > 0s"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn refused_on_a_closed_port() {
        let address = closed_port().await;
        let sample = probe(&address.to_string(), None).sample().await;
        assert!(!sample.ok);
        assert_eq!(
            sample.error.unwrap(),
            format!("connection refused ({address})")
        );
    }

    #[tokio::test]
    async fn an_address_without_port_fails_with_the_address() {
        // No port: rejected before any DNS query, so the test stays off the network.
        let sample = probe("127.0.0.1", None).sample().await;
        assert!(!sample.ok);
        let error = sample.error.unwrap();
        assert!(error.starts_with("cannot resolve `127.0.0.1`: "), "{error}");
    }

    #[tokio::test]
    async fn ipv6_loopback_works() {
        let listener = match TcpListener::bind("[::1]:0").await {
            Ok(listener) => listener,
            Err(e) => {
                println!("skipped: this host has no IPv6 loopback ({e})");
                return;
            }
        };
        let address = listener.local_addr().unwrap();
        let sample = probe(&address.to_string(), None).sample().await;
        assert!(sample.ok, "{sample:?}");
        assert_eq!(
            sample.value,
            Some(json!({ "connected": address.to_string() }))
        );
    }
}
