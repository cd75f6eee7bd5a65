//! subnet.env text, as the CNI plugin and a restarting overlayd read it: when the plugin's
//! reader accepts a file with both families, the file overlayd writes for those values reads
//! back to the same values in both readers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlayd::cni::parse_subnet_env;
use overlayd::control::subnet_env::{parse_previous, Ipv6Subnets, SubnetEnv};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let previous = parse_previous(text);
    let Ok(env) = parse_subnet_env(text) else {
        return;
    };
    // Both readers read one grammar (control::subnet_env::vars), so they agree.
    if let Some(sn) = env.subnet {
        assert_eq!(previous.ipv4, Some(sn), "{text:?}");
    }
    if let Some(sn) = env.ipv6_subnet {
        assert_eq!(previous.ipv6, Some(sn), "{text:?}");
    }
    let (Some(network), Some(subnet)) = (env.network, env.subnet) else {
        return;
    };
    let ipv6 = env
        .ipv6_network
        .zip(env.ipv6_subnet)
        .map(|(network, subnet)| Ipv6Subnets { network, subnet });
    let written = SubnetEnv {
        ipv6,
        ..SubnetEnv::v4(network, subnet, env.mtu, env.ipmasq)
    }
    .render();
    // flannel writes some IPv6 addresses dotted (see format_ipv6); those read back as IPv4.
    let dotted = written
        .lines()
        .any(|l| l.starts_with("FLANNEL_IPV6") && l.contains('.'));
    let again = parse_subnet_env(&written);
    if dotted {
        assert!(again.is_err(), "{written:?}");
        return;
    }
    let again = again.unwrap_or_else(|e| panic!("{written:?}: {e}"));
    assert_eq!(again.network, Some(network));
    assert_eq!(again.subnet, Some(subnet));
    assert_eq!(again.ipv6_network, ipv6.map(|v| v.network));
    assert_eq!(again.ipv6_subnet, ipv6.map(|v| v.subnet));
    assert_eq!((again.mtu, again.ipmasq), (env.mtu, env.ipmasq));
    let prev = parse_previous(&written);
    assert_eq!(prev.ipv4, Some(subnet));
    assert_eq!(prev.ipv6, ipv6.map(|v| v.subnet));
});
