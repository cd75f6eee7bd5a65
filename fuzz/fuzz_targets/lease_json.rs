//! Lease values from etcd: when one decodes, its flannel-style encoding decodes to the
//! same lease (but for flannel's dotted `PublicIPv6` quirk, below) and re-encodes to the
//! same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlayd::control::lease::LeaseAttrs;

fuzz_target!(|data: &[u8]| {
    let Ok(lease) = LeaseAttrs::from_json(data) else {
        return;
    };
    let json = lease.to_json();
    let back = LeaseAttrs::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("to_json output {json} does not decode: {e}"));
    // flannel writes `::1.0.0.0`..`::255.255.255.255` dotted (go::json::format_ipv6), and a
    // dotted `PublicIPv6` reads back IPv4-mapped, in flannel as here: written once, such an
    // address settles on its mapped form, which is written the same way.
    let mut expected = lease.clone();
    expected.public_ipv6 = lease.public_ipv6.map(|a| {
        let v = u128::from(a);
        if (1u128 << 24..1u128 << 32).contains(&v) {
            std::net::Ipv4Addr::from(v as u32).to_ipv6_mapped()
        } else {
            a
        }
    });
    assert_eq!(back, expected, "{json}");
    assert_eq!(back.to_json(), json);
});
