//! Internet checksum (RFC 1071) arithmetic, shared by every header that carries one.
//!
//! Pure functions over byte slices. The accumulator is a `u64` summed 32 bits at a time so
//! that the hot path (TCP checksums over 64 KiB super-packets) does a quarter of the adds a
//! naive 16-bit loop does; [`fold`] reduces it to the final 16-bit one's-complement value.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Adds `data` to a running one's-complement sum. Big-endian 16-bit words; an odd trailing
/// byte is padded with zero as RFC 1071 requires.
pub fn add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Two 32-bit big-endian words per step; the u64 accumulator cannot overflow before
        // 2^32 additions, far more than any packet.
        let a = u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
        let b = u32::from_be_bytes([c[4], c[5], c[6], c[7]]) as u64;
        acc += a + b;
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        acc += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [b] = words.remainder() {
        acc += (*b as u64) << 8;
    }
    acc
}

/// Folds an accumulator into a 16-bit one's-complement sum (not yet inverted).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data`: the inverted folded sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add(0, data))
}

/// Sum of the IPv4 pseudo-header used by TCP and UDP (RFC 793 / RFC 768).
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u64 {
    let mut acc = add(0, &src.octets());
    acc = add(acc, &dst.octets());
    acc + proto as u64 + len as u64
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1).
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u64 {
    let mut acc = add(0, &src.octets());
    acc = add(acc, &dst.octets());
    acc + proto as u64 + (len >> 16) as u64 + (len & 0xffff) as u64
}

/// Whether an IPv4 TCP/UDP segment `l4` (header + payload) carries a correct checksum.
pub fn checksum_ok(l4: &[u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> bool {
    let acc = add(pseudo_header_v4(src, dst, proto, l4.len() as u16), l4);
    fold(acc) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward 16-bit reference implementation.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for w in data.chunks(2) {
            let v = if w.len() == 2 {
                u16::from_be_bytes([w[0], w[1]])
            } else {
                (w[0] as u16) << 8
            };
            s += v as u32;
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example bytes: sum is 0xddf2, checksum its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn ipv4_header_verifies_to_zero() {
        // A real IPv4 header with a correct checksum (0xb861) sums to 0xffff.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0);
    }

    #[test]
    fn matches_reference_on_all_lengths() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(checksum(&data[..len]), reference(&data[..len]), "len {len}");
        }
    }

    #[test]
    fn incremental_equals_whole_on_even_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
        let whole = checksum(&data);
        let part = !fold(add(add(0, &data[..512]), &data[512..]));
        assert_eq!(whole, part);
    }
}
