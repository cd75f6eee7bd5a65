//! Wire formats: zero-copy, checked views over byte buffers for every header overlayd
//! reads or writes. No I/O and no allocation; every accessor is safe once the view's
//! checked constructor has accepted the buffer.

pub mod checksum;
pub mod virtio;
