//! Reading a file the user named without letting it stall or flood faultline: only regular
//! files, opened without blocking (a FIFO would wait for a writer forever), read up to a cap
//! (`/dev/zero` or a runaway file would grow without end).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is {what}, not a regular file; faultline reads only regular files")]
    NotRegular { path: String, what: &'static str },
    #[error("{path} is larger than {cap} bytes, more than any {purpose} needs")]
    TooLarge {
        path: String,
        cap: u64,
        purpose: &'static str,
    },
    #[error("{path} is not UTF-8 text")]
    NotText { path: String },
}

/// The text of the regular file at `path`, at most `cap` bytes of it; `purpose` ("experiment
/// file") names it in the error.
pub fn read_regular(path: &Path, cap: u64, purpose: &'static str) -> Result<String, ReadError> {
    let shown = path.display().to_string();
    let io_error = |source| ReadError::Io {
        path: shown.clone(),
        source,
    };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_error)?;
    let kind = file.metadata().map_err(io_error)?.file_type();
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        ""
    };
    if !what.is_empty() {
        return Err(ReadError::NotRegular { path: shown, what });
    }
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge {
            path: shown,
            cap,
            purpose,
        });
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText { path: shown })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_directories_are_refused_at_once_and_files_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        // Would block forever with a plain open: nobody writes to it.
        let refused = read_regular(&fifo, 1024, "test file").unwrap_err();
        assert!(refused.to_string().contains("a FIFO"), "{refused}");
        let zero = read_regular(Path::new("/dev/zero"), 1024, "test file").unwrap_err();
        assert!(zero.to_string().contains("character device"), "{zero}");
        assert!(matches!(
            read_regular(dir.path(), 1024, "test file"),
            Err(ReadError::NotRegular { .. })
        ));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        let too_large = read_regular(&big, 1024, "test file").unwrap_err();
        assert!(
            too_large.to_string().contains("larger than 1024 bytes"),
            "{too_large}"
        );
        assert_eq!(read_regular(&big, 4096, "test file").unwrap().len(), 2048);
        std::fs::write(&big, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_regular(&big, 1024, "test file"),
            Err(ReadError::NotText { .. })
        ));
    }
}
