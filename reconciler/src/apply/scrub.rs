//! Zeroing extents before their data can reach another owner:
//! `BLKZEROOUT` on the pool device (the device zeroes, or writes zeroes,
//! without the data passing through dom0), once the device is checked to
//! be the one the state DB records.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::extent::DevNum;

/// `_IO(0x12, 127)` from linux/fs.h; the libc crate does not define it.
const BLKZEROOUT: libc::c_ulong = 0x127f;

#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    #[error("cannot zero sectors {start}..{end} of {path}: {source}")]
    Io {
        path: String,
        start: u64,
        end: u64,
        source: std::io::Error,
    },
    #[error(
        "pool device {path} is now {found}, not the device {expected} the state DB records; \
         nothing was zeroed: point {path} back at {expected}, or take it out of its pool"
    )]
    WrongDevice {
        path: String,
        expected: DevNum,
        found: String,
    },
}

/// Zeroes `(start sector, sector count)` ranges of the pool device at
/// `path`, which must be the block device `expected` (a link repointed
/// since the plan must not send zeros elsewhere); `simulated` zeroes
/// nothing (there is no device behind a simulated host).
pub fn zero(
    path: &str,
    expected: DevNum,
    ranges: &[(u64, u64)],
    simulated: bool,
) -> Result<(), ScrubError> {
    if simulated {
        return Ok(());
    }
    let error = |start: u64, sectors: u64, source| ScrubError::Io {
        path: path.to_owned(),
        start,
        end: start + sectors,
        source,
    };
    let file = File::options()
        .write(true)
        .open(path)
        .map_err(|e| error(0, 0, e))?;
    let metadata = file.metadata().map_err(|e| error(0, 0, e))?;
    let block_device = metadata.file_type().is_block_device();
    // Checked on the open descriptor: what is written is what was checked.
    let found = DevNum::from_rdev(metadata.rdev());
    if !block_device || found != expected {
        return Err(ScrubError::WrongDevice {
            path: path.to_owned(),
            expected,
            found: if block_device {
                format!("device {found}")
            } else {
                "not a block device".to_owned()
            },
        });
    }
    for &(start, sectors) in ranges {
        let range: [u64; 2] = [start * 512, sectors * 512];
        // SAFETY: BLKZEROOUT reads two u64s (offset, length) from the pointer.
        let result = unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
        if result != 0 {
            return Err(error(start, sectors, std::io::Error::last_os_error()));
        }
    }
    file.sync_all().map_err(|e| error(0, 0, e))
}
