//! Small, disposable, loop-mounted ext4 filesystems, so that tests can fill a real disk or
//! load a real block device without touching `/` (which every other process on the host
//! shares). Needs root (`losetup`, `mount`).

use crate::sys::tool::{self, Call};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A sparse image file, attached to a loop device and mounted on a private directory.
/// Dropping it unmounts, detaches and deletes everything it created, in that order; a
/// half-built one (a failed `mkfs` or `mount`) cleans up the steps that did happen.
#[derive(Debug)]
pub struct LoopFs {
    /// Holds `image` and `mnt`; removed last.
    dir: PathBuf,
    image: PathBuf,
    mount_point: PathBuf,
    device: Option<PathBuf>,
    mounted: bool,
}

impl LoopFs {
    /// A fresh ext4 filesystem of `size_bytes` (image size; usable space is a little less).
    ///
    /// `mkfs.ext4 -q -F -m 0`: with no blocks reserved for root, a root writer sees the same
    /// free space as everybody else, so "full" means full for the test as well. Inode tables
    /// and the journal are initialised by `mkfs` (not lazily by a kernel thread after the
    /// mount), so the device is quiet unless the test writes: its `/proc/diskstats` counters
    /// then measure the test's own I/O.
    pub fn ext4(size_bytes: u64) -> io::Result<LoopFs> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "faultline-loop-{}-{}-{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir)?;
        let mut fs = LoopFs {
            image: dir.join("image"),
            mount_point: dir.join("mnt"),
            dir,
            device: None,
            mounted: false,
        };
        std::fs::create_dir(&fs.mount_point)?;
        std::fs::File::create_new(&fs.image)?.set_len(size_bytes)?;
        let image = fs.image.to_string_lossy().into_owned();
        run(&[
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            &image,
        ])?;
        let device = run(&["losetup", "--find", "--show", &image])?;
        let device = PathBuf::from(device.trim());
        fs.device = Some(device.clone());
        let mount_point = fs.mount_point.to_string_lossy().into_owned();
        run(&[
            "mount",
            "-t",
            "ext4",
            &device.to_string_lossy(),
            &mount_point,
        ])?;
        fs.mounted = true;
        Ok(fs)
    }

    /// Where the filesystem is mounted (empty but for `lost+found`).
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The loop device, e.g. `/dev/loop3`.
    pub fn device(&self) -> &Path {
        self.device
            .as_deref()
            .expect("a constructed LoopFs always has its device")
    }

    /// The device's name in `/proc/diskstats` and `/sys/block`, e.g. `loop3`.
    pub fn device_name(&self) -> String {
        self.device()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let mount_point = self.mount_point.to_string_lossy().into_owned();
            // A file still open inside (a test that failed half-way) makes umount EBUSY for a
            // moment; after a bounded wait, detach lazily so the loop device can still go.
            let mut unmounted = false;
            for _ in 0..20 {
                if run(&["umount", &mount_point]).is_ok() {
                    unmounted = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !unmounted {
                let _ = run(&["umount", "--lazy", &mount_point]);
            }
        }
        if let Some(device) = &self.device {
            let _ = run(&["losetup", "--detach", &device.to_string_lossy()]);
        }
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.mount_point);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Run a tool (argv only); its stdout, or an error carrying its stderr.
fn run(argv: &[&str]) -> io::Result<String> {
    let args: Vec<String> = argv[1..].iter().map(|a| a.to_string()).collect();
    // mkfs of a large image can take a while on a busy disk.
    let call = Call::new(argv[0], &args).with_timeout(Duration::from_secs(60));
    let out = tool::run(&call).map_err(io::Error::other)?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(io::Error::other(format!(
            "{}: {}",
            argv.join(" "),
            out.stderr.trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_mounted_ext4_and_removes_every_trace_on_drop() {
        let fs = LoopFs::ext4(32 << 20).unwrap();
        let mount_point = fs.mount_point().to_path_buf();
        let device = fs.device().to_path_buf();
        let image = fs.image.clone();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            mounts.contains(&format!(
                "{} {} ext4",
                device.display(),
                mount_point.display()
            )),
            "{mounts}"
        );
        std::fs::write(mount_point.join("probe"), b"x").unwrap();
        assert!(fs.device_name().starts_with("loop"), "{}", fs.device_name());
        drop(fs);

        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&mount_point.display().to_string()));
        assert!(!image.exists() && !mount_point.exists());
        // A detach the kernel deferred (the device was still closing) completes shortly.
        let attached = || {
            run(&[
                "losetup",
                "--list",
                "--noheadings",
                "--output",
                "NAME,BACK-FILE",
            ])
            .unwrap()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while attached().contains(&image.display().to_string())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let still = attached();
        assert!(!still.contains(&image.display().to_string()), "{still}");
    }
}
