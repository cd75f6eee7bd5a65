//! flanneld's iptables rules, kept by overlayd: masquerading of pod traffic that leaves the
//! pod network (`--ip-masq`, chain `OVERLAYD-POSTRTG` in `nat`) and ACCEPT for the pod network
//! in FORWARD (`--iptables-forward-rules`, chain `OVERLAYD-FWD` in `filter`).
//!
//! The rule set is pure data ([`masq_chain`], [`forward_chain`]), written exactly as
//! `iptables -S` prints it, so that the check is a string comparison: [`plan`] compares what
//! `iptables -S` shows with what should be there and returns the `iptables-restore --noflush`
//! input that repairs it, or nothing. Only [`Firewall`] runs commands (iptables and
//! iptables-restore of the host, nft or legacy backend, whichever `iptables` is).
//!
//! Each chain is overlayd's alone: it is rewritten whole (a chain declared in an
//! iptables-restore input is flushed), so a restart, a new subnet or a hand-edited rule all end
//! in the same rule list, and the one jump from POSTROUTING/FORWARD is kept unique. The rules
//! stay in place when overlayd stops (as flanneld leaves its own), so pods keep reaching the
//! outside while the daemon restarts; a start without `--ip-masq` (or with
//! `--iptables-forward-rules=false`) removes the chain a previous run left.

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{info, warn};

/// The nat chain for `--ip-masq`.
pub const MASQ_CHAIN: &str = "OVERLAYD-POSTRTG";
/// The filter chain for `--iptables-forward-rules`.
pub const FORWARD_CHAIN: &str = "OVERLAYD-FWD";
/// kube-proxy marks what it will masquerade itself (`KUBE-MARK-MASQ`): never twice.
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";
/// iptables learnt MASQUERADE's `--random-fully` in 1.6.2.
const RANDOM_FULLY_SINCE: (u32, u32, u32) = (1, 6, 2);

/// One of overlayd's chains with its rules and the jump into it, each rule written as
/// `iptables -S` prints it, without the leading `-A <chain> `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub table: &'static str,
    pub name: &'static str,
    /// The built-in chain that jumps to it.
    pub parent: &'static str,
    pub rules: Vec<String>,
    /// The jump rule in `parent`.
    pub jump: String,
}

fn comment(what: &str) -> String {
    format!("-m comment --comment \"overlayd {what}\"")
}

/// flanneld's masquerade rules (pkg/trafficmngr/iptables, v0.28) for the pod `network` and
/// this node's `subnet`, in order:
/// 1. traffic kube-proxy marked is left to kube-proxy (no double NAT);
/// 2. this node's pods → the pod network, and the pod network → this node's pods: no NAT;
/// 3. from outside the pod network to this node's pods (e.g. a NodePort): no NAT;
/// 4. the pod network → anywhere else except multicast: MASQUERADE (`--random-fully` when
///    iptables has it and `--ip-masq-fully-random-disable` is not given);
/// 5. from outside the pod network (the host itself) into the pod network: MASQUERADE, so the
///    far side answers the node's overlay address.
pub fn masq_chain(network: Ipv4Net, subnet: Ipv4Net, random_fully: bool) -> Chain {
    let c = comment("masq");
    let masq = if random_fully {
        "-j MASQUERADE --random-fully"
    } else {
        "-j MASQUERADE"
    };
    Chain {
        table: "nat",
        name: MASQ_CHAIN,
        parent: "POSTROUTING",
        rules: vec![
            format!("-m mark --mark {KUBE_PROXY_MARK} {c} -j RETURN"),
            format!("-s {subnet} -d {network} {c} -j RETURN"),
            format!("-s {network} -d {subnet} {c} -j RETURN"),
            format!("! -s {network} -d {subnet} {c} -j RETURN"),
            format!("-s {network} ! -d 224.0.0.0/4 {c} {masq}"),
            format!("! -s {network} -d {network} {c} {masq}"),
        ],
        jump: format!("{c} -j {MASQ_CHAIN}"),
    }
}

/// flanneld's forward rules: ACCEPT what comes from or goes to the pod network (Docker ≥ 1.13
/// sets FORWARD's policy to DROP). With `tunnel_dev` (the tunnel-GSO TAP), also what arrives
/// on it: the encapsulated packets the kernel routes out of the underlay for us.
pub fn forward_chain(network: Ipv4Net, tunnel_dev: Option<&str>) -> Chain {
    let c = comment("forward");
    let mut rules = vec![
        format!("-s {network} {c} -j ACCEPT"),
        format!("-d {network} {c} -j ACCEPT"),
    ];
    if let Some(dev) = tunnel_dev {
        rules.push(format!("-i {dev} {} -j ACCEPT", comment("tunnel GSO")));
    }
    Chain {
        table: "filter",
        name: FORWARD_CHAIN,
        parent: "FORWARD",
        rules,
        jump: format!("{c} -j {FORWARD_CHAIN}"),
    }
}

/// Whether the FORWARD chain's policy drops (`-P FORWARD DROP`, as Docker sets it); `None`
/// when iptables cannot tell (absent, or failing).
pub async fn forward_policy_drops() -> Option<bool> {
    let out = run("iptables", &["-S", "FORWARD"]).await.ok()?;
    let policy = out.lines().find_map(|l| l.strip_prefix("-P FORWARD "))?;
    Some(policy.trim() == "DROP")
}

/// What `iptables -t <table> -S <chain>` showed: its lines, or None when the chain is absent.
pub type Listing = Option<Vec<String>>;

/// What to change in one chain, as `iptables-restore --noflush` lines for its table (without
/// the `*table` and `COMMIT` lines); empty when it is as it should be.
///
/// `want = None` means the chain should not exist (its feature is off): the jumps into it
/// are deleted and the chain flushed and removed, if there.
pub fn plan(
    want: Option<&Chain>,
    chain: &str,
    parent: &str,
    have: &Listing,
    parent_have: &Listing,
    jump: &str,
) -> Vec<String> {
    let jump_line = format!("-A {parent} {jump}");
    let jumps = parent_have
        .as_ref()
        .map(|l| l.iter().filter(|x| **x == jump_line).count())
        .unwrap_or(0);
    let mut out = Vec::new();
    match want {
        Some(c) => {
            let expected: Vec<String> = std::iter::once(format!("-N {chain}"))
                .chain(c.rules.iter().map(|r| format!("-A {chain} {r}")))
                .collect();
            if have.as_ref() != Some(&expected) {
                out.push(format!(":{chain} - [0:0]"));
                out.extend(expected.into_iter().skip(1));
            }
            // Exactly one jump: add the missing one, delete duplicates.
            if jumps == 0 {
                out.push(jump_line);
            } else {
                out.extend((1..jumps).map(|_| format!("-D {parent} {jump}")));
            }
        }
        None => {
            out.extend((0..jumps).map(|_| format!("-D {parent} {jump}")));
            if have.is_some() {
                out.push(format!(":{chain} - [0:0]"));
                out.push(format!("-X {chain}"));
            }
        }
    }
    out
}

/// The `iptables-restore` input for one table's changes.
pub fn restore_input(table: &str, lines: &[String]) -> String {
    let mut s = format!("*{table}\n");
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// Whether the `iptables --version` line names a version with MASQUERADE `--random-fully`.
pub fn has_random_fully(version_line: &str) -> bool {
    let Some(v) = version_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
    else {
        return false;
    };
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let ver = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    ver >= RANDOM_FULLY_SINCE
}

/// Why the rules could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run {cmd}: {source} (--ip-masq and --iptables-forward-rules need iptables; install it, or turn both off)")]
    Spawn {
        cmd: &'static str,
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: &'static str, stderr: String },
}

/// The desired chains, and the commands that keep them in place.
#[derive(Debug)]
pub struct Firewall {
    masq: Option<Chain>,
    forward: Option<Chain>,
    /// Whether chains of a disabled feature are still to be looked for (once, at start).
    cleanup: bool,
    random_fully: bool,
    ip_masq: bool,
    network: Ipv4Net,
    every: Duration,
    next: Instant,
    /// The last error logged, so a persisting one is not repeated every few seconds.
    last_error: Option<String>,
    /// Whether the rules were put in place once (a later rewrite is a repair).
    written: bool,
}

/// What [`Firewall::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repairs {
    /// Chains (re)written or removed.
    pub chains: usize,
}

impl Firewall {
    /// The rules for `--ip-masq` / `--iptables-forward-rules` on pod `network`, this node's
    /// `subnet`. Fails only when `--ip-masq` was asked for and iptables cannot be run.
    pub async fn new(
        ip_masq: bool,
        fully_random_disable: bool,
        forward: bool,
        network: Ipv4Net,
        subnet: Ipv4Net,
        tunnel_dev: Option<&str>,
        resync: Duration,
    ) -> Result<Firewall, FirewallError> {
        let version = match run("iptables", &["--version"]).await {
            Ok(v) => Some(v),
            Err(e @ FirewallError::Spawn { .. }) if ip_masq => return Err(e),
            Err(e) => {
                if forward {
                    warn!(error = %e, "no iptables: the FORWARD accept rules (--iptables-forward-rules) are not installed");
                }
                None
            }
        };
        let random_fully =
            !fully_random_disable && version.as_deref().is_some_and(has_random_fully);
        let usable = version.is_some();
        let mut fw = Firewall {
            masq: None,
            forward: (usable && forward).then(|| forward_chain(network, tunnel_dev)),
            cleanup: usable,
            random_fully,
            ip_masq: ip_masq && usable,
            network,
            every: resync,
            next: Instant::now(),
            last_error: None,
            written: false,
        };
        fw.set_subnet(subnet);
        if let Some(v) = version {
            info!(iptables = %v.trim(), masquerade = fw.masq.is_some(), random_fully = fw.random_fully && fw.masq.is_some(), forward_rules = fw.forward.is_some(), "iptables rules");
        }
        Ok(fw)
    }

    /// Moves the masquerade rules to a new subnet (after a re-acquisition); the next
    /// [`Firewall::ensure`] rewrites the chain.
    pub fn set_subnet(&mut self, subnet: Ipv4Net) {
        if self.ip_masq {
            self.masq = Some(masq_chain(self.network, subnet, self.random_fully));
        }
        self.next = Instant::now();
    }

    /// Puts the rules in place if anything differs; a no-op before the resync period has
    /// passed since the last check. Errors are logged once while they persist.
    pub async fn ensure(&mut self) -> Repairs {
        if !self.cleanup && self.masq.is_none() && self.forward.is_none() {
            return Repairs::default();
        }
        let now = Instant::now();
        if now < self.next {
            return Repairs::default();
        }
        self.next = now + self.every;
        match self.ensure_now().await {
            Ok(r) => {
                if self.last_error.take().is_some() {
                    info!("iptables rules in place again");
                }
                r
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    warn!(error = %msg, "cannot put the iptables rules in place; retrying");
                    self.last_error = Some(msg);
                }
                Repairs::default()
            }
        }
    }

    async fn ensure_now(&mut self) -> Result<Repairs, FirewallError> {
        let mut repairs = Repairs::default();
        let cleanup = std::mem::replace(&mut self.cleanup, false);
        let nat = (
            self.masq.clone(),
            MASQ_CHAIN,
            "POSTROUTING",
            "nat",
            comment("masq"),
        );
        let filter = (
            self.forward.clone(),
            FORWARD_CHAIN,
            "FORWARD",
            "filter",
            comment("forward"),
        );
        for (want, chain, parent, table, c) in [nat, filter] {
            if want.is_none() && !cleanup {
                continue;
            }
            let jump = format!("{c} -j {chain}");
            let have = list(table, chain).await?;
            let parent_have = list(table, parent).await?;
            let lines = plan(want.as_ref(), chain, parent, &have, &parent_have, &jump);
            if lines.is_empty() {
                continue;
            }
            if self.written && want.is_some() {
                warn!(
                    table,
                    chain, "iptables rules changed under us; restoring them"
                );
            }
            restore(&restore_input(table, &lines)).await?;
            info!(
                table,
                chain,
                removed = want.is_none(),
                "iptables chain written"
            );
            repairs.chains += 1;
        }
        self.written = true;
        Ok(repairs)
    }
}

/// Environment variables that may hold a secret (the etcd password): the daemon's children
/// do not get them.
pub const SECRET_ENV: [&str; 2] = ["OVERLAYD_ETCD_PASSWORD", "FLANNELD_ETCD_PASSWORD"];

/// A command for one of the iptables tools, without [`SECRET_ENV`] in its environment.
fn iptables(cmd: &str) -> Command {
    let mut c = Command::new(cmd);
    for k in SECRET_ENV {
        c.env_remove(k);
    }
    c
}

/// `iptables -t table -S chain`: its lines, None when the chain does not exist.
async fn list(table: &str, chain: &str) -> Result<Listing, FirewallError> {
    let out = iptables("iptables")
        .args(["-w", "5", "-t", table, "-S", chain])
        .output()
        .await
        .map_err(|source| FirewallError::Spawn {
            cmd: "iptables",
            source,
        })?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("-P "))
            .map(str::to_string)
            .collect(),
    ))
}

async fn run(cmd: &'static str, args: &[&str]) -> Result<String, FirewallError> {
    let out = iptables(cmd)
        .args(args)
        .output()
        .await
        .map_err(|source| FirewallError::Spawn { cmd, source })?;
    if !out.status.success() {
        return Err(FirewallError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables-restore --noflush` with `input` on stdin.
async fn restore(input: &str) -> Result<(), FirewallError> {
    let cmd = "iptables-restore";
    let mut child = iptables(cmd)
        .args(["--noflush", "-w", "5"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn { cmd, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|source| FirewallError::Spawn { cmd, source })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| FirewallError::Spawn { cmd, source })?;
    if !out.status.success() {
        return Err(FirewallError::Failed {
            cmd,
            stderr: format!(
                "{} (input:\n{input})",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_gets_no_secret() {
        for tool in ["iptables", "iptables-restore"] {
            let c = iptables(tool);
            let removed: Vec<_> = c
                .as_std()
                .get_envs()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect();
            for k in SECRET_ENV {
                assert!(
                    removed.iter().any(|r| r == k),
                    "{tool}: {k} removed: {removed:?}"
                );
            }
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// The rules, exactly as `iptables -S` prints them (checked against a real iptables by
    /// tests/masq.rs, which would otherwise rewrite the chain at every check).
    #[test]
    fn masquerade_rules_are_flanneld_s() {
        let c = masq_chain(net("10.244.0.0/16"), net("10.244.7.0/24"), true);
        let want = [
            "-m mark --mark 0x4000/0x4000 -m comment --comment \"overlayd masq\" -j RETURN",
            "-s 10.244.7.0/24 -d 10.244.0.0/16 -m comment --comment \"overlayd masq\" -j RETURN",
            "-s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment \"overlayd masq\" -j RETURN",
            "! -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment \"overlayd masq\" -j RETURN",
            "-s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"overlayd masq\" -j MASQUERADE --random-fully",
            "! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"overlayd masq\" -j MASQUERADE --random-fully",
        ];
        assert_eq!(c.rules, want);
        assert_eq!(
            (c.table, c.name, c.parent),
            ("nat", "OVERLAYD-POSTRTG", "POSTROUTING")
        );
        assert_eq!(
            c.jump,
            "-m comment --comment \"overlayd masq\" -j OVERLAYD-POSTRTG"
        );
        let plain = masq_chain(net("10.244.0.0/16"), net("10.244.7.0/24"), false);
        assert!(plain.rules.iter().all(|r| !r.contains("random")));
        assert!(plain.rules[4].ends_with("-j MASQUERADE"));
    }

    #[test]
    fn forward_rules_accept_the_pod_network() {
        let c = forward_chain(net("10.244.0.0/16"), None);
        assert_eq!(
            c.rules,
            [
                "-s 10.244.0.0/16 -m comment --comment \"overlayd forward\" -j ACCEPT",
                "-d 10.244.0.0/16 -m comment --comment \"overlayd forward\" -j ACCEPT",
            ]
        );
        // With the tunnel-GSO TAP, what the kernel routes from it is accepted too (written
        // as `iptables -S` prints it: the interface match before the comment).
        let t = forward_chain(net("10.244.0.0/16"), Some("ovgso0"));
        assert_eq!(
            t.rules[2],
            "-i ovgso0 -m comment --comment \"overlayd tunnel GSO\" -j ACCEPT"
        );
        assert_eq!((c.table, c.parent), ("filter", "FORWARD"));
    }

    fn listing(chain: &Chain) -> Listing {
        Some(
            std::iter::once(format!("-N {}", chain.name))
                .chain(chain.rules.iter().map(|r| format!("-A {} {r}", chain.name)))
                .collect(),
        )
    }

    #[test]
    fn plan_repairs_only_what_differs() {
        let c = masq_chain(net("10.244.0.0/16"), net("10.244.7.0/24"), true);
        let jump = format!("-A POSTROUTING {}", c.jump);
        let other = "-A POSTROUTING -j KUBE-POSTROUTING".to_string();
        let p = |have: &Listing, parent: &Listing| {
            plan(Some(&c), c.name, c.parent, have, parent, &c.jump)
        };
        // In place: nothing.
        assert!(p(&listing(&c), &Some(vec![other.clone(), jump.clone()])).is_empty());
        // Nothing there: the chain, its rules, the jump.
        let fresh = p(&None, &Some(vec![other.clone()]));
        assert_eq!(fresh[0], ":OVERLAYD-POSTRTG - [0:0]");
        assert_eq!(fresh.len(), 1 + c.rules.len() + 1);
        assert_eq!(fresh.last().unwrap(), &jump);
        // A rule deleted by hand: the chain is rewritten whole, the jump left alone.
        let mut edited = listing(&c).unwrap();
        edited.remove(3);
        let fix = p(&Some(edited), &Some(vec![jump.clone()]));
        assert_eq!(fix.len(), 1 + c.rules.len());
        assert!(!fix.contains(&jump));
        // Only the jump missing.
        assert_eq!(
            p(&listing(&c), &Some(vec![other.clone()])),
            vec![jump.clone()]
        );
        // Jumps duplicated (e.g. by an older start): all but one deleted.
        let dup = p(
            &listing(&c),
            &Some(vec![jump.clone(), other, jump.clone(), jump.clone()]),
        );
        assert_eq!(dup, vec![format!("-D POSTROUTING {}", c.jump); 2]);
        // The subnet changed: the chain is rewritten for the new one.
        let moved = masq_chain(net("10.244.0.0/16"), net("10.244.9.0/24"), true);
        let fix = plan(
            Some(&moved),
            moved.name,
            moved.parent,
            &listing(&c),
            &Some(vec![jump.clone()]),
            &moved.jump,
        );
        assert!(fix.iter().any(|l| l.contains("10.244.9.0/24")));
        assert!(!fix.iter().any(|l| l.contains("10.244.7.0/24")));
    }

    #[test]
    fn plan_removes_a_disabled_chain() {
        let c = forward_chain(net("10.244.0.0/16"), None);
        let jump = format!("-A FORWARD {}", c.jump);
        let gone = plan(
            None,
            c.name,
            c.parent,
            &listing(&c),
            &Some(vec![jump.clone(), jump]),
            &c.jump,
        );
        assert_eq!(
            gone,
            [
                format!("-D FORWARD {}", c.jump),
                format!("-D FORWARD {}", c.jump),
                ":OVERLAYD-FWD - [0:0]".to_string(),
                "-X OVERLAYD-FWD".to_string(),
            ]
        );
        assert!(plan(None, c.name, c.parent, &None, &Some(vec![]), &c.jump).is_empty());
        assert_eq!(
            restore_input("filter", &["-X OVERLAYD-FWD".into()]),
            "*filter\n-X OVERLAYD-FWD\nCOMMIT\n"
        );
    }

    #[test]
    fn random_fully_from_the_version_line() {
        assert!(has_random_fully("iptables v1.8.9 (nf_tables)"));
        assert!(has_random_fully("iptables v1.6.2"));
        assert!(!has_random_fully("iptables v1.6.1"));
        assert!(!has_random_fully("iptables v1.4.21"));
        assert!(!has_random_fully("garbage"));
    }
}
