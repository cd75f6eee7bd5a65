//! The L2 receive checks (vxlan and gretap) on arbitrary datagrams.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| overlayd_fuzz::check_l2(data));
