//! Dual stack and IPv6 in the control plane, against a real etcd in namespaces: leases keyed
//! and valued exactly as flannel writes them, peers' dual-stack and IPv6-only leases read
//! back, reservations, racing acquisitions, the daemon with a dual-stack config (subnet.env's
//! IPv6 lines, restart with the previous subnets), and the clear refusals.
//!
//! The flannel-side fixtures are built from flannel's sources (cited at each one), not from
//! overlayd's writer: a mismatch between the two shows up as a failing byte comparison.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::*;
use ipnet::{Ipv4Net, Ipv6Net};
use overlayd::backend::vxlan_tunnel::{stable_vtep_mac, stable_vtep_mac_v6};
use overlayd::control::config::NetworkConfig;
use overlayd::control::etcd::{EtcdOptions, Registry};
use overlayd::control::lease::{format_mac, LeaseAttrs, SubnetKey, VxlanData};

const READY: Duration = Duration::from_secs(30);

/// A dual-stack vxlan lease value as flannel's vxlan backend writes it: `newSubnetAttrs` in
/// pkg/backend/vxlan/vxlan.go (PublicIP + BackendData from flannel.1, PublicIPv6 +
/// BackendV6Data from flannel-v6.1), member order and omitempty from pkg/lease/lease.go.
fn flannel_dual_value(ip: Ipv4Addr, ip6: Ipv6Addr, mac: &str, mac6: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
    )
}

/// Runs `f` with a tokio runtime on a thread inside `ns`.
fn in_ns_async<T: Send + 'static, F>(ns: &Netns, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
{
    ns.in_ns(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f())
    })
}

/// One listed lease: (subnets, PublicIPv6, IPv6 VTEP MAC, is a reservation).
type Listed = (SubnetKey, Option<Ipv6Addr>, Option<[u8; 6]>, bool);

/// What one simulated node saw, returned out of the namespace thread.
#[derive(Debug)]
struct Seen {
    a_key: SubnetKey,
    a_lease_id: i64,
    a_again: SubnetKey,
    b_key: SubnetKey,
    b_reservation: bool,
    c_key: SubnetKey,
    /// B's listing.
    listed: Vec<Listed>,
}

/// Two dual-stack nodes through the Registry API: A gets a fresh dual-stack lease whose key
/// and value are flannel's byte for byte; B takes its dual-stack reservation and reads A's
/// IPv6 subnet (and a flanneld node's, and an IPv6-only node's) as peers; C starts from a
/// previous subnet.env and gets exactly its subnets back.
#[test]
fn netns_dual_stack_leases_as_flannel() {
    if skip_unless_root("netns_dual_stack_leases_as_flannel") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let prefix = "/dual";
    put_dual_stack_config(&etcd, prefix, "vxlan");

    // A flanneld dual-stack node's lease (key: MakeSubnetKey in pkg/subnet/subnet.go).
    let flannel_key = format!("{prefix}/subnets/10.244.5.0-24&fd00:10:0:5::-64");
    let flannel_value = flannel_dual_value(
        Ipv4Addr::new(192, 168, 77, 50),
        "fd00:77::50".parse().unwrap(),
        "c6:d2:32:6f:8f:44",
        "6a:0b:1e:22:7c:01",
    );
    etcd.put_with_lease(&flannel_key, &flannel_value, 600);
    // An IPv6-only flanneld node: zero IPv4 subnet in the key, PublicIP 0.0.0.0, no BackendData.
    let v6only_key = format!("{prefix}/subnets/0.0.0.0-0&fd00:10:0:6::-64");
    let v6only_value = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:77::60","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"6a:0b:1e:22:7c:02"}}"#;
    etcd.put_with_lease(&v6only_key, v6only_value, 600);
    // An operator's dual-stack reservation for node B (no etcd lease).
    let b_ip = Ipv4Addr::new(10, 0, 0, 2);
    let b_ip6: Ipv6Addr = "fd00:77::2".parse().unwrap();
    let reserved_key = format!("{prefix}/subnets/10.244.9.0-24&fd00:10:0:9::-64");
    etcd.put(
        &reserved_key,
        &format!(r#"{{"PublicIP":"{b_ip}","PublicIPv6":"{b_ip6}"}}"#),
    );

    let endpoint = etcd.endpoint();
    let seen: Seen = in_ns_async(topo.host(0), move || async move {
        let cfg = NetworkConfig::parse(
            dual_stack_config(OVERLAY_NETWORK, OVERLAY_NETWORK6, "vxlan").as_bytes(),
        )
        .unwrap();
        let opts = EtcdOptions {
            endpoints: vec![endpoint],
            prefix: prefix.into(),
            ..Default::default()
        };
        let reg = Registry::connect(&opts).await.unwrap();
        let attrs = |ip: Ipv4Addr, ip6: Ipv6Addr| {
            LeaseAttrs::vxlan_dual(
                Some(ip),
                &VxlanData {
                    vni: 1,
                    vtep_mac: stable_vtep_mac(ip, 1),
                },
                ip6,
                &VxlanData {
                    vni: 1,
                    vtep_mac: stable_vtep_mac_v6(ip6, 1),
                },
            )
        };
        let a_ip = Ipv4Addr::new(10, 0, 0, 1);
        let a_ip6: Ipv6Addr = "fd00:77::1".parse().unwrap();
        let a = reg
            .acquire(&cfg, &attrs(a_ip, a_ip6), SubnetKey::default())
            .await
            .unwrap();
        // Acquiring again (a restart) reuses the same key.
        let again = reg
            .acquire(&cfg, &attrs(a_ip, a_ip6), SubnetKey::default())
            .await
            .unwrap();
        let b = reg
            .acquire(&cfg, &attrs(b_ip, b_ip6), SubnetKey::default())
            .await
            .unwrap();
        // C restarts from a subnet.env flannel wrote (FLANNEL_SUBNET / FLANNEL_IPV6_SUBNET).
        let previous = overlayd::control::subnet_env::parse_previous(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.20.1/24\nFLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:20::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        );
        let c_ip = Ipv4Addr::new(10, 0, 0, 3);
        let c = reg
            .acquire(&cfg, &attrs(c_ip, "fd00:77::3".parse().unwrap()), previous)
            .await
            .unwrap();
        let (leases, _) = reg.list().await.unwrap();
        Seen {
            a_key: a.key(),
            a_lease_id: a.lease_id,
            a_again: again.key(),
            b_key: b.key(),
            b_reservation: b.reservation,
            c_key: c.key(),
            listed: leases
                .iter()
                .map(|l| {
                    (
                        l.subnets(),
                        l.attrs.public_ipv6,
                        l.attrs.vxlan_v6_data().ok().map(|d| d.vtep_mac),
                        l.lease_id == 0,
                    )
                })
                .collect(),
        }
    });

    // A: a fresh dual-stack lease, clear of every existing key, under a real etcd lease.
    let (a4, a6) = (seen.a_key.ipv4.unwrap(), seen.a_key.ipv6.unwrap());
    assert_eq!(a4.prefix_len(), 24);
    assert_eq!(a6.prefix_len(), 64);
    assert!("10.244.0.0/16".parse::<Ipv4Net>().unwrap().contains(&a4));
    assert!(OVERLAY_NETWORK6.parse::<Ipv6Net>().unwrap().contains(&a6));
    for n in [5, 9, 20] {
        assert_ne!(a4, Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24).unwrap());
    }
    for taken in ["fd00:10:0:5::/64", "fd00:10:0:6::/64", "fd00:10:0:9::/64"] {
        assert_ne!(a6, taken.parse::<Ipv6Net>().unwrap());
    }
    assert_ne!(seen.a_lease_id, 0);
    assert_eq!(seen.a_again, seen.a_key, "a restart keeps the lease");
    // Its key and value, read back with etcdctl, are what flanneld would have written.
    let a_seg = a6.addr().segments();
    let a_key = format!(
        "{prefix}/subnets/{}-24&fd00:10:0:{:x}::-64",
        a4.addr(),
        a_seg[3]
    );
    let a_value = etcd
        .get(&a_key)
        .unwrap_or_else(|| panic!("no key {a_key}: {:?}", etcd.get_prefix(prefix)));
    assert_eq!(
        a_value,
        flannel_dual_value(
            Ipv4Addr::new(10, 0, 0, 1),
            "fd00:77::1".parse().unwrap(),
            &format_mac(&stable_vtep_mac(Ipv4Addr::new(10, 0, 0, 1), 1)),
            &format_mac(&stable_vtep_mac_v6("fd00:77::1".parse().unwrap(), 1)),
        )
    );
    // B: its reservation, both halves, never rewritten into a lease.
    assert_eq!(
        seen.b_key.to_key(),
        "10.244.9.0-24&fd00:10:0:9::-64",
        "{seen:?}"
    );
    assert!(seen.b_reservation);
    // C: the previous subnets from its subnet.env.
    assert_eq!(seen.c_key.to_key(), "10.244.20.0-24&fd00:10:0:20::-64");
    assert!(etcd
        .get(&format!(
            "{prefix}/subnets/10.244.20.0-24&fd00:10:0:20::-64"
        ))
        .is_some());
    // The listing B sees: A's lease with its IPv6 subnet, address and v6 VTEP MAC; the
    // flanneld node's; the IPv6-only one; the reservation. Flannel's values are untouched.
    let find = |k: &SubnetKey| {
        seen.listed
            .iter()
            .find(|l| l.0 == *k)
            .unwrap_or_else(|| panic!("{k} not listed: {:?}", seen.listed))
    };
    let a = find(&seen.a_key);
    assert_eq!(a.1, Some("fd00:77::1".parse().unwrap()));
    assert_eq!(
        a.2,
        Some(stable_vtep_mac_v6("fd00:77::1".parse().unwrap(), 1))
    );
    let f = find(&SubnetKey::parse("10.244.5.0-24&fd00:10:0:5::-64").unwrap());
    assert_eq!(f.1, Some("fd00:77::50".parse().unwrap()));
    assert_eq!(f.2, Some([0x6a, 0x0b, 0x1e, 0x22, 0x7c, 0x01]));
    let v6 = find(&SubnetKey::parse("0.0.0.0-0&fd00:10:0:6::-64").unwrap());
    assert_eq!(v6.0.ipv4, None);
    assert_eq!(v6.1, Some("fd00:77::60".parse().unwrap()));
    assert!(find(&seen.b_key).3, "the reservation is listed as one");
    assert_eq!(seen.listed.len(), 5, "{:?}", seen.listed);
    assert_eq!(
        etcd.get(&flannel_key).as_deref(),
        Some(flannel_value.as_str())
    );
    assert_eq!(etcd.get(&v6only_key).as_deref(), Some(v6only_value));
}

/// Twelve dual-stack nodes racing for 15 IPv4 and 15 IPv6 subnets: every node ends with its
/// own IPv4 and its own IPv6 subnet. Keys of nodes that drew the same IPv4 subnet but
/// different IPv6 ones differ, so only the overlap check after creating a key settles those.
#[test]
fn netns_dual_stack_concurrent_acquisition() {
    if skip_unless_root("netns_dual_stack_concurrent_acquisition") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let endpoint = etcd.endpoint();
    let keys: Vec<SubnetKey> = in_ns_async(topo.host(0), move || async move {
        let cfg = NetworkConfig::parse(
            br#"{"Network":"10.99.0.0/24","SubnetLen":28,"EnableIPv6":true,"IPv6Network":"fd00:99::/120","IPv6SubnetLen":124,"Backend":{"Type":"udp"}}"#,
        )
        .unwrap();
        let opts = EtcdOptions {
            endpoints: vec![endpoint],
            prefix: "/race6".into(),
            ..Default::default()
        };
        let mut tasks = Vec::new();
        for i in 0..12u8 {
            let (cfg, opts) = (cfg.clone(), opts.clone());
            tasks.push(tokio::spawn(async move {
                let reg = Registry::connect(&opts).await.unwrap();
                let ip6 = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, u16::from(i) + 1);
                let attrs = LeaseAttrs::udp(Ipv4Addr::new(10, 0, 0, i + 1)).with_ipv6(ip6, None);
                reg.acquire(&cfg, &attrs, SubnetKey::default())
                    .await
                    .unwrap()
                    .key()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let v4: HashSet<_> = keys.iter().map(|k| k.ipv4.unwrap()).collect();
    let v6: HashSet<_> = keys.iter().map(|k| k.ipv6.unwrap()).collect();
    assert_eq!(v4.len(), 12, "12 distinct IPv4 subnets: {keys:?}");
    assert_eq!(v6.len(), 12, "12 distinct IPv6 subnets: {keys:?}");
    let stored = etcd.get_prefix("/race6/subnets/");
    assert_eq!(stored.len(), 12, "{stored:?}");
    for k in &keys {
        let key = format!("/race6/subnets/{}", k.to_key());
        let v = stored.get(&key).unwrap_or_else(|| panic!("{key} missing"));
        assert!(v.contains(r#""PublicIPv6":"fd00:77::"#), "{v}");
    }
}

/// Two overlayd daemons with flannel's dual-stack config: each holds a dual-stack lease
/// (flannel's key and value), writes subnet.env's IPv6 lines as flannel does, and carries
/// IPv4 and IPv6. A restart after its key was
/// deleted asks for the previous subnets from subnet.env and gets them.
#[test]
fn netns_dual_stack_daemons() {
    if skip_unless_root("netns_dual_stack_daemons") {
        return;
    }
    let mut topo = Topology::new(2);
    let etcd = topo.start_etcd();
    put_dual_stack_config(&etcd, ETCD_PREFIX, "vxlan");
    let ip6_1 = add_underlay_ipv6(topo.host(0), 0);
    add_underlay_ipv6(topo.host(1), 1);
    // h2 publishes an address given on the command line instead of its interface's
    // preferred one (the first): another of its own, so that peers reach it there.
    let pub6_2: Ipv6Addr = "fd00:77::22".parse().unwrap();
    add_ipv6_addr(topo.host(1), "eth0", &format!("{pub6_2}/64"));
    let mut d1 = Overlayd::spawn(topo.host(0), overlayd_args("vxlan", &etcd));
    let mut args2 = overlayd_args("vxlan", &etcd);
    args2.extend(["--public-ipv6".to_string(), pub6_2.to_string()]);
    let mut d2 = Overlayd::spawn(topo.host(1), args2);
    let s1 = subnet_of(&d1.wait_ready(READY));
    let s2 = subnet_of(&d2.wait_ready(READY));
    let e1 = d1.subnet_env().expect("subnet.env of h1");
    let v6_1 = subnet6_of(&e1["FLANNEL_IPV6_SUBNET"]);
    let v6_2 = ipv6_subnet_in(d2.subnet_file()).expect("h2 has an IPv6 subnet");
    assert_ne!(v6_1, v6_2);
    assert_ne!(s1, s2);

    // subnet.env byte for byte as flannel's WriteSubnetFile (pkg/subnet/subnet.go) writes it.
    let first6 = |n: Ipv6Net| Ipv6Addr::from(u128::from(n.network()) + 1);
    let text = std::fs::read_to_string(d1.subnet_file()).unwrap();
    assert_eq!(
        text,
        format!(
            "FLANNEL_NETWORK={OVERLAY_NETWORK}\nFLANNEL_SUBNET={}/24\nFLANNEL_IPV6_NETWORK={OVERLAY_NETWORK6}\nFLANNEL_IPV6_SUBNET={}/64\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=false\n",
            Ipv4Addr::from(u32::from(s1.network()) + 1),
            first6(v6_1),
            e1["FLANNEL_MTU"],
        )
    );

    // The leases: flannel's dual-stack key and value.
    let key1 = format!(
        "{ETCD_PREFIX}/subnets/{}",
        SubnetKey {
            ipv4: Some(s1),
            ipv6: Some(v6_1)
        }
        .to_key()
    );
    assert!(key1.contains("-24&fd00:10:0:"), "{key1}");
    let h1 = host_ip(0);
    assert_eq!(
        etcd.get(&key1).as_deref(),
        Some(
            flannel_dual_value(
                h1,
                ip6_1,
                &format_mac(&stable_vtep_mac(h1, 1)),
                &format_mac(&stable_vtep_mac_v6(ip6_1, 1)),
            )
            .as_str()
        ),
        "{:?}",
        etcd.get_prefix(ETCD_PREFIX)
    );
    let key2 = format!(
        "{ETCD_PREFIX}/subnets/{}",
        SubnetKey {
            ipv4: Some(s2),
            ipv6: Some(v6_2)
        }
        .to_key()
    );
    let value2 = etcd.get(&key2).unwrap_or_default();
    assert!(
        value2.contains(&format!(r#""PublicIPv6":"{pub6_2}""#)),
        "{value2}"
    );

    // Both families flow (tests/ipv6_dataplane.rs checks the IPv6 data plane in depth).
    assert!(ping_until(
        topo.host(0),
        s2.network(),
        Duration::from_secs(15)
    ));
    assert!(ping_until(
        topo.host(1),
        s1.network(),
        Duration::from_secs(15)
    ));
    assert!(ping_until(
        topo.host(0),
        v6_2.network(),
        Duration::from_secs(15)
    ));
    assert!(ping_until(
        topo.host(1),
        v6_1.network(),
        Duration::from_secs(15)
    ));

    // `overlayd status` shows both halves of the dual-stack leases.
    let out = topo
        .host(0)
        .command(env!("CARGO_BIN_EXE_overlayd"))
        .args(["status", "--etcd-endpoints", &etcd.endpoint()])
        .output()
        .expect("overlayd status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("IPv6Network {OVERLAY_NETWORK6}  IPv6SubnetLen 64")),
        "{text}"
    );
    let row6 = text
        .lines()
        .find(|l| l.starts_with(&format!("+{v6_2}")))
        .unwrap_or_else(|| panic!("no IPv6 row for h2:\n{text}"));
    assert!(row6.contains(&pub6_2.to_string()), "{row6}");
    assert!(
        row6.contains(&format_mac(&stable_vtep_mac_v6(pub6_2, 1))),
        "{row6}"
    );

    // Restart with the key gone: the subnets come from subnet.env (FLANNEL_SUBNET and
    // FLANNEL_IPV6_SUBNET), as flanneld asks for its previous subnets.
    assert!(d1
        .terminate(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    assert_eq!(etcd.del(&key1), 1);
    d1.restart();
    let again = subnet_of(&d1.wait_ready(READY));
    assert_eq!(again, s1);
    assert_eq!(ipv6_subnet_in(d1.subnet_file()), Some(v6_1));
    assert!(
        wait_until(Duration::from_secs(10), || etcd.get(&key1).is_some()),
        "{key1} recreated: {:?}",
        etcd.get_prefix(ETCD_PREFIX)
    );
    assert!(d2.is_running());
}

/// Runs overlayd once against `config` in etcd and returns its last stderr line, asserting
/// exit status 1.
fn fails_with(topo: &Topology, etcd: &Etcd, config: &str, extra: &[&str]) -> String {
    etcd.put(&format!("{ETCD_PREFIX}/config"), config);
    let out = topo
        .host(0)
        .command("timeout")
        .args([
            "20",
            env!("CARGO_BIN_EXE_overlayd"),
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--iface",
            "eth0",
            "--subnet-file",
            "/nonexistent/never-written.env",
        ])
        .args(extra)
        .output()
        .expect("run overlayd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{config}: exit 1, got {:?}\n{err}",
        out.status
    );
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned();
    assert!(last.starts_with("overlayd: "), "{config}: {err}");
    last
}

/// An IPv6-only config on a host whose interface has no global IPv6 address (nothing to
/// carry IPv6 from), or with L2 networks (which need IPv4), is refused at startup with one
/// message saying why and what to do; so is a dual-stack config on a host without a
/// global IPv6 address and no --public-ipv6. None leaves a lease behind.
#[test]
fn netns_ipv6_refusals_are_clear() {
    if skip_unless_root("netns_ipv6_refusals_are_clear") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let only6 = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}"#;
    let last = fails_with(&topo, &etcd, only6, &[]);
    for needle in [
        "EnableIPv4 false",
        "eth0",
        "no global IPv6 address",
        "--iface",
    ] {
        assert!(last.contains(needle), "{needle:?} in {last}");
    }
    add_ipv6_addr(topo.host(0), "eth0", "fd00:77::98/64");
    let last = fails_with(&topo, &etcd, only6, &["--l2", "tenant@br-l2"]);
    for needle in ["EnableIPv4 false", "L2 networks", "IPv4 underlay"] {
        assert!(last.contains(needle), "{needle:?} in {last}");
    }
    topo.host(0).ip("-6 addr del fd00:77::98/64 dev eth0");
    // eth0 has only its link-local IPv6 address.
    let dual = dual_stack_config(OVERLAY_NETWORK, OVERLAY_NETWORK6, "vxlan");
    let last = fails_with(&topo, &etcd, &dual, &[]);
    for needle in ["eth0", "no usable global IPv6 address", "--public-ipv6"] {
        assert!(last.contains(needle), "{needle:?} in {last}");
    }
    let last = fails_with(
        &topo,
        &etcd,
        r#"{"EnableIPv4":false,"Network":"10.0.0.0/16"}"#,
        &[],
    );
    assert!(
        last.contains("EnableIPv4 and EnableIPv6 are both false"),
        "{last}"
    );
    assert!(etcd
        .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
        .is_empty());
    // With --public-ipv6 the same host starts with the dual-stack config.
    etcd.put(&format!("{ETCD_PREFIX}/config"), &dual);
    let mut d = Overlayd::spawn(
        topo.host(0),
        [
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--iface",
            "eth0",
            "--public-ipv6",
            "fd00:77::99",
        ],
    );
    let s = subnet_of(&d.wait_ready(READY));
    let s6 = ipv6_subnet_in(d.subnet_file()).expect("an IPv6 subnet");
    let key = format!(
        "{ETCD_PREFIX}/subnets/{}",
        SubnetKey {
            ipv4: Some(s),
            ipv6: Some(s6)
        }
        .to_key()
    );
    let value = etcd.get(&key).unwrap_or_default();
    assert!(value.contains(r#""PublicIPv6":"fd00:77::99""#), "{value}");
    // --iface given as an IPv6 address: that address is published, the interface's IPv4
    // address stays PublicIP, and the node keeps its lease (found by PublicIP).
    assert!(d
        .terminate(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    let ip6 = add_underlay_ipv6(topo.host(0), 0);
    let mut d = Overlayd::spawn(
        topo.host(0),
        [
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--iface",
            &ip6.to_string(),
        ],
    );
    assert_eq!(subnet_of(&d.wait_ready(READY)), s);
    let value = etcd.get(&key).unwrap_or_default();
    assert!(
        value.starts_with(&format!(
            r#"{{"PublicIP":"{}","PublicIPv6":"{ip6}""#,
            host_ip(0)
        )),
        "{value}"
    );
}
