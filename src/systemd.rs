//! systemd integration through the `sd-notify` crate: `READY=1` once the node forwards,
//! `STOPPING=1` on shutdown, and `WATCHDOG=1` keep-alives that are sent only while the daemon
//! is really healthy, so that `WatchdogSec=` restarts a daemon that is alive but broken.
//!
//! The health verdict ([`Health`]) and the ping decision ([`Watchdog::decide`]) are pure; the
//! daemon gathers the facts at its 2 s check tick and calls [`Watchdog::tick`]. Every call is a
//! no-op when the process was not started by systemd (no `$NOTIFY_SOCKET`), and the watchdog
//! is off unless systemd asked for it (`$WATCHDOG_USEC`, and `$WATCHDOG_PID` naming this
//! process when set).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{info, warn};

/// Tells systemd (`Type=notify`) that the node forwards: lease, device, routes and
/// subnet.env are in place.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("forwarding")]);
}

/// Tells systemd that we are stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// The facts the watchdog's verdict is made of, gathered at each check tick.
///
/// Deliberately *not* among them: whether etcd answers. With etcd down overlayd keeps
/// forwarding to every known peer, while a restart would remove the device and wait for etcd
/// to hand the lease back; restarting cannot repair etcd, so it must not be triggered by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The overlay device exists and is the one overlayd opened (same interface index), not
    /// missing and not another link that took its name.
    pub device_ours: bool,
    /// Every data-plane worker thread is still running.
    pub workers_alive: bool,
    /// The control loop (lease keepalive, peer watch, re-acquisition) is still running.
    pub control_alive: bool,
}

impl Health {
    /// Every part healthy.
    pub const OK: Health = Health {
        device_ours: true,
        workers_alive: true,
        control_alive: true,
    };

    /// What is wrong, in words for the log (empty when healthy).
    pub fn problems(&self) -> Vec<&'static str> {
        let mut p = Vec::new();
        if !self.device_ours {
            p.push("overlay device missing or not ours");
        }
        if !self.workers_alive {
            p.push("a data-plane worker stopped");
        }
        if !self.control_alive {
            p.push("the control loop stopped");
        }
        p
    }

    pub fn is_ok(&self) -> bool {
        self.device_ours && self.workers_alive && self.control_alive
    }
}

/// The watchdog's state between ticks.
#[derive(Debug)]
pub struct Watchdog {
    /// systemd's `WatchdogSec` (None: the watchdog is off and nothing is sent).
    timeout: Option<Duration>,
    /// Since when the daemon has been unhealthy (None: healthy).
    unhealthy_since: Option<Instant>,
}

/// What one tick decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Watchdog off: nothing to do.
    Off,
    /// Healthy: send `WATCHDOG=1`.
    Ping,
    /// Unhealthy: withhold the ping (systemd restarts us once `WatchdogSec` passes without one).
    Withhold {
        problems: Vec<&'static str>,
        first: bool,
    },
    /// Healthy again after a withheld period.
    Recovered { after: Duration },
}

/// Shortest `WatchdogSec` the 2 s check tick can serve (a ping at least every half period).
pub const MIN_TIMEOUT: Duration = Duration::from_secs(4);

impl Watchdog {
    /// A watchdog with systemd's timeout (None = off).
    pub fn new(timeout: Option<Duration>) -> Watchdog {
        Watchdog {
            timeout,
            unhealthy_since: None,
        }
    }

    /// The watchdog systemd asked for in the environment (`$WATCHDOG_USEC`), if any.
    pub fn from_env() -> Watchdog {
        let timeout = sd_notify::watchdog_enabled();
        if let Some(t) = timeout {
            if t < MIN_TIMEOUT {
                warn!(watchdog = ?t, min = ?MIN_TIMEOUT, "WatchdogSec is shorter than two health checks; systemd may restart a healthy daemon");
            } else {
                info!(watchdog = ?t, "systemd watchdog on: pinging while healthy");
            }
        }
        Watchdog::new(timeout)
    }

    /// Whether systemd asked for watchdog pings.
    pub fn enabled(&self) -> bool {
        self.timeout.is_some()
    }

    /// Pure: what to do at `now` given `health`.
    pub fn decide(&mut self, now: Instant, health: Health) -> Decision {
        if self.timeout.is_none() {
            return Decision::Off;
        }
        match (health.is_ok(), self.unhealthy_since) {
            (true, None) => Decision::Ping,
            (true, Some(since)) => {
                self.unhealthy_since = None;
                Decision::Recovered {
                    after: now.saturating_duration_since(since),
                }
            }
            (false, since) => {
                self.unhealthy_since = Some(since.unwrap_or(now));
                Decision::Withhold {
                    problems: health.problems(),
                    first: since.is_none(),
                }
            }
        }
    }

    /// One check tick: decides and sends `WATCHDOG=1` when healthy, logs when the verdict
    /// changes.
    pub fn tick(&mut self, health: Health) {
        match self.decide(Instant::now(), health) {
            Decision::Off => {}
            Decision::Ping => send(&[NotifyState::Watchdog]),
            Decision::Withhold { problems, first } => {
                if first {
                    warn!(problems = ?problems, timeout = ?self.timeout, "unhealthy: withholding systemd watchdog pings (systemd restarts overlayd if this lasts)");
                }
            }
            Decision::Recovered { after } => {
                info!(after = ?after, "healthy again: systemd watchdog pings resume");
                send(&[NotifyState::Watchdog]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Health = Health::OK;

    #[test]
    fn off_without_systemd() {
        let mut w = Watchdog::new(None);
        assert!(!w.enabled());
        assert_eq!(w.decide(Instant::now(), OK), Decision::Off);
        let bad = Health {
            device_ours: false,
            ..OK
        };
        assert_eq!(w.decide(Instant::now(), bad), Decision::Off);
    }

    #[test]
    fn pings_only_while_every_part_is_healthy() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Some(Duration::from_secs(30)));
        assert_eq!(w.decide(t0, OK), Decision::Ping);
        for (i, bad) in [
            Health {
                device_ours: false,
                ..OK
            },
            Health {
                workers_alive: false,
                ..OK
            },
            Health {
                control_alive: false,
                ..OK
            },
        ]
        .into_iter()
        .enumerate()
        {
            let t = t0 + Duration::from_secs(10 * i as u64);
            assert_eq!(
                w.decide(t, bad),
                Decision::Withhold {
                    problems: bad.problems(),
                    first: true
                }
            );
            assert_eq!(bad.problems().len(), 1, "{bad:?}");
            assert_eq!(
                w.decide(t + Duration::from_secs(2), bad),
                Decision::Withhold {
                    problems: bad.problems(),
                    first: false
                }
            );
            assert_eq!(
                w.decide(t + Duration::from_secs(4), OK),
                Decision::Recovered {
                    after: Duration::from_secs(4)
                }
            );
            assert_eq!(w.decide(t + Duration::from_secs(6), OK), Decision::Ping);
        }
        let all_bad = Health {
            device_ours: false,
            workers_alive: false,
            control_alive: false,
        };
        assert_eq!(all_bad.problems().len(), 3);
        assert!(OK.problems().is_empty() && OK.is_ok());
    }
}
