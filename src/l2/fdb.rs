//! The learning tables of the L2 data plane: which node each MAC lives behind (the
//! forwarding database), and which MAC each IP has (for ARP suppression).
//!
//! A fixed-size open-addressing hash table of `(key, value)` pairs of `AtomicU64`, shared by
//! the receive workers (which learn) and the transmit workers (which look up) without a
//! lock and without allocating. Keys never return to 0, so a probe stops at the first empty
//! slot; an entry is forgotten by ageing (its last-seen time, `u32` seconds since the
//! table's start — 136 years before it wraps, so an old entry never looks fresh again — is
//! too old) and its slot reused by a later key. Memory is bounded: when the probe
//! window of a key holds only live entries the key is not learned (counted), and frames to
//! it are flooded, which is always correct.
//!
//! Each attached network has tables of its own, of [`quota`] slots (the node's
//! `TABLE_SLOTS` shared out among its networks): a tenant learning many MACs (random source
//! addresses) fills only its own table, and another tenant's entries are neither evicted nor
//! refused room, so its unicast traffic stays unicast.
//!
//! Writers: one receive worker per socket learns; two workers racing on one slot can at
//! worst leave a stale mapping that the next frame from that MAC corrects (a wrong guess
//! costs delivery to the wrong node, which drops it as unknown there, never a frame in the
//! wrong network: the network is part of the key).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Slots probed from a key's home slot.
const PROBE: usize = 16;
/// The fewest slots a network's table gets, however many networks share the node.
pub const MIN_NETWORK_SLOTS: usize = 256;
/// A key may change its payload (a MAC move to another node) this many times within
/// [`MOVE_WINDOW_SECS`]; the next move pins it to its payload for [`PIN_SECS`] (a looping
/// or spoofed MAC must not flap between nodes on every frame).
pub const MAX_MOVES: u32 = 10;
pub const MOVE_WINDOW_SECS: u32 = 10;
pub const PIN_SECS: u32 = 60;

/// What [`Table::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A key not known (or aged out) before.
    New,
    /// A live key whose value changed (a MAC moved to another node): the old value.
    Moved(u64),
    /// Same value as before; timestamp refreshed when it had changed.
    Refreshed,
    /// No free slot in the key's probe window.
    Full,
    /// A move refused: the key moved more than [`MAX_MOVES`] times in a window and keeps
    /// its payload until the pin expires.
    Pinned,
}

#[derive(Default)]
struct Slot {
    key: AtomicU64,
    /// The payload; 0 = being written (or forgotten).
    val: AtomicU64,
    /// When the entry was last seen (table seconds). A reader racing a writer may pair a
    /// payload with the previous sighting's time: at worst an entry lives a little
    /// longer or shorter, never under another key.
    seen: AtomicU32,
    /// Moves of this key: `window start (table seconds) << 32 | moves in the window`; a
    /// count above [`MAX_MOVES`] means pinned from the window start for [`PIN_SECS`].
    moves: AtomicU64,
}

/// A lock-free learning table of `u64` keys (non-zero) to 48-bit payloads (non-zero).
pub struct Table {
    slots: Box<[Slot]>,
    mask: usize,
    ageing: u32,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("slots", &self.slots.len())
            .field("ageing", &self.ageing)
            .finish()
    }
}

/// The key of a MAC in network `net`.
pub fn mac_key(net: u16, mac: [u8; 6]) -> u64 {
    let mut k = [0u8; 8];
    k[..2].copy_from_slice(&(net + 1).to_be_bytes());
    k[2..].copy_from_slice(&mac);
    u64::from_be_bytes(k)
}

/// The key of an IPv4 address in network `net`.
pub fn ip_key(net: u16, ip: [u8; 4]) -> u64 {
    (u64::from(net) + 1) << 32 | u64::from(u32::from_be_bytes(ip))
}

/// A MAC as a payload.
pub fn mac_payload(mac: [u8; 6]) -> u64 {
    let mut k = [0u8; 8];
    k[2..].copy_from_slice(&mac);
    u64::from_be_bytes(k)
}

/// A payload back to a MAC.
pub fn payload_mac(p: u64) -> [u8; 6] {
    let b = p.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Slots of each network's table when `networks` share `total` slots: an equal share,
/// rounded down to a power of two, at least [`MIN_NETWORK_SLOTS`].
pub fn quota(total: usize, networks: usize) -> usize {
    let share = (total / networks.max(1)).max(MIN_NETWORK_SLOTS);
    1 << share.ilog2()
}

impl Table {
    /// A table of at least `capacity` slots (rounded up to a power of two) whose entries
    /// live `ageing_secs` (at least 1) after they were last seen.
    pub fn new(capacity: usize, ageing_secs: u32) -> Self {
        let n = capacity.max(PROBE).next_power_of_two();
        Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
            ageing: ageing_secs.max(1),
        }
    }

    fn home(&self, key: u64) -> usize {
        // Fibonacci hashing: MACs share their vendor prefix, so mix every bit.
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask
    }

    /// Whether a slot holding `val`, last seen at `seen`, is live at `now`. A sighting
    /// stamped after `now` (a racing writer's clock) counts as now.
    fn live(&self, val: u64, seen: u32, now: u32) -> bool {
        val != 0 && now.saturating_sub(seen) <= self.ageing
    }

    fn slot_live(&self, s: &Slot, now: u32) -> bool {
        let v = s.val.load(Ordering::Acquire);
        self.live(v, s.seen.load(Ordering::Acquire), now)
    }

    /// The payload learned for `key`, if it is still live at `now` (table seconds).
    pub fn lookup(&self, key: u64, now: u32) -> Option<u64> {
        let h = self.home(key);
        for i in 0..PROBE {
            let s = &self.slots[(h + i) & self.mask];
            let k = s.key.load(Ordering::Acquire);
            if k == 0 {
                return None;
            }
            if k == key {
                let v = s.val.load(Ordering::Acquire);
                return self
                    .live(v, s.seen.load(Ordering::Acquire), now)
                    .then_some(v);
            }
        }
        None
    }

    /// Records `key → payload` seen at `now`.
    pub fn learn(&self, key: u64, payload: u64, now: u32) -> Learned {
        debug_assert!(key != 0 && payload != 0 && payload < 1 << 48);
        let h = self.home(key);
        let mut reuse = None;
        for i in 0..PROBE {
            let s = &self.slots[(h + i) & self.mask];
            let mut k = s.key.load(Ordering::Acquire);
            if k == 0 {
                if reuse.is_none() {
                    match s
                        .key
                        .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            s.seen.store(now, Ordering::Release);
                            s.val.store(payload, Ordering::Release);
                            return Learned::New;
                        }
                        Err(other) => k = other,
                    }
                } else {
                    break;
                }
            }
            if k == key {
                let old = s.val.load(Ordering::Acquire);
                let was_live = self.live(old, s.seen.load(Ordering::Acquire), now);
                if s.seen.load(Ordering::Relaxed) != now {
                    s.seen.store(now, Ordering::Release);
                }
                if old == payload {
                    return if was_live {
                        Learned::Refreshed
                    } else {
                        Learned::New
                    };
                }
                if !was_live {
                    s.moves.store(0, Ordering::Relaxed);
                    s.val.store(payload, Ordering::Release);
                    return Learned::New;
                }
                if !allow_move(&s.moves, now) {
                    return Learned::Pinned;
                }
                s.val.store(payload, Ordering::Release);
                return Learned::Moved(old);
            }
            if reuse.is_none() && !self.slot_live(s, now) {
                reuse = Some((h + i) & self.mask);
            }
        }
        let Some(idx) = reuse else {
            return Learned::Full;
        };
        let s = &self.slots[idx];
        let old_key = s.key.load(Ordering::Acquire);
        if self.slot_live(s, now) {
            return Learned::Full;
        }
        // Invalidate the value first so that a reader of the new key never sees the old
        // key's payload.
        s.val.store(0, Ordering::Release);
        if s.key
            .compare_exchange(old_key, key, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Learned::Full;
        }
        s.seen.store(now, Ordering::Release);
        s.moves.store(0, Ordering::Relaxed);
        s.val.store(payload, Ordering::Release);
        Learned::New
    }

    /// Live entries at `now` whose key satisfies `pred` (a scan: for metrics, not per packet).
    pub fn count(&self, now: u32, pred: impl Fn(u64) -> bool) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                let k = s.key.load(Ordering::Relaxed);
                k != 0 && pred(k) && self.slot_live(s, now)
            })
            .count()
    }

    /// Forgets every entry whose payload satisfies `pred` (a node left its network).
    pub fn forget(&self, pred: impl Fn(u64, u64) -> bool) {
        for s in self.slots.iter() {
            let k = s.key.load(Ordering::Relaxed);
            let v = s.val.load(Ordering::Relaxed);
            if k != 0 && v != 0 && pred(k, v) {
                let _ = s
                    .val
                    .compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }
}

/// Whether a key whose move record is `moves` may move at `now`; records the move (or the
/// pin it starts). Racing writers may lose a count: the limit is approximate, never unsafe.
fn allow_move(moves: &AtomicU64, now: u32) -> bool {
    let m = moves.load(Ordering::Relaxed);
    let (start, count) = ((m >> 32) as u32, m as u32);
    let (start, count) = if count > MAX_MOVES {
        if now.saturating_sub(start) < PIN_SECS {
            return false;
        }
        (now, 0)
    } else if now.saturating_sub(start) >= MOVE_WINDOW_SECS {
        (now, 0)
    } else {
        (start, count)
    };
    let count = count + 1;
    // The move over the limit starts the pin (at `now`) and is refused.
    let start = if count > MAX_MOVES { now } else { start };
    moves.store(u64::from(start) << 32 | u64::from(count), Ordering::Relaxed);
    count <= MAX_MOVES
}

/// The network index a MAC or IP key belongs to.
pub fn key_net(key: u64, is_mac: bool) -> u16 {
    if is_mac {
        (key >> 48) as u16 - 1
    } else {
        (key >> 32) as u16 - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

    #[test]
    fn learn_lookup_move_age() {
        let t = Table::new(64, 300);
        let k = mac_key(0, A);
        assert_eq!(t.lookup(k, 0), None);
        assert_eq!(t.learn(k, 10, 0), Learned::New);
        assert_eq!(t.lookup(k, 5), Some(10));
        assert_eq!(t.learn(k, 10, 0), Learned::Refreshed);
        assert_eq!(t.learn(k, 10, 7), Learned::Refreshed);
        assert_eq!(t.learn(k, 11, 8), Learned::Moved(10));
        assert_eq!(t.lookup(k, 8), Some(11));
        // Aged out 300 s after the last sighting, then learned anew.
        assert_eq!(t.lookup(k, 308), Some(11));
        assert_eq!(t.lookup(k, 309), None);
        assert_eq!(t.learn(k, 12, 400), Learned::New);
        // The same node again after ageing is new too.
        assert_eq!(t.learn(k, 12, 800), Learned::New);
    }

    /// The old 16-bit clock wrapped after 65 536 s (~18 h): an entry last seen at 100 s
    /// looked fresh again at 65 636 s and frames went to a node the MAC had left long ago.
    /// With `u32` seconds an aged entry stays aged across that point, and a fresh one lives
    /// across it.
    #[test]
    fn an_aged_entry_stays_aged_past_the_old_16_bit_wrap() {
        let t = Table::new(64, 300);
        let k = mac_key(0, A);
        assert_eq!(t.learn(k, 10, 100), Learned::New);
        for now in [65_636, 65_700, 65_636 + 300, 131_172] {
            assert_eq!(t.lookup(k, now), None, "at {now} s");
        }
        assert_eq!(t.count(65_636, |_| true), 0);
        assert_eq!(t.learn(k, 11, 65_530), Learned::New);
        assert_eq!(t.lookup(k, 65_536 + 100), Some(11));
        assert_eq!(t.lookup(k, 65_530 + 301), None);
    }

    #[test]
    fn a_mac_moving_too_often_is_pinned_then_released() {
        let t = Table::new(64, 300);
        let k = mac_key(0, A);
        assert_eq!(t.learn(k, 1, 0), Learned::New);
        // MAX_MOVES moves within the window are allowed...
        for i in 0..MAX_MOVES {
            let to = 2 + u64::from(i % 2);
            assert!(matches!(t.learn(k, to, 1), Learned::Moved(_)), "move {i}");
        }
        let pinned_to = t.lookup(k, 1).unwrap();
        // ...the next one pins the MAC where it is.
        assert_eq!(t.learn(k, 9, 2), Learned::Pinned);
        assert_eq!(t.learn(k, 9, 2 + PIN_SECS - 1), Learned::Pinned);
        assert_eq!(t.lookup(k, 2 + PIN_SECS - 1), Some(pinned_to));
        // Sightings at the pinned node keep it alive meanwhile.
        assert_eq!(t.learn(k, pinned_to, 3), Learned::Refreshed);
        // After the pin it may move again.
        assert_eq!(t.learn(k, 9, 2 + PIN_SECS), Learned::Moved(pinned_to));
        assert_eq!(t.lookup(k, 2 + PIN_SECS), Some(9));
        // Moves spread over windows are never pinned.
        let k2 = mac_key(0, B);
        t.learn(k2, 1, 100);
        for i in 0..3 * MAX_MOVES {
            let now = 100 + (i + 1) * MOVE_WINDOW_SECS;
            assert!(matches!(
                t.learn(k2, 1 + u64::from(i % 2 == 0), now),
                Learned::Moved(_)
            ));
        }
    }

    #[test]
    fn networks_do_not_share_entries() {
        let t = Table::new(64, 300);
        t.learn(mac_key(0, A), 1, 0);
        assert_eq!(t.lookup(mac_key(1, A), 0), None);
        t.learn(mac_key(1, A), 2, 0);
        assert_eq!(t.lookup(mac_key(0, A), 0), Some(1));
        assert_eq!(t.lookup(mac_key(1, A), 0), Some(2));
        assert_eq!(key_net(mac_key(7, A), true), 7);
        assert_eq!(key_net(ip_key(9, [10, 0, 0, 1]), false), 9);
        assert_eq!(t.count(0, |k| key_net(k, true) == 1), 1);
    }

    #[test]
    fn full_window_refuses_then_reuses_aged_slots() {
        let t = Table::new(16, 10);
        for i in 0..16u8 {
            assert_eq!(t.learn(mac_key(0, [2, 0, 0, 0, 1, i]), 5, 0), Learned::New);
        }
        assert_eq!(t.learn(mac_key(0, B), 5, 1), Learned::Full);
        assert_eq!(t.lookup(mac_key(0, B), 1), None);
        // After ageing every slot is reusable.
        assert_eq!(t.learn(mac_key(0, B), 6, 20), Learned::New);
        assert_eq!(t.lookup(mac_key(0, B), 20), Some(6));
        assert_eq!(t.count(20, |_| true), 1);
    }

    #[test]
    fn quota_shares_the_slots_out() {
        assert_eq!(quota(1 << 16, 0), 1 << 16);
        assert_eq!(quota(1 << 16, 1), 1 << 16);
        assert_eq!(quota(1 << 16, 2), 1 << 15);
        // 21 845 rounds down: three networks never hold more than the node's slots.
        assert_eq!(quota(1 << 16, 3), 1 << 14);
        assert_eq!(quota(1 << 16, 4094), MIN_NETWORK_SLOTS);
    }

    /// One tenant's random source MACs fill its own table only: the other's entries stay,
    /// and it still learns new ones.
    #[test]
    fn a_full_table_does_not_touch_another() {
        let (a, b) = (
            Table::new(quota(1 << 12, 2), 300),
            Table::new(quota(1 << 12, 2), 300),
        );
        assert_eq!(b.learn(mac_key(1, B), 7, 0), Learned::New);
        let mut full = 0;
        for i in 0..100_000u32 {
            let m = i.to_be_bytes();
            if a.learn(mac_key(0, [2, 0xaa, m[0], m[1], m[2], m[3]]), 5, 1) == Learned::Full {
                full += 1;
            }
        }
        assert!(full > 90_000, "A's table refused {full}");
        assert_eq!(b.lookup(mac_key(1, B), 1), Some(7));
        assert_eq!(b.learn(mac_key(1, A), 8, 1), Learned::New);
        assert_eq!(b.count(1, |_| true), 2);
    }

    #[test]
    fn forget_by_payload() {
        let t = Table::new(64, 300);
        t.learn(mac_key(0, A), 1, 0);
        t.learn(mac_key(0, B), 2, 0);
        t.forget(|_, p| p == 1);
        assert_eq!(t.lookup(mac_key(0, A), 0), None);
        assert_eq!(t.lookup(mac_key(0, B), 0), Some(2));
        assert_eq!(t.learn(mac_key(0, A), 3, 0), Learned::New);
    }

    #[test]
    fn mac_payload_round_trip() {
        assert_eq!(payload_mac(mac_payload(A)), A);
    }

    proptest! {
        /// Against a model: with room to spare, every learned key reads back its last value
        /// (one learning per move window, so no move is refused; nothing ages).
        #[test]
        fn matches_a_map(ops in proptest::collection::vec((0u8..40, 1u64..5), 1..300)) {
            let t = Table::new(1024, u32::MAX);
            let mut m = std::collections::HashMap::new();
            let mut now = 0;
            for (k, v) in ops {
                let key = mac_key(0, [2, 0, 0, 0, 0, k]);
                now += MOVE_WINDOW_SECS;
                t.learn(key, v, now);
                m.insert(key, v);
            }
            for (k, v) in m {
                prop_assert_eq!(t.lookup(k, now), Some(v));
            }
        }
    }

    #[test]
    fn concurrent_learners_and_readers_stay_consistent() {
        // Two writers on disjoint keys plus a reader: every value read is one that was
        // written for that key.
        let t = std::sync::Arc::new(Table::new(4096, 300));
        let mut hs = Vec::new();
        for w in 0..2u8 {
            let t = t.clone();
            hs.push(std::thread::spawn(move || {
                for round in 1..200u64 {
                    for i in 0..200u8 {
                        let key = mac_key(0, [2, w, 0, 0, 0, i]);
                        t.learn(key, (u64::from(w) << 40) | round, 0);
                    }
                }
            }));
        }
        let r = {
            let t = t.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    for w in 0..2u8 {
                        for i in 0..200u8 {
                            if let Some(v) = t.lookup(mac_key(0, [2, w, 0, 0, 0, i]), 0) {
                                assert_eq!(v >> 40, u64::from(w));
                            }
                        }
                    }
                }
            })
        };
        for h in hs {
            h.join().unwrap();
        }
        r.join().unwrap();
        assert_eq!(t.count(0, |_| true), 400);
    }
}
