//! The `command` probe.

use super::{Probe, Sample};
use crate::plan::ProbeSpec;

pub struct CommandProbe {}

impl CommandProbe {
    pub fn new(_spec: &ProbeSpec) -> CommandProbe {
        unimplemented!()
    }
}

#[async_trait::async_trait]
impl Probe for CommandProbe {
    async fn sample(&self) -> Sample {
        unimplemented!()
    }
}
