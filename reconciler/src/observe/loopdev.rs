//! Asking the kernel what a loop device is over (`LOOP_GET_STATUS64`): the
//! block device, or the backing file's device and inode. sysfs shows only
//! the file's name, which stops naming it once the file is renamed or
//! unlinked while another name (a hard link) still reaches it.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{LoopTarget, under};
use crate::extent::DevNum;

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
    let info = crate::loop_ioctl::status(&file).ok()?;
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
