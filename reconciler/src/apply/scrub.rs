//! Zeroing extents before their data can reach another owner:
//! `BLKZEROOUT` on a block device (the device zeroes, or writes zeroes,
//! without the data passing through dom0), a zero-range `fallocate` on a
//! regular file.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;

/// `_IO(0x12, 127)` from linux/fs.h; the libc crate does not define it.
const BLKZEROOUT: libc::c_ulong = 0x127f;

#[derive(Debug, thiserror::Error)]
#[error("cannot zero sectors {start}..{end} of {path}: {source}")]
pub struct ScrubError {
    pub path: String,
    pub start: u64,
    pub end: u64,
    pub source: std::io::Error,
}

/// Zeroes `(start sector, sector count)` ranges of the device or file at
/// `path`; `simulated` zeroes nothing (there is no device behind a
/// simulated host).
pub fn zero(path: &str, ranges: &[(u64, u64)], simulated: bool) -> Result<(), ScrubError> {
    if simulated {
        return Ok(());
    }
    let error = |start: u64, sectors: u64, source| ScrubError {
        path: path.to_owned(),
        start,
        end: start + sectors,
        source,
    };
    let file = File::options()
        .write(true)
        .open(path)
        .map_err(|e| error(0, 0, e))?;
    let block_device = file
        .metadata()
        .map_err(|e| error(0, 0, e))?
        .file_type()
        .is_block_device();
    for &(start, sectors) in ranges {
        let (offset, length) = (start * 512, sectors * 512);
        let result = if block_device {
            let range: [u64; 2] = [offset, length];
            // SAFETY: BLKZEROOUT reads two u64s (offset, length) from the pointer.
            unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) }
        } else {
            // SAFETY: plain fallocate on an open descriptor.
            unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_ZERO_RANGE,
                    offset as libc::off_t,
                    length as libc::off_t,
                )
            }
        };
        if result != 0 {
            return Err(error(start, sectors, std::io::Error::last_os_error()));
        }
    }
    file.sync_all().map_err(|e| error(0, 0, e))
}
