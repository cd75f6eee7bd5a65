//! Lease conflicts (issue 22): another writer overwriting this node's own lease key is
//! noticed from the watch, logged as an error, and our value is written back within 5 s.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

const READY: Duration = Duration::from_secs(30);

#[test]
fn netns_overwritten_lease_is_restored() {
    if skip_unless_root("netns_overwritten_lease_is_restored") {
        return;
    }
    let mut topo = Topology::new(1);
    let etcd = topo.start_etcd();
    let mut d = Overlayd::spawn(topo.host(0), overlayd_args("udp", &etcd));
    let subnet = subnet_of(&d.wait_ready(READY));
    let key = lease_key(ETCD_PREFIX, subnet);
    let ours = etcd.get(&key).expect("our lease in etcd");
    let theirs = r#"{"PublicIP":"192.0.2.99"}"#;
    etcd.put(&key, theirs);
    let t = Instant::now();
    let mut restored = None;
    while t.elapsed() < Duration::from_secs(10) {
        if etcd.get(&key).as_deref() == Some(ours.as_str()) {
            restored = Some(t.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let took = restored.unwrap_or_else(|| {
        panic!(
            "our lease {key} was not restored within 10 s; now {:?}; log:\n{}",
            etcd.get(&key),
            d.log()
        )
    });
    println!("overwritten lease restored after {took:?}");
    assert!(took <= Duration::from_secs(5), "restored after {took:?}");
    assert!(
        d.log().contains("overwritten by another writer"),
        "the overwrite is logged"
    );
    assert!(d.is_running());
}
