//! The wireguard engine's incoming-datagram path: any bytes from any address. Nothing
//! unauthenticated may reach the device, and every datagram is either counted as a drop
//! or answered (a cookie reply under load).
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlayd::wg::engine::{Engine, Identity, Io, PeerSpec, WgDrop};
use std::net::SocketAddr;

#[derive(Default)]
struct Rec {
    sent: usize,
    delivered: usize,
}

impl Io for Rec {
    fn send(&mut self, _: SocketAddr, _: &[u8]) {
        self.sent += 1;
    }
    fn deliver(&mut self, _: &[u8]) {
        self.delivered += 1;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut e = Engine::new(Identity {
        secret: [2u8; 32].into(),
        psk: None,
        keepalive: None,
    });
    let peer = Engine::new(Identity {
        secret: [1u8; 32].into(),
        psk: None,
        keepalive: None,
    });
    let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    e.set_peers(&[PeerSpec {
        public_key: peer.public_key(),
        endpoint: from,
        allowed: vec!["10.244.1.0/24".parse().unwrap()],
    }]);
    let mut out = vec![0u8; data.len().max(148) + 64];
    let mut io = Rec::default();
    e.receive(from, data, &mut out, &mut io);
    assert_eq!(io.delivered, 0, "an unauthenticated datagram reached the device");
    let drops: u64 = WgDrop::ALL.iter().map(|&w| e.stats.dropped(w)).sum();
    assert!(drops == 1 || io.sent > 0, "a datagram was neither dropped nor answered");
});
