//! VXLAN payloads (UDP payload onwards): decapsulate with fixed and payload-derived
//! VNI/MAC, re-encapsulate, compare; ARP frames go through the responder checks.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| overlayd_fuzz::check_vxlan(data));
