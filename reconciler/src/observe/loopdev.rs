//! Asking the kernel what a loop device is over (`LOOP_GET_STATUS64`): the
//! block device, or the backing file's device and inode. sysfs shows only
//! the file's name, which stops naming it once the file is renamed or
//! unlinked while another name (a hard link) still reaches it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{LoopTarget, under};
use crate::extent::DevNum;

/// `LOOP_GET_STATUS64` from linux/loop.h; the libc crate does not define it.
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;

/// `struct loop_info64` from linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// What the loop device `device`, named `name`, is over; `None` when its
/// node under `root` is not that device (a captured tree has no `/dev`) or
/// the kernel does not answer.
pub(super) fn behind(root: &Path, name: &str, device: DevNum) -> Option<LoopTarget> {
    let node = under(root, &format!("/dev/{name}"));
    let metadata = std::fs::metadata(&node).ok()?;
    if !metadata.file_type().is_block_device() || DevNum::from_rdev(metadata.rdev()) != device {
        return None;
    }
    let file = File::open(&node).ok()?;
    // SAFETY: an all-zero loop_info64 is a valid value (integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 writes one loop_info64 through the pointer.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
    if result != 0 {
        return None;
    }
    // lo_rdevice is the backing inode's own device number: non-zero only
    // for a device node.
    Some(if info.lo_rdevice != 0 {
        LoopTarget::Block {
            device: DevNum::from_rdev(info.lo_rdevice),
        }
    } else {
        LoopTarget::File {
            dev: DevNum::from_rdev(info.lo_device),
            ino: info.lo_inode,
        }
    })
}
