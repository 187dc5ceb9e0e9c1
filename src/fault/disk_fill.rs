//! `disk-fill`: take a filesystem's free space away, with one file of faultline's that the
//! revert deletes. This module is the whole kind: its parameters and their checks, its
//! compiled form in the plan, its summary line, prepare/apply, its revert recipe and revert.
//!
//! ## How `disk-fill` counts space
//! The figures are `df`'s, from `statvfs`: *size* is `f_blocks`, *used* is
//! `f_blocks - f_bfree`, *available* is `f_bavail`. Filesystems keep some blocks for root
//! (ext4: 5 % unless `mkfs -m`/`tune2fs -m` says otherwise), which `f_bfree` counts and
//! `f_bavail` does not. So:
//! - `percent: P` fills until *used* is P % of *size*. `100` also takes the reserved
//!   blocks when faultline runs as root, so root daemons get `ENOSPC` too.
//! - `leave_free: N` fills until *available* is N: that is what unprivileged services (and
//!   `df`, and most disk alerts) see. Root keeps the reserved blocks.
//! - `bytes: N` adds N bytes.
//!
//! A fill never asks for more than the writer can get (`f_bfree` as root, `f_bavail`
//! otherwise): a larger request fills the filesystem and says it was clamped. A target that
//! is already reached fills nothing and creates no file. The filesystem may be `/`: faultline
//! does not second-guess the operator, but on tmpfs the fill is RAM, which `prepare` reports.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::disk::{
    FsSpace, MIB, create_new, io_fault, new_id, remove_if_present, running_as_root,
    target_directory,
};
use super::{
    Applied, Backend, BuildContext, Fault, FaultAction, FaultError, KindPlan, ModuleKind, Reverted,
};
use crate::experiment::model::{FaultDef, FaultKind, PercentSpec};
use crate::experiment::params::{ParamChecks, parse_bytes};
use crate::experiment::{Diagnostic, Sp};

/// The kind, as the list in [`super::MODULE_KINDS`] registers it.
pub const KIND: ModuleKind = ModuleKind {
    kind: FaultKind::DiskFill,
    keys: &["path", "size", "leave_free"],
    compile: |fault, checks| compile(fault, checks).map(FaultAction::DiskFill),
    backend: |_| {
        Backend::always(
            "a file",
            "a fill file of faultline's, recorded before it exists, deleted on revert",
        )
    },
};

/// A disk-fill as the plan holds it, checked: the directory whose filesystem to fill, and how
/// much. It is also the fault itself ([`Fault`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskFill {
    /// A directory on the filesystem to fill; the fill file is created in it.
    pub path: PathBuf,
    pub amount: FillAmount,
}

/// Check a disk-fill's `params` and compile them; `None` after reporting what is wrong.
pub fn compile(fault: &Sp<FaultDef>, checks: &mut ParamChecks<'_>) -> Option<DiskFill> {
    checks.needs_duration(fault);
    let p = &fault.params;
    let path = checks.required(fault, "path", &p.path, "/var/lib/app")?;
    let path = checks.directory(path);
    let amount = match (&p.size, &p.leave_free) {
        (Some(s), Some(_)) => {
            checks.report(
                Diagnostic::at(s.pos, "both `size` and `leave_free`", "two amounts").with_hint(
                    "give `size` (bytes to add, or `95%` in use) or `leave_free`, not both",
                ),
            );
            return None;
        }
        (Some(s), None) if s.trim_end().ends_with('%') => {
            let spec = Sp::at(PercentSpec::Text(s.value.clone()), s.pos);
            FillAmount::Percent(checks.percent(&spec, 100.0)?)
        }
        (Some(s), None) => FillAmount::Bytes(checks.size(s, "`size`")?),
        (None, Some(l)) => FillAmount::LeaveFree(match parse_bytes(l) {
            Ok(bytes) => bytes,
            Err(e) => {
                checks.report(
                    Diagnostic::at(l.pos, e, "not a size").with_hint("write it like `100MiB`"),
                );
                return None;
            }
        }),
        (None, None) => {
            checks.report(
                Diagnostic::at(
                    fault.kind.pos,
                    format!(
                        "fault `{}` (disk-fill) says nothing about how much to fill",
                        fault.id.value
                    ),
                    "no amount",
                )
                .with_hint(
                    "add `size: 95%` (in use), `size: 2GiB` (to add) or `leave_free: 100MiB`",
                ),
            );
            return None;
        }
    };
    Some(DiskFill { path, amount })
}

impl KindPlan for DiskFill {
    fn summary(&self) -> String {
        format!(
            "fill the filesystem of {} {}",
            self.path.display(),
            match self.amount {
                FillAmount::Bytes(b) => format!("by {}", crate::units::bytes(b)),
                FillAmount::Percent(p) => format!("to {}% in use", (p * 100.0).round() / 100.0),
                FillAmount::LeaveFree(b) => format!("until {} is free", crate::units::bytes(b)),
            }
        )
    }

    fn build(&self, _: &BuildContext<'_>) -> Box<dyn Fault> {
        Box::new(self.clone())
    }

    fn fills(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

fault_with_recipe!(DiskFill, DiskFill);

/// How full to make the filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FillAmount {
    /// Fill until this share of the filesystem's size is in use, 0 < P ≤ 100.
    Percent(f64),
    /// Add this many bytes.
    Bytes(u64),
    /// Fill until only this many bytes are available to unprivileged writers.
    LeaveFree(u64),
}

/// What `disk-fill` left behind: one file, deleted on revert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub file: PathBuf,
    /// Bytes `apply` allocates; 0 when the target was already reached (no file is created).
    pub planned_bytes: u64,
    pub amount: FillAmount,
}

/// How many bytes to allocate for `amount` on `space`, and whether the request was clamped
/// to what the writer can get. Whole blocks only.
pub fn fill_size(amount: FillAmount, space: &FsSpace, privileged: bool) -> (u64, bool) {
    let allocatable = if privileged {
        space.free
    } else {
        space.available
    };
    let wanted = match amount {
        FillAmount::Percent(p) => {
            let target = (p / 100.0 * space.size as f64).ceil() as u64;
            target.saturating_sub(space.used())
        }
        FillAmount::Bytes(n) => n,
        FillAmount::LeaveFree(n) => space.available.saturating_sub(n),
    };
    let clamped = wanted > allocatable;
    let bytes = wanted.min(allocatable);
    let block = space.block_size.max(1);
    // Round up, unless that would ask for more than there is: "leave N free" must not leave
    // N - 1 blocks, and "100 %" must not stop one block short.
    let rounded = bytes.div_ceil(block) * block;
    (
        if rounded <= allocatable {
            rounded
        } else {
            bytes / block * block
        },
        clamped,
    )
}

impl DiskFill {
    /// What validation should reject before any run; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        match self.amount {
            FillAmount::Percent(p) if !(p > 0.0 && p <= 100.0) => Err(format!(
                "percent must be more than 0 and at most 100, not {p}"
            )),
            FillAmount::Bytes(0) => Err("bytes must be more than 0".into()),
            _ => Ok(()),
        }
    }

    /// Measure the filesystem and decide the fill file and its size; creates nothing.
    pub fn prepare_recipe(&self) -> Result<(String, Recipe, serde_json::Value), FaultError> {
        self.check().map_err(FaultError::Unsupported)?;
        let dir = &self.path;
        let space = target_directory(dir, "disk-fill")?;
        let (planned_bytes, clamped) = fill_size(self.amount, &space, running_as_root());
        let file = dir.join(format!(".faultline-fill-{}", new_id()));
        let summary = if planned_bytes == 0 {
            format!(
                "fill {}: already {:.1} % used, {} available: nothing to fill",
                dir.display(),
                space.used_percent(),
                crate::units::bytes(space.available)
            )
        } else {
            format!(
                "fill {} with {} ({}{})",
                dir.display(),
                crate::units::bytes(planned_bytes),
                describe_amount(self.amount),
                if clamped {
                    ", clamped to the space there is"
                } else {
                    ""
                }
            )
        };
        let mut details = json!({
            "file": file,
            "planned_bytes": planned_bytes,
            "clamped": clamped,
            "before": space.facts(),
        });
        if space.tmpfs {
            details["warning"] =
                json!("the filesystem is tmpfs: the fill takes the host's memory, not disk");
        }
        let recipe = Recipe {
            file,
            planned_bytes,
            amount: self.amount,
        };
        Ok((summary, recipe, details))
    }

    /// Create the fill file (`O_EXCL`), allocate it and fsync. Closes it before returning:
    /// an open descriptor would keep the space after the file is deleted.
    pub fn apply_recipe(&self, recipe: &Recipe) -> Result<Applied, FaultError> {
        if recipe.planned_bytes == 0 {
            return Ok(Applied {
                summary: "nothing to fill: the target was already reached".into(),
                details: json!({ "bytes_filled": 0 }),
                live: None,
            });
        }
        let started = Instant::now();
        let file = create_new(&recipe.file, false)
            .map_err(|e| io_fault(&format!("create {}", recipe.file.display()), e))?;
        let block = FsSpace::of(&self.path)
            .map(|s| s.block_size)
            .unwrap_or(4096);
        let (filled, method) = fill_file(&file, recipe.planned_bytes, block, FillMethod::Allocate)
            .map_err(|e| io_fault(&format!("fill {}", recipe.file.display()), e))?;
        file.sync_all()
            .map_err(|e| io_fault(&format!("fsync {}", recipe.file.display()), e))?;
        drop(file);
        let space = FsSpace::of(&self.path)
            .map_err(|e| io_fault(&format!("statvfs {}", self.path.display()), e))?;
        Ok(Applied {
            summary: format!(
                "filled {} with {}: {:.1} % used, {} available",
                self.path.display(),
                crate::units::bytes(filled),
                space.used_percent(),
                crate::units::bytes(space.available)
            ),
            details: json!({
                "file": recipe.file,
                "bytes_filled": filled,
                "method": method,
                "took_ms": started.elapsed().as_millis() as u64,
                "during": space.facts(),
            }),
            live: None,
        })
    }
}

impl Recipe {
    /// Delete the fill file (absent is fine: not yet created, or already reverted) and
    /// report what the fill achieved while it was there.
    pub fn revert(&self) -> Result<Reverted, FaultError> {
        revert_fill(self)
    }

    pub fn describe(&self) -> String {
        format!("delete fill file {}", self.file.display())
    }
}

fn revert_fill(recipe: &Recipe) -> Result<Reverted, FaultError> {
    let dir = recipe.file.parent().unwrap_or(Path::new("/"));
    let allocated = match std::fs::symlink_metadata(&recipe.file) {
        Ok(meta) => meta.blocks() * 512,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Reverted {
                summary: format!(
                    "fill file {} is not there: nothing to delete",
                    recipe.file.display()
                ),
                details: json!({ "file": recipe.file, "bytes_filled": 0 }),
            });
        }
        Err(e) => return Err(io_fault(&format!("stat {}", recipe.file.display()), e)),
    };
    let during = FsSpace::of(dir).ok();
    remove_if_present(&recipe.file)?;
    let after = FsSpace::of(dir).ok();
    let mut summary = format!(
        "deleted {} ({})",
        recipe.file.display(),
        crate::units::bytes(allocated)
    );
    if let Some(during) = &during {
        summary.push_str(&format!(
            "; {} was available during the fault",
            crate::units::bytes(during.available)
        ));
    }
    Ok(Reverted {
        summary,
        details: json!({
            "file": recipe.file,
            "requested": recipe.amount,
            "planned_bytes": recipe.planned_bytes,
            "bytes_filled": allocated,
            "during": during.map(|s| s.facts()),
            "after": after.map(|s| s.facts()),
        }),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
enum FillMethod {
    Allocate,
    Write,
}

/// Allocate `bytes` in `file`; `fallocate` where the filesystem supports it, else writes of
/// random data (zeros would cost nothing on a compressing filesystem). Stops early at
/// `ENOSPC` after taking every block it can. Returns the bytes allocated and how.
fn fill_file(
    file: &File,
    bytes: u64,
    block: u64,
    method: FillMethod,
) -> io::Result<(u64, FillMethod)> {
    if method == FillMethod::Allocate {
        match allocate(file, bytes, block) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            other => return other.map(|_| (allocated(file), FillMethod::Allocate)),
        }
    }
    write_fill(file, bytes)?;
    Ok((allocated(file), FillMethod::Write))
}

fn allocated(file: &File) -> u64 {
    file.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
}

/// `fallocate` the range in one call; on `ENOSPC` (a near-full target: the extent tree needs
/// blocks too) continue from where the file ends with halving chunks down to one block, so
/// the filesystem ends up really full. Bounded by the number of halvings.
fn allocate(file: &File, bytes: u64, block: u64) -> io::Result<()> {
    let mut offset = 0;
    let mut chunk = bytes;
    for _ in 0..256 {
        if offset >= bytes {
            return Ok(());
        }
        let len = chunk.min(bytes - offset);
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len) {
            Ok(()) => offset += len,
            Err(e) if e == rustix::io::Errno::NOSPC => {
                if chunk <= block {
                    return Ok(());
                }
                // A failed call may still have allocated a prefix and grown the file.
                offset = offset.max(file.metadata()?.len());
                chunk = (chunk / 2).div_ceil(block).max(1) * block;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The fallback: 1 MiB writes until `bytes` or `ENOSPC`, then smaller ones down to 4 KiB.
fn write_fill(file: &File, bytes: u64) -> io::Result<()> {
    let mut buffer = vec![0u8; MIB as usize];
    rand::rng().fill_bytes(&mut buffer);
    let mut offset = 0u64;
    let mut chunk = MIB;
    // Every iteration writes a chunk or shrinks it, so this bounds the loop.
    let max_iterations = bytes / 4096 + 64;
    for _ in 0..max_iterations {
        if offset >= bytes {
            break;
        }
        let len = chunk.min(bytes - offset) as usize;
        match file.write_at(&buffer[..len], offset) {
            Ok(0) => break,
            Ok(n) => offset += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                if chunk <= 4096 {
                    break;
                }
                chunk /= 2;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn describe_amount(amount: FillAmount) -> String {
    match amount {
        FillAmount::Percent(p) => format!("to {p} % used"),
        FillAmount::Bytes(n) => format!("{} requested", crate::units::bytes(n)),
        FillAmount::LeaveFree(n) => format!("to leave {} available", crate::units::bytes(n)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::sys::loopdev::LoopFs;

    /// Write 64 KiB to a new file and fsync it; the file is removed either way.
    fn try_write(dir: &Path) -> io::Result<()> {
        let path = dir.join("writer");
        let result = (|| {
            let mut file = File::create(&path)?;
            file.write_all(&[7u8; 65536])?;
            file.sync_all()
        })();
        let _ = std::fs::remove_file(&path);
        result
    }

    fn fill_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".faultline-"))
            .collect()
    }

    fn space(size: u64, free: u64, available: u64) -> FsSpace {
        FsSpace {
            size,
            free,
            available,
            block_size: 4096,
            read_only: false,
            tmpfs: false,
        }
    }

    #[test]
    fn fill_size_counts_like_df_and_never_asks_for_more_than_there_is() {
        // 1000 blocks, 400 used, 600 free of which 50 reserved for root.
        let s = space(1000 * 4096, 600 * 4096, 550 * 4096);
        let block = 4096;
        let cases = [
            (FillAmount::Percent(80.0), true, (400 * block, false)),
            (FillAmount::Percent(100.0), true, (600 * block, false)),
            // Unprivileged writers cannot take the reserved blocks: clamped.
            (FillAmount::Percent(100.0), false, (550 * block, true)),
            (FillAmount::LeaveFree(0), true, (550 * block, false)),
            // Partial blocks round so that no more than N stays available.
            (
                FillAmount::LeaveFree(100 * block + 1),
                true,
                (450 * block, false),
            ),
            (FillAmount::Bytes(10 * block + 1), true, (11 * block, false)),
            (FillAmount::Bytes(1 << 40), true, (600 * block, true)),
            // Already past the target: nothing.
            (FillAmount::Percent(30.0), true, (0, false)),
            (FillAmount::LeaveFree(1 << 40), true, (0, false)),
        ];
        for (amount, privileged, expected) in cases {
            assert_eq!(
                fill_size(amount, &s, privileged),
                expected,
                "{amount:?} privileged={privileged}"
            );
        }
    }

    #[test]
    fn params_checks_name_the_field() {
        let fill = |amount| DiskFill {
            path: "/x".into(),
            amount,
        };
        assert!(
            fill(FillAmount::Percent(0.0))
                .check()
                .unwrap_err()
                .contains("percent")
        );
        assert!(fill(FillAmount::Percent(f64::NAN)).check().is_err());
        assert!(fill(FillAmount::Percent(100.5)).check().is_err());
        assert!(fill(FillAmount::Percent(100.0)).check().is_ok());
        assert!(fill(FillAmount::Bytes(0)).check().is_err());
        assert!(fill(FillAmount::LeaveFree(0)).check().is_ok());
    }

    #[test]
    fn targets_must_be_writable_directories() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        for path in [file.clone(), dir.path().join("missing")] {
            let fill = DiskFill {
                path: path.clone(),
                amount: FillAmount::Bytes(1),
            };
            assert!(
                matches!(fill.prepare_recipe(), Err(FaultError::Unsupported(_))),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn full_disk_gives_writers_enospc_until_reverted() {
        let _serial = crate::sys::heavy_tests::one_at_a_time();
        let fs = LoopFs::ext4(64 << 20).unwrap();
        let dir = fs.mount_point();
        try_write(dir).expect("an empty filesystem takes a write");

        let fault = DiskFill {
            path: dir.into(),
            amount: FillAmount::LeaveFree(0),
        };
        let (summary, recipe, _) = fault.prepare_recipe().unwrap();
        assert!(!recipe.file.exists(), "prepare must not touch the host");
        assert!(recipe.planned_bytes > 50 << 20, "{summary}");
        let applied = fault.apply_recipe(&recipe).unwrap();
        println!("{}\n{:#}", applied.summary, applied.details);
        assert_eq!(FsSpace::of(dir).unwrap().available, 0);

        let err = try_write(dir).expect_err("a full filesystem must refuse the write");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");

        let reverted = recipe.revert().unwrap();
        println!("{}\n{:#}", reverted.summary, reverted.details);
        assert!(!recipe.file.exists());
        assert_eq!(reverted.details["during"]["available_bytes"], 0);
        assert!(reverted.details["bytes_filled"].as_u64().unwrap() >= recipe.planned_bytes);
        try_write(dir).expect("the write succeeds after the revert");

        let again = recipe.revert().unwrap();
        assert!(
            again.summary.contains("nothing to delete"),
            "{}",
            again.summary
        );
        assert!(fill_files(dir).is_empty());
    }

    #[test]
    fn fill_is_removed_by_a_fresh_revert_after_a_crash() {
        let _serial = crate::sys::heavy_tests::one_at_a_time();
        let fs = LoopFs::ext4(64 << 20).unwrap();
        let dir = fs.mount_point();
        let fault = DiskFill {
            path: dir.into(),
            amount: FillAmount::Bytes(20 << 20),
        };
        let (_, recipe, _) = fault.prepare_recipe().unwrap();

        // Crash before the file exists: the recipe is on disk, the revert must cope.
        let state = serde_json::to_string(&recipe).unwrap();
        let recovered: Recipe = serde_json::from_str(&state).unwrap();
        assert_eq!(recovered, recipe);
        recovered.revert().unwrap();

        let before = FsSpace::of(dir).unwrap();
        fault.apply_recipe(&recipe).unwrap();
        let during = FsSpace::of(dir).unwrap();
        let taken = before.available - during.available;
        assert!(
            (20 << 20..(20 << 20) + (1 << 20)).contains(&taken),
            "took {taken} bytes for 20 MiB"
        );

        let recovered: Recipe =
            serde_json::from_str(&serde_json::to_string(&recipe).unwrap()).unwrap();
        assert!(recovered.file.exists());
        recovered.revert().unwrap();
        assert!(!recipe.file.exists());
        assert!(FsSpace::of(dir).unwrap().available >= before.available);
    }

    #[test]
    fn fill_to_80_percent_used() {
        let _serial = crate::sys::heavy_tests::one_at_a_time();
        let fs = LoopFs::ext4(128 << 20).unwrap();
        let dir = fs.mount_point();
        let fault = DiskFill {
            path: dir.into(),
            amount: FillAmount::Percent(80.0),
        };
        let (_, recipe, _) = fault.prepare_recipe().unwrap();
        fault.apply_recipe(&recipe).unwrap();
        // Measured the way `df` does, independently of faultline's own figures.
        let vfs = rustix::fs::statvfs(dir).unwrap();
        let used = (vfs.f_blocks - vfs.f_bfree) as f64 * 100.0 / vfs.f_blocks as f64;
        recipe.revert().unwrap();
        println!("used {used:.2} %");
        assert!((78.0..=82.0).contains(&used), "used {used:.2} %");
    }

    #[test]
    fn fill_already_reached_creates_nothing() {
        let _serial = crate::sys::heavy_tests::one_at_a_time();
        let fs = LoopFs::ext4(64 << 20).unwrap();
        let fault = DiskFill {
            path: fs.mount_point().into(),
            amount: FillAmount::LeaveFree(1 << 30),
        };
        let (summary, recipe, _) = fault.prepare_recipe().unwrap();
        assert_eq!(recipe.planned_bytes, 0, "{summary}");
        fault.apply_recipe(&recipe).unwrap();
        assert!(!recipe.file.exists());
        recipe.revert().unwrap();
    }

    #[test]
    fn writes_fill_when_fallocate_is_missing() {
        let _serial = crate::sys::heavy_tests::one_at_a_time();
        let fs = LoopFs::ext4(64 << 20).unwrap();
        let path = fs.mount_point().join("by-writes");
        let file = create_new(&path, false).unwrap();
        // Ten and a half MiB: a partial last chunk.
        let (filled, method) = fill_file(&file, 21 << 19, 4096, FillMethod::Write).unwrap();
        assert_eq!(method, FillMethod::Write);
        assert_eq!(filled, 21 << 19);
        // And to the last block on a nearly full filesystem.
        let (filled, _) = fill_file(&file, 1 << 30, 4096, FillMethod::Write).unwrap();
        drop(file);
        assert!(filled > 50 << 20, "{filled}");
        assert!(FsSpace::of(fs.mount_point()).unwrap().available < 64 << 10);
        std::fs::remove_file(path).unwrap();
    }
}
