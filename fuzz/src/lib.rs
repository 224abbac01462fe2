//! What every fuzz target links: an allocator that aborts on any single allocation past
//! [`MAX_ALLOC`], so a header that makes glimpse reserve gigabytes is a crash even before the
//! memory is touched. (libFuzzer's `-malloc_limit_mb` needs a sanitizer's malloc hooks; these
//! targets build without one.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// The largest single allocation (1 GiB, as `-malloc_limit_mb=1024`).
pub const MAX_ALLOC: usize = 1 << 30;

pub struct Capped;

#[cold]
fn too_large(size: usize) -> ! {
    // no allocation here: the message is built on the stack
    let mut buf = [0u8; 96];
    let mut out = &mut buf[..];
    let _ = write!(
        out,
        "\n==fuzz== allocation of {size} bytes (cap {MAX_ALLOC})\n"
    );
    let left = out.len();
    let _ = std::io::stderr().write_all(&buf[..buf.len() - left]);
    std::process::abort()
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            too_large(layout.size());
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            too_large(layout.size());
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            too_large(new_size);
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;
