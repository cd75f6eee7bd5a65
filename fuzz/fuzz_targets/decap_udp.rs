//! flannel udp: the UDP payload is the inner IP packet. Decapsulate, re-encapsulate, compare.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlayd::backend::Encap;

fuzz_target!(|data: &[u8]| {
    if let Some(again) = overlayd_fuzz::check_decap(Encap::Udp, data, 0) {
        // No header: the payload trimmed of padding is the inner packet.
        assert_eq!(&data[..again.len()], &again[..]);
    }
});
