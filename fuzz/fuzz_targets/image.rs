#![no_main]

// the capped allocator (fuzz/src/lib.rs)
use glimpse_fuzz as _;

// an Err is a correct answer to a damaged file; only panics, aborts, OOMs and hangs are bugs
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = glimpse::fuzzing::image(data);
});
