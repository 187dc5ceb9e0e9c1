//! A simulated probe for deterministic engine tests: its answer comes from a closure and it
//! takes a set (virtual) time, so tests on paused tokio time are exact.

use std::sync::Arc;
use std::time::Duration;

use super::{Probe, Sample};

pub type Answer = Arc<dyn Fn() -> bool + Send + Sync>;

pub struct SimProbe {
    pub answer: Answer,
    pub latency: Duration,
}

#[async_trait::async_trait]
impl Probe for SimProbe {
    async fn sample(&self) -> Sample {
        tokio::time::sleep(self.latency).await;
        if (self.answer)() {
            Sample::pass(self.latency, serde_json::json!("sim ok"))
        } else {
            Sample::fail(self.latency, None, "simulated failure")
        }
    }
}
