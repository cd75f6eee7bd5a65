//! Wire formats: zero-copy, checked views over byte buffers for every header overlayd
//! reads or writes. No I/O and no allocation; every accessor is safe once the view's
//! checked constructor has accepted the buffer. Other layers are meant to read and write
//! header fields only through these modules, never by byte index.
//!
//! Each header module follows smoltcp's contract: a `Packet<T: AsRef<[u8]>>` (or `Frame`)
//! view with field offsets in a private `field` module; `new_unchecked`, `check_len` and
//! `new_checked`; getters on `AsRef<[u8]>`, setters on `AsMut<[u8]>`; and, where overlayd
//! builds the header itself, a `Repr` with `parse`, `buffer_len` and `emit`. Hot paths may
//! wrap a buffer with `new_unchecked` once its length has been checked some other way
//! (say by [`ip::parse`]); the accessors' own indexing is then the invariant's assertion.
//! Checks return drop reasons, except [`ip::parse`], whose [`ip::Error`] names the bytes it
//! needed for the offloads' error messages.
//!
//! - Link: [`ether`] (Ethernet II, 802.1Q tags, MAC addresses), [`arp`].
//! - Network: [`proto`] (the IP protocol numbers), [`ip`] (the version-agnostic header
//!   parse, the pseudo-header sum, the inner-packet gate), [`ipv4`], [`ipv6`], [`icmp`]
//!   (the errors overlayd originates). Within the folder, too, imports go one way:
//!   `proto` ← `ipv4`/`ipv6` ← `ip`.
//! - Transport: [`tcp`], [`udp`].
//! - Encapsulation: [`vxlan`], [`gre`], and [`virtio`] (the TUN/TAP offload header).
//! - Arithmetic over headers: [`checksum`] (RFC 1071), [`flow`] (the inner-flow hash for
//!   the underlay source port).

pub mod arp;
pub mod checksum;
pub mod ether;
pub mod flow;
pub mod gre;
pub mod icmp;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod proto;
pub mod tcp;
pub mod udp;
pub mod virtio;
pub mod vxlan;
