//! GRE packets (header onwards): decapsulate with fixed and header-derived parameters,
//! re-encapsulate, compare inner packet and parsed header.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| overlayd_fuzz::check_gre(data));
