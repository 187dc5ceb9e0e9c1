//! The `process` probe.

use super::{Probe, Sample};
use crate::plan::ProbeSpec;

pub struct ProcessProbe {}

impl ProcessProbe {
    pub fn new(_spec: &ProbeSpec) -> ProcessProbe {
        unimplemented!()
    }
}

#[async_trait::async_trait]
impl Probe for ProcessProbe {
    async fn sample(&self) -> Sample {
        unimplemented!()
    }
}
