//! When a data-plane worker keeps polling without blocking after a turn (busy-poll): the
//! mode `--busy-poll-us` selects ([`BusyPoll`]), what a turn handled ([`Turn`]), and the
//! policy with its CPU budget ([`Spinner`]). Pure: the clock comes in as values.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Default busy-poll (`--busy-poll-us`): off. A fixed window of 200 µs after any traffic
/// (which covers the round trip to a peer whose worker must first be woken, ~50–70 µs on a
/// VM whose idle vCPUs halt) halves the ping overhead but, on the tunnel-GSO path, costs
/// 0.9 against 0.5 CPU-seconds per GiB and 0.87x against 1.01x of the kernel's VXLAN: the
/// spinning worker takes the CPU the kernel's segmentation and the application need
/// (docs/performance.md, "Busy-poll and CPU per GiB").
pub const DEFAULT_BUSY_POLL: BusyPoll = BusyPoll::Off;

/// Longest fixed window `--busy-poll-us` takes, µs.
pub const MAX_FIXED_US: u32 = 10_000;
/// The adaptive mode's window after a light turn: covers the reply to what was just
/// forwarded (a ping's round trip through both daemons is ~150–250 µs on the test VM).
pub const ADAPTIVE_WINDOW: Duration = Duration::from_micros(250);
/// The adaptive mode's CPU budget: the share of one core a worker may spend spinning
/// (1/33 ≈ 3 %), and the most it may save up (the share of one second).
const BUDGET_DIVISOR: u32 = 33;
const BUDGET_CAP: Duration = Duration::from_millis(30);
/// A light turn handled at most this many packets (reads or datagrams)…
const LIGHT_PACKETS: u32 = 4;
/// …none of them larger than this (a super-packet or a GRO batch makes a turn heavy).
const LIGHT_BYTES: u32 = 2048;
/// A light turn this soon after a heavy one is taken for part of a bulk transfer (the
/// ACKs, a tail), or this soon after a contended spin (below): no window then.
const HOLDOFF: Duration = Duration::from_millis(5);
/// An idle spin (a poll and a yield) that took this long let another task run on the CPU
/// for that time: the CPU is wanted (the application, the kernel, a build), and a spinner,
/// queued behind it at each yield, would catch a reply later than a woken sleeper does.
const CONTENDED: Duration = Duration::from_micros(50);

/// How a worker polls after it handled traffic (`--busy-poll-us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyPoll {
    /// Block in `poll` at once (`0`).
    Off,
    /// Keep polling (yielding between polls) for this long after any traffic (`N` µs).
    Fixed(Duration),
    /// Spin for [`ADAPTIVE_WINDOW`] after a light turn only, within a CPU budget (`auto`).
    Adaptive,
}

impl Default for BusyPoll {
    fn default() -> Self {
        DEFAULT_BUSY_POLL
    }
}

impl FromStr for BusyPoll {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(BusyPoll::Adaptive);
        }
        match s.parse::<u32>() {
            Ok(0) => Ok(BusyPoll::Off),
            Ok(n) if n <= MAX_FIXED_US => Ok(BusyPoll::Fixed(Duration::from_micros(n.into()))),
            _ => Err(format!(
                "{s:?} is not a busy-poll setting; use auto, 0 (off) or microseconds up to {MAX_FIXED_US}"
            )),
        }
    }
}

impl fmt::Display for BusyPoll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusyPoll::Off => f.write_str("0"),
            BusyPoll::Fixed(d) => write!(f, "{}", d.as_micros()),
            BusyPoll::Adaptive => f.write_str("auto"),
        }
    }
}

/// What one turn of a worker handled: packets read from the device or datagrams received,
/// and the largest of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    pub packets: u32,
    pub largest: u32,
}

impl Turn {
    /// Counts `n` packets, the largest `largest` bytes.
    pub fn add(&mut self, n: usize, largest: usize) {
        if n == 0 {
            return;
        }
        self.packets = self
            .packets
            .saturating_add(n.try_into().unwrap_or(u32::MAX));
        self.largest = self.largest.max(largest.try_into().unwrap_or(u32::MAX));
    }

    /// Both turns together.
    pub fn merge(&mut self, o: Turn) {
        self.packets = self.packets.saturating_add(o.packets);
        self.largest = self.largest.max(o.largest);
    }

    /// Whether there was any traffic.
    pub fn worked(&self) -> bool {
        self.packets > 0
    }

    /// Traffic, but only a few small packets (a request, a reply, an ACK): what may be
    /// answered soon, and cannot be part of a bulk transfer's full batches.
    pub fn is_light(&self) -> bool {
        self.worked() && self.packets <= LIGHT_PACKETS && self.largest <= LIGHT_BYTES
    }
}

/// Spinning time saved up: refilled at 1/[`BUDGET_DIVISOR`] of the time that passes, up to
/// [`BUDGET_CAP`]; spent by the time a worker spins without traffic.
#[derive(Debug, Clone, Copy)]
struct Budget {
    left: Duration,
}

impl Budget {
    fn refill(&mut self, elapsed: Duration) {
        self.left = (self.left + elapsed / BUDGET_DIVISOR).min(BUDGET_CAP);
    }

    fn spend(&mut self, d: Duration) {
        self.left = self.left.saturating_sub(d);
    }

    fn empty(&self) -> bool {
        self.left.is_zero()
    }

    fn affords(&self, d: Duration) -> bool {
        self.left >= d
    }
}

/// One worker's busy-poll state: whether the next poll blocks, and (adaptive) the budget.
#[derive(Debug)]
pub struct Spinner {
    mode: BusyPoll,
    /// Polling without blocking until this instant (None: block).
    until: Option<Instant>,
    budget: Budget,
    /// When the previous turn ended.
    last: Instant,
    /// When spinning last had to give way: a heavy turn, or a contended spin (None: never).
    gave_way: Option<Instant>,
}

impl Spinner {
    pub fn new(mode: BusyPoll, now: Instant) -> Self {
        Spinner {
            mode,
            until: None,
            budget: Budget { left: BUDGET_CAP },
            last: now,
            gave_way: None,
        }
    }

    /// Whether the next poll should not block.
    pub fn spinning(&self) -> bool {
        self.until.is_some()
    }

    /// Takes the turn that ended at `now` into account; returns whether the worker should
    /// yield the CPU before polling again (it spins and found nothing).
    pub fn after(&mut self, turn: Turn, now: Instant) -> bool {
        let window = match self.mode {
            BusyPoll::Off => return false,
            BusyPoll::Fixed(w) => Some(w),
            BusyPoll::Adaptive => self.adaptive(turn, now),
        };
        match (turn.worked(), window, self.until) {
            (true, Some(w), _) => self.until = Some(now + w),
            (true, None, _) => self.until = None,
            (false, _, Some(t)) if now < t => return true,
            (false, _, _) => self.until = None,
        }
        false
    }

    /// The adaptive window after `turn` (None: block), with the budget brought up to
    /// `now`: an idle turn while spinning spends it (the window closes when it is gone), a
    /// light turn opens a window when the budget affords a whole one and spinning did not
    /// give way within [`HOLDOFF`] (after a heavy turn, bulk traffic; or a spin slower than
    /// [`CONTENDED`], which also closes the window).
    fn adaptive(&mut self, turn: Turn, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.budget.refill(elapsed);
        let idle_spin = self.spinning() && !turn.worked();
        if idle_spin {
            self.budget.spend(elapsed);
        }
        if (idle_spin && elapsed >= CONTENDED) || (turn.worked() && !turn.is_light()) {
            self.gave_way = Some(now);
        }
        let held = self
            .gave_way
            .is_some_and(|h| now.saturating_duration_since(h) < HOLDOFF);
        let open = if turn.worked() {
            !held && self.budget.affords(ADAPTIVE_WINDOW)
        } else {
            !held && !self.budget.empty()
        };
        if !open {
            self.until = None;
        }
        open.then_some(ADAPTIVE_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn light() -> Turn {
        let mut t = Turn::default();
        t.add(1, 84);
        t
    }

    /// `turn` at `at` closes the window, and no light turn opens one until [`HOLDOFF`]
    /// has passed.
    fn assert_gives_way(s: &mut Spinner, turn: Turn, at: Instant) {
        assert!(!s.after(turn, at));
        assert!(!s.spinning());
        s.after(light(), at + HOLDOFF - us(1));
        assert!(!s.spinning());
        s.after(light(), at + HOLDOFF);
        assert!(s.spinning());
    }

    /// Idle spins of 5 µs each from `from` while the window stays open, for at most `most`;
    /// returns how long it stayed open.
    fn spin_idle(s: &mut Spinner, from: Instant, most: Duration) -> Duration {
        let mut spun = Duration::ZERO;
        while spun < most {
            spun += us(5);
            if !s.after(Turn::default(), from + spun) {
                break;
            }
        }
        spun
    }

    #[test]
    fn parses_the_flag() {
        assert_eq!("auto".parse(), Ok(BusyPoll::Adaptive));
        assert_eq!("AUTO".parse(), Ok(BusyPoll::Adaptive));
        assert_eq!("0".parse(), Ok(BusyPoll::Off));
        assert_eq!("200".parse(), Ok(BusyPoll::Fixed(us(200))));
        assert_eq!("10000".parse(), Ok(BusyPoll::Fixed(us(10_000))));
        for bad in ["10001", "-1", "", "fast"] {
            let e = bad.parse::<BusyPoll>().unwrap_err();
            assert!(
                e.contains("auto, 0 (off) or microseconds up to 10000"),
                "{e}"
            );
        }
        for m in [BusyPoll::Off, BusyPoll::Adaptive, BusyPoll::Fixed(us(150))] {
            assert_eq!(m.to_string().parse(), Ok(m));
        }
    }

    #[test]
    fn classifies_turns() {
        assert!(!Turn::default().worked() && !Turn::default().is_light());
        assert!(light().is_light());
        let mut four = Turn::default();
        four.add(2, 1500);
        four.merge(light());
        four.add(1, 60);
        assert_eq!(
            four,
            Turn {
                packets: 4,
                largest: 1500
            }
        );
        assert!(four.is_light());
        four.add(1, 60);
        assert!(!four.is_light(), "five packets: a batch");
        let mut sp = Turn::default();
        sp.add(1, 65_000);
        assert!(sp.worked() && !sp.is_light(), "a super-packet");
        let mut none = Turn::default();
        none.add(0, 65_000);
        assert_eq!(none, Turn::default());
    }

    #[test]
    fn off_never_spins() {
        let t0 = Instant::now();
        let mut s = Spinner::new(BusyPoll::Off, t0);
        assert!(!s.after(light(), t0));
        assert!(!s.spinning());
    }

    #[test]
    fn fixed_spins_after_any_traffic_until_the_window_ends() {
        let t0 = Instant::now();
        let mut s = Spinner::new(BusyPoll::Fixed(us(200)), t0);
        let mut heavy = Turn::default();
        heavy.add(64, 1400);
        assert!(!s.after(heavy, t0));
        assert!(s.spinning());
        assert!(s.after(Turn::default(), t0 + us(199)));
        assert!(!s.after(Turn::default(), t0 + us(200)));
        assert!(!s.spinning());
    }

    #[test]
    fn adaptive_spins_after_light_turns_only() {
        let t0 = Instant::now();
        let mut s = Spinner::new(BusyPoll::Adaptive, t0);
        s.after(light(), t0);
        assert_eq!(spin_idle(&mut s, t0, us(200)), us(200));
        assert!(s.spinning());
        // The reply arrives within the window: it opens again from there.
        s.after(light(), t0 + us(200));
        assert_eq!(spin_idle(&mut s, t0 + us(200), us(1000)), ADAPTIVE_WINDOW);
        assert!(!s.spinning());
        // A heavy turn (bulk) closes an open window at once.
        s.after(light(), t0 + us(1000));
        let mut heavy = Turn::default();
        heavy.add(1, 64_000);
        // Light turns right after a heavy one are the bulk transfer's ACKs.
        assert_gives_way(&mut s, heavy, t0 + us(1010));
    }

    #[test]
    fn adaptive_gives_way_to_a_busy_cpu() {
        let t0 = Instant::now();
        let mut s = Spinner::new(BusyPoll::Adaptive, t0);
        s.after(light(), t0);
        // Idle spins of a few µs go on…
        assert!(s.after(Turn::default(), t0 + us(3)));
        assert!(s.after(Turn::default(), t0 + us(6)));
        // …one that took 50 µs (another task ran during the yield) closes the window,
        // and for a while no light turn opens one.
        assert_gives_way(&mut s, Turn::default(), t0 + us(56));
    }

    #[test]
    fn adaptive_budget_caps_the_spinning_and_refills() {
        let t0 = Instant::now();
        let mut s = Spinner::new(BusyPoll::Adaptive, t0);
        // Light turns back to back, each followed by a full idle window: the saved-up
        // 30 ms last 120 windows of 250 µs, a little more with what refills meanwhile,
        // until less than a whole window is left.
        let mut now = t0;
        let mut windows = 0;
        while windows < 1000 {
            s.after(light(), now);
            if !s.spinning() {
                break;
            }
            now += spin_idle(&mut s, now, Duration::from_secs(1));
            windows += 1;
        }
        assert!((122..=124).contains(&windows), "{windows}");
        // Spent: no window now, even after a light turn.
        s.after(light(), now + us(1));
        assert!(!s.spinning());
        // One second later 30 ms are back (1/33 of it, at most the cap).
        now += Duration::from_secs(1);
        s.after(light(), now);
        assert!(s.spinning());
        assert!(
            s.budget.left >= Duration::from_millis(29),
            "{:?}",
            s.budget.left
        );
    }

    #[test]
    fn traffic_while_spinning_costs_no_budget() {
        let t0 = Instant::now();
        let mut s = Spinner::new(BusyPoll::Adaptive, t0);
        let mut now = t0;
        for _ in 0..10_000 {
            s.after(light(), now);
            now += us(100);
        }
        assert_eq!(s.budget.left, BUDGET_CAP);
        assert!(s.spinning());
    }
}
