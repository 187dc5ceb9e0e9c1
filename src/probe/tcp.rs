//! The `tcp` probe.

use super::{Probe, Sample};
use crate::plan::ProbeSpec;

pub struct TcpProbe {}

impl TcpProbe {
    pub fn new(_spec: &ProbeSpec) -> TcpProbe {
        unimplemented!()
    }
}

#[async_trait::async_trait]
impl Probe for TcpProbe {
    async fn sample(&self) -> Sample {
        unimplemented!()
    }
}
