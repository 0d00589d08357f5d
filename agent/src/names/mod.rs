//! Names for the numbers the kernel hands us: syscalls and errnos.

mod errno;
mod syscalls_x86_64;

pub use errno::errno_name;

/// The name of an x86_64 syscall, or `sys_<nr>` for a number this table does not know.
pub fn syscall_name(nr: u32) -> String {
    syscalls_x86_64::SYSCALLS
        .get(nr as usize)
        .copied()
        .flatten()
        .map_or_else(|| format!("sys_{nr}"), str::to_owned)
}

/// The symbolic errno name, or `E<n>` when unknown.
pub fn errno_label(errno: u32) -> String {
    errno_name(errno).map_or_else(|| format!("E{errno}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_numbers() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(230), "clock_nanosleep");
        assert_eq!(syscall_name(257), "openat");
        assert_eq!(syscall_name(462), "mseal");
        assert_eq!(syscall_name(9999), "sys_9999");
        assert_eq!(errno_label(2), "ENOENT");
        assert_eq!(errno_label(11), "EAGAIN");
        assert_eq!(errno_label(512), "ERESTARTSYS");
        assert_eq!(errno_label(4000), "E4000");
    }
}
