//! The vxlan ARP responder on arbitrary Ethernet frames.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| overlayd_fuzz::check_arp(data));
