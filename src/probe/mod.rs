//! `trait Probe`: one sample of the system → a measured, judged result. One file per kind;
//! `slo` turns a stream of samples into "healthy" or "failing, because ...".

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::ProbeSpec;

pub mod command;
pub mod http;
pub mod process;
pub mod prometheus;
pub mod sim;
pub mod slo;
pub mod tcp;

/// One probe kind. `sample` must finish within the spec's timeout (the caller also enforces
/// it) and must never panic: every failure is a failed [`Sample`].
#[async_trait::async_trait]
pub trait Probe: Send + Sync {
    async fn sample(&self) -> Sample;
}

/// One measured sample. `value` is what was observed (status code, exit code, count ...);
/// `error` says why it failed, when it failed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub ok: bool,
    #[serde(
        serialize_with = "crate::units::serialize_ms",
        deserialize_with = "crate::units::deserialize_ms"
    )]
    pub latency: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Sample {
    pub fn pass(latency: Duration, value: serde_json::Value) -> Sample {
        Sample {
            ok: true,
            latency,
            value: Some(value),
            error: None,
        }
    }

    pub fn fail(
        latency: Duration,
        value: Option<serde_json::Value>,
        error: impl Into<String>,
    ) -> Sample {
        Sample {
            ok: false,
            latency,
            value,
            error: Some(error.into()),
        }
    }
}

/// Build the probe a plan entry describes.
pub fn build(spec: &ProbeSpec) -> Box<dyn Probe> {
    use crate::plan::ProbeKind;
    match &spec.kind {
        ProbeKind::Http { .. } => Box::new(http::HttpProbe::new(spec)),
        ProbeKind::Tcp { .. } => Box::new(tcp::TcpProbe::new(spec)),
        ProbeKind::Command { .. } => Box::new(command::CommandProbe::new(spec)),
        ProbeKind::Process { .. } => Box::new(process::ProcessProbe::new(spec)),
        ProbeKind::Prometheus { .. } => Box::new(prometheus::PrometheusProbe::new(spec)),
    }
}
