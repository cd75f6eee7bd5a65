//! The routed receive checks after decapsulation (IPv4 and IPv6 tables, either underlay
//! family), then partial-checksum recognition and finishing: see `check_rx`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| overlayd_fuzz::check_rx(data));
