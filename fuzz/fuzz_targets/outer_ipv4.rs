//! What a raw IP-protocol-47 socket reads: outer IPv4 header + GRE. Split, check the
//! split against the header fields, then decapsulate the GRE part.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| overlayd_fuzz::check_outer_ipv4(data));
