//! crmprof's kernel programs. One module per probe group; each group loads and attaches on its
//! own in userspace, so a group the kernel rejects leaves the others running.
#![no_std]
#![no_main]

mod disk;
mod floor;
mod net;
mod process;
mod sched;
mod selection;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never called at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
