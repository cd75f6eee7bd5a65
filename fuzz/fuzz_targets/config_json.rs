//! Network configs from etcd: when one parses, its `to_json` (IPv4, IPv6 or dual stack)
//! parses to an equal config and re-encodes to the same bytes, and each enabled family's
//! SubnetMin/SubnetMax are themselves subnets the config hands out.
#![no_main]
use ipnet::{Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;
use overlayd::control::config::NetworkConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = NetworkConfig::parse(data) else {
        return;
    };
    let json = cfg.to_json();
    let back = NetworkConfig::parse(json.as_bytes())
        .unwrap_or_else(|e| panic!("to_json output {json} does not parse: {e}"));
    assert_eq!(back, cfg, "{json}");
    assert_eq!(back.to_json(), json);
    assert!(cfg.enable_ipv4 || cfg.ipv6.is_some(), "no family in {json}");
    if cfg.enable_ipv4 {
        for a in [cfg.subnet_min, cfg.subnet_max] {
            let sn = Ipv4Net::new(a, cfg.subnet_len).expect("SubnetLen <= 32");
            assert!(cfg.contains(sn), "{sn} not handed out by {json}");
        }
        assert!(cfg.subnet_count() >= 1);
    } else {
        assert_eq!(cfg.subnet_count(), 0);
    }
    if let Some(v6) = &cfg.ipv6 {
        for a in [v6.subnet_min, v6.subnet_max] {
            let sn = Ipv6Net::new(a, v6.subnet_len).expect("IPv6SubnetLen <= 128");
            assert!(v6.contains(sn), "{sn} not handed out by {json}");
        }
        assert!(v6.subnet_count() >= 1);
    }
});
