//! A simulated fault for deterministic engine tests: it "injects" by creating a marker file
//! and reverts by removing it, so tests can see whether the host was left dirty.

use std::path::{Path, PathBuf};

use super::{Applied, Fault, FaultError, Prepared, RevertRecipe, Reverted};

pub struct SimFault {
    pub marker: PathBuf,
    pub fail_apply: bool,
    pub fail_revert: bool,
}

impl Fault for SimFault {
    fn prepare(&self) -> Result<Prepared, FaultError> {
        Ok(Prepared {
            summary: format!("create {}", self.marker.display()),
            revert: RevertRecipe::Simulated {
                marker: self.marker.clone(),
                fail: self.fail_revert,
            },
            details: serde_json::json!({ "marker": self.marker }),
        })
    }

    fn apply(&self, _prepared: &Prepared) -> Result<Applied, FaultError> {
        if self.fail_apply {
            return Err(FaultError::Failed("simulated injection failure".into()));
        }
        std::fs::write(&self.marker, b"injected").map_err(|e| FaultError::Failed(e.to_string()))?;
        Ok(Applied {
            summary: format!("created {}", self.marker.display()),
            details: serde_json::Value::Null,
            live: None,
        })
    }
}

pub fn revert_marker(marker: &Path, fail: bool) -> Result<Reverted, FaultError> {
    if fail {
        return Err(FaultError::Failed(format!(
            "simulated revert failure (left {})",
            marker.display()
        )));
    }
    match std::fs::remove_file(marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(FaultError::Failed(e.to_string())),
    }
    Ok(Reverted {
        summary: format!("removed {}", marker.display()),
        ..Reverted::default()
    })
}
