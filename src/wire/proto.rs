//! IP protocol numbers (IPv4 protocol, IPv6 next header) overlayd names: the bottom of the
//! network-layer modules, so that [`ipv4`](super::ipv4) and [`ip`](super::ip) (which
//! re-exports them) both use them without using each other.

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_DCCP: u8 = 33;
pub const PROTO_GRE: u8 = 47;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_UDPLITE: u8 = 136;
