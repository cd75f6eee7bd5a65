//! Lease values from etcd: when one decodes, its flannel-style encoding decodes to the
//! same lease and re-encodes to the same bytes.
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
    assert_eq!(back, lease, "{json}");
    assert_eq!(back.to_json(), json);
});
