//! A BPF array created with `BPF_F_MMAPABLE`, mapped into the agent: its elements are plain
//! memory, read (and for `PID_SERVICE` written) without a syscall per element.

use std::{os::fd::AsFd as _, ptr::NonNull};

use aya::{Ebpf, maps::Map};

use crate::error::ProbeError;

pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory owned by this value; accesses are volatile loads and
// stores of aligned integers, as the kernel's programs make.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of the array `name` of the loaded object, writable when
    /// `writable`.
    pub fn array(
        ebpf: &Ebpf,
        name: &'static str,
        len: usize,
        writable: bool,
    ) -> Result<Self, ProbeError> {
        let Some(Map::Array(map)) = ebpf.map(name) else {
            return Err(ProbeError::Map {
                name,
                reason: "not an array in the object".into(),
            });
        };
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE, no more than its size, shared;
        // the kernel keeps the pages alive while mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&map.fd().as_fd()),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ProbeError::Map {
                name,
                reason: format!("mmap: {}", std::io::Error::last_os_error()),
            });
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(ProbeError::Map {
            name,
            reason: "mmap returned null".into(),
        })?;
        Ok(Self { base, len })
    }

    /// The `i`th `T` of the mapping, if it lies inside it.
    pub fn element<T>(&self, i: usize) -> Option<*mut T> {
        let end = i.checked_add(1)?.checked_mul(size_of::<T>())?;
        // SAFETY: in bounds (checked); the mapping is page-aligned, so any `T` index is aligned.
        (end <= self.len).then(|| unsafe { self.base.as_ptr().cast::<T>().add(i) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
