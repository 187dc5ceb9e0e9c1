//! The `http` probe.

use super::{Probe, Sample};
use crate::plan::ProbeSpec;

pub struct HttpProbe {}

impl HttpProbe {
    pub fn new(_spec: &ProbeSpec) -> HttpProbe {
        unimplemented!()
    }
}

#[async_trait::async_trait]
impl Probe for HttpProbe {
    async fn sample(&self) -> Sample {
        unimplemented!()
    }
}
