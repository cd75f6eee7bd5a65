//! etcd subnet key suffixes: when one parses, the key we write for it parses to the same
//! subnet, and writing that again gives the same key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlayd::control::lease::{parse_subnet_key, subnet_key};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sn) = parse_subnet_key(s) else {
        return;
    };
    assert_eq!(sn.trunc(), sn, "host bits set in {s:?}");
    let key = subnet_key(sn);
    let back = parse_subnet_key(&key).unwrap_or_else(|e| panic!("{key:?} from {s:?}: {e}"));
    assert_eq!(back, sn, "{s:?} -> {key:?}");
    assert_eq!(subnet_key(back), key);
    // Without the IPv6 part, the input names the same subnet as our key.
    if !s.contains('&') {
        let (a, l) = s.split_once('-').expect("parsed, so a-len");
        assert_eq!(a.parse::<std::net::Ipv4Addr>().ok(), Some(sn.addr()));
        assert_eq!(l.parse::<u8>().ok(), Some(sn.prefix_len()));
    }
});
