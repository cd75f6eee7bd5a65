//! Why a packet was dropped: the one vocabulary shared by the data plane's counters,
//! the metrics exporter and the tests. Every drop anywhere is counted under one of these.

/// Reasons a packet is dropped. `as usize` indexes per-reason counter arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than the headers it claims to carry.
    Truncated = 0,
    /// Encapsulation header malformed: wrong flags, version, reserved bits, bad GRE checksum.
    BadHeader,
    /// VXLAN VNI or GRE key is not ours.
    WrongVni,
    /// Underlay source address holds no current lease.
    UnknownSender,
    /// Inner source address lies outside the sending node's subnet.
    SpoofedSource,
    /// Inner packet is not IPv4/IPv6 (or not ARP where ARP is handled), or its IP header is bad.
    BadInner,
    /// Inner destination is not in our subnet (received) or has no lease (sent).
    NoRoute,
    /// Larger than the path can carry.
    TooBig,
    /// The kernel refused the write/send.
    IoError,
    /// L2 trunk frame untagged or tagged with a VLAN ID that maps to no network.
    UnmappedVlan,
}

impl DropReason {
    /// Number of reasons, for counter arrays.
    pub const COUNT: usize = 10;

    /// Every reason, in index order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Truncated,
        DropReason::BadHeader,
        DropReason::WrongVni,
        DropReason::UnknownSender,
        DropReason::SpoofedSource,
        DropReason::BadInner,
        DropReason::NoRoute,
        DropReason::TooBig,
        DropReason::IoError,
        DropReason::UnmappedVlan,
    ];

    /// Stable snake_case label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadHeader => "bad_header",
            DropReason::WrongVni => "wrong_vni",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::BadInner => "bad_inner",
            DropReason::NoRoute => "no_route",
            DropReason::TooBig => "too_big",
            DropReason::IoError => "io_error",
            DropReason::UnmappedVlan => "unmapped_vlan",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
