//! Network configs from etcd: when one parses, its `to_json` parses to an equal config
//! (`to_json` does not write the IPv6 part, so that is compared as absent).
#![no_main]
use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;
use overlayd::control::config::NetworkConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = NetworkConfig::parse(data) else {
        return;
    };
    let json = cfg.to_json();
    let back = NetworkConfig::parse(json.as_bytes())
        .unwrap_or_else(|e| panic!("to_json output {json} does not parse: {e}"));
    let expected = NetworkConfig {
        ipv6: None,
        ..cfg.clone()
    };
    assert_eq!(back, expected, "{json}");
    assert_eq!(back.to_json(), json);
    // SubnetMin and SubnetMax are themselves subnets the config hands out.
    for a in [cfg.subnet_min, cfg.subnet_max] {
        let sn = Ipv4Net::new(a, cfg.subnet_len).expect("SubnetLen <= 32");
        assert!(cfg.contains(sn), "{sn} not handed out by {json}");
    }
    assert!(cfg.subnet_count() >= 1);
});
