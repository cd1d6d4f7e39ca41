//! The loop driver's status ioctls (linux/loop.h), which the libc crate
//! does not define: what a loop device is over, and its size limit.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; 64],
    pub lo_crypt_name: [u8; 64],
    pub lo_encrypt_key: [u8; 32],
    pub lo_init: [u64; 2],
}

/// The status of the loop device open as `device`.
pub fn status(device: &File) -> io::Result<LoopInfo64> {
    // SAFETY: an all-zero loop_info64 is a valid value (integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 writes one loop_info64 through the pointer.
    let result = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// Sets the size limit (bytes) of the loop device open as `device` and
/// makes the kernel (and whoever reads the device) see the new size.
pub fn set_size_limit(device: &File, bytes: u64) -> io::Result<()> {
    let mut info = status(device)?;
    info.lo_sizelimit = bytes;
    // SAFETY: LOOP_SET_STATUS64 reads one loop_info64 through the pointer.
    if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_STATUS64, &info) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_CAPACITY, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
