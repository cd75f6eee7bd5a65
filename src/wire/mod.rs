//! Wire formats: zero-copy, checked views over byte buffers for every header overlayd
//! reads or writes. No I/O and no allocation; every accessor is safe once the view's
//! checked constructor has accepted the buffer.

pub mod arp;
pub mod checksum;
pub mod ether;
pub mod flow;
pub mod gre;
pub mod icmp;
pub mod ipv4;
pub mod udp;
pub mod virtio;
pub mod vxlan;
