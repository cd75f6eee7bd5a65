//! UDP headers overlayd writes itself (the outer header of a tunnel packet handed whole to
//! the kernel). Pure: no I/O, no allocation.

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = 6;

/// A UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    /// Header and payload.
    pub length: u16,
    /// As sent: 0 (none), or a pseudo-header sum left for the kernel to finish.
    pub checksum: u16,
}

impl Repr {
    /// Writes the 8-byte header at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`]; callers reserve the room up front.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN];
        b[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        b[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        b[4..6].copy_from_slice(&self.length.to_be_bytes());
        b[6..8].copy_from_slice(&self.checksum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_network_order() {
        let mut b = [0u8; 8];
        Repr {
            src_port: 0x1234,
            dst_port: 8472,
            length: 1000,
            checksum: 0xabcd,
        }
        .emit(&mut b);
        assert_eq!(b, [0x12, 0x34, 0x21, 0x18, 0x03, 0xe8, 0xab, 0xcd]);
    }
}
