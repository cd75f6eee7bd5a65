//! The destinations a transmit offload failed for, per worker: a small fixed table of
//! (underlay address, retry time). A kernel that refuses a GSO send to one destination
//! (a peer behind a route whose MTU is smaller than the segments, say) costs that
//! destination the offload until its entry expires; every other destination keeps it.
//! After [`REPROBE`] the offload is tried again for it (and, refused again, re-entered).
//!
//! Pure and allocation-free: the table is an array made with the worker, looked up only
//! while it holds an entry (an empty table costs one branch per send).

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Destinations one table remembers; a refusal with every slot in use takes the slot that
/// expires first.
pub const SLOTS: usize = 16;
/// How long a destination goes without the offload before it is tried again.
pub const REPROBE: Duration = Duration::from_secs(30);

/// Whether `e` is the kernel refusing a GSO send (EIO/EINVAL, or EMSGSIZE: a segment plus
/// its headers above the path MTU, as kernels since 6.x answer where older ones said
/// EINVAL) rather than, say, a full socket: what enters a destination into the table.
pub fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EMSGSIZE)
    )
}

/// One offload's refused destinations.
#[derive(Debug, Clone)]
pub struct Fallback {
    slots: [Option<(IpAddr, Instant)>; SLOTS],
    /// Entries in use (some may have expired).
    used: usize,
    reprobe: Duration,
}

impl Default for Fallback {
    fn default() -> Self {
        Self::new(REPROBE)
    }
}

impl Fallback {
    /// An empty table whose entries last `reprobe`.
    pub fn new(reprobe: Duration) -> Self {
        Self {
            slots: [None; SLOTS],
            used: 0,
            reprobe,
        }
    }

    /// Whether nothing is remembered: the offload is on for every destination.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Whether `dst` goes without the offload at `now` (refused less than the re-probe
    /// time ago). An expired entry is freed here, so the next send tries again.
    pub fn off(&mut self, dst: IpAddr, now: Instant) -> bool {
        if self.is_empty() {
            return false;
        }
        for s in self.slots.iter_mut() {
            match *s {
                Some((d, until)) if d == dst && now < until => return true,
                Some((d, _)) if d == dst => {
                    *s = None;
                    self.used -= 1;
                    return false;
                }
                _ => {}
            }
        }
        false
    }

    /// Records that the kernel refused the offload for `dst` at `now`: it goes without
    /// until `now` + the re-probe time. Returns false when `dst` was already in the table.
    pub fn refuse(&mut self, dst: IpAddr, now: Instant) -> bool {
        let until = now + self.reprobe;
        if let Some(s) = self.slots.iter_mut().flatten().find(|(d, _)| *d == dst) {
            s.1 = until;
            return false;
        }
        let free = self.slots.iter().position(Option::is_none);
        let i = free.unwrap_or_else(|| {
            // Full: the entry that expires first (it has had the longest of its time).
            (0..SLOTS)
                .min_by_key(|&i| self.slots[i].map(|(_, u)| u))
                .unwrap_or(0)
        });
        if self.slots[i].is_none() {
            self.used += 1;
        }
        self.slots[i] = Some((dst, until));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 168, 0, last))
    }

    #[test]
    fn a_refused_destination_goes_without_until_the_reprobe_time_others_keep_it() {
        let t0 = Instant::now();
        let mut f = Fallback::new(Duration::from_secs(30));
        assert!(f.is_empty());
        assert!(!f.off(v4(1), t0));
        assert!(f.refuse(v4(1), t0));
        assert!(!f.is_empty());
        assert!(f.off(v4(1), t0 + Duration::from_secs(29)));
        assert!(!f.off(v4(2), t0), "another destination keeps the offload");
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert!(!f.off(v6, t0));
        // Re-probe: expired, freed, tried again.
        assert!(!f.off(v4(1), t0 + Duration::from_secs(30)));
        assert!(f.is_empty());
        // Refused again on the probe: off for another period.
        let t1 = t0 + Duration::from_secs(31);
        assert!(f.refuse(v4(1), t1));
        assert!(f.off(v4(1), t1 + Duration::from_secs(10)));
    }

    #[test]
    fn a_repeated_refusal_extends_its_entry_without_taking_another_slot() {
        let t0 = Instant::now();
        let mut f = Fallback::new(Duration::from_secs(30));
        assert!(f.refuse(v4(1), t0));
        assert!(
            !f.refuse(v4(1), t0 + Duration::from_secs(20)),
            "already there"
        );
        assert!(f.off(v4(1), t0 + Duration::from_secs(45)));
        assert_eq!(f.used, 1);
    }

    /// A path MTU below the segments makes this kernel refuse a GSO send with EMSGSIZE
    /// (tests/offload_fallback.rs found it counted as an I/O error, the peer unreachable).
    #[test]
    fn refusals_are_told_from_other_errors() {
        for e in [libc::EIO, libc::EINVAL, libc::EMSGSIZE] {
            assert!(gso_refused(&io::Error::from_raw_os_error(e)), "{e}");
        }
        for e in [libc::EAGAIN, libc::ENOBUFS, libc::ECONNREFUSED] {
            assert!(!gso_refused(&io::Error::from_raw_os_error(e)), "{e}");
        }
    }

    #[test]
    fn a_full_table_replaces_the_entry_that_expires_first() {
        let t0 = Instant::now();
        let mut f = Fallback::new(Duration::from_secs(30));
        for i in 0..SLOTS {
            f.refuse(v4(i as u8), t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(f.used, SLOTS);
        let late = t0 + Duration::from_secs(SLOTS as u64);
        assert!(f.refuse(v4(200), late));
        assert_eq!(f.used, SLOTS);
        let now = late + Duration::from_secs(1);
        assert!(f.off(v4(200), now));
        assert!(!f.off(v4(0), now), "the oldest entry made room");
        assert!(f.off(v4(1), now), "the others stay");
    }
}
