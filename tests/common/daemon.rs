//! [`Overlayd`], the daemon under test as a process in a namespace: its usual arguments
//! ([`overlayd_args`], [`overlayd_l2_args`]), readiness through its subnet.env, stop, kill and
//! restart, its log, and its Prometheus metrics ([`scrape_metrics`], [`metric_value`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use overlayd::sys::netns::run_in_netns;

use super::etcd::{Etcd, ETCD_PREFIX};
use super::l2::L2_METRICS_PORT;
use super::netns::Netns;
use super::process::{signal, stop_child, tail, wait_timeout, TempDir};

/// The overlay network the tests use.
pub const OVERLAY_NETWORK: &str = "10.244.0.0/16";

/// Parses a subnet.env file into its `KEY=value` pairs.
pub fn read_subnet_env(path: &Path) -> Option<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

/// Waits until `subnet_file` exists with a `FLANNEL_SUBNET`, returns it (e.g. `10.244.37.1/24`).
pub fn wait_ready(subnet_file: &Path, timeout: Duration) -> Option<String> {
    wait_ready_since(subnet_file, SystemTime::UNIX_EPOCH, timeout)
}

/// Like [`wait_ready`], but only a file (re)written at or after `since` counts.
pub fn wait_ready_since(
    subnet_file: &Path,
    since: SystemTime,
    timeout: Duration,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let fresh = fs::metadata(subnet_file)
            .and_then(|m| m.modified())
            .map(|t| t >= since)
            .unwrap_or(false);
        if fresh {
            if let Some(s) =
                read_subnet_env(subnet_file).and_then(|m| m.get("FLANNEL_SUBNET").cloned())
            {
                return Some(s);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `FLANNEL_SUBNET` (`10.244.37.1/24`) → the subnet `10.244.37.0/24`.
pub fn subnet_of(flannel_subnet: &str) -> Ipv4Net {
    flannel_subnet
        .parse::<Ipv4Net>()
        .unwrap_or_else(|e| panic!("bad FLANNEL_SUBNET {flannel_subnet:?}: {e}"))
        .trunc()
}

/// `FLANNEL_SUBNET` (`10.244.37.1/24`) → the TUN address `10.244.37.0`.
pub fn overlay_ip_of(flannel_subnet: &str) -> Ipv4Addr {
    subnet_of(flannel_subnet).network()
}

/// The usual overlayd arguments for a test host (the subnet file is added by [`Overlayd::spawn`]).
pub fn overlayd_args(backend: &str, etcd: &Etcd) -> Vec<String> {
    [
        "--backend",
        backend,
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--etcd-prefix",
        ETCD_PREFIX,
        "--iface",
        "eth0",
        "--network",
        OVERLAY_NETWORK,
        "--subnet-len",
        "24",
        "-v",
        "debug",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// [`overlayd_args`] (L3 vxlan, as usual) plus a metrics listener on
/// 127.0.0.1:[`L2_METRICS_PORT`] and the given L2 flags, e.g. `&["--l2", "net@br-l2"]`.
pub fn overlayd_l2_args(etcd: &Etcd, l2_flags: &[&str]) -> Vec<String> {
    let mut a = overlayd_args("vxlan", etcd);
    a.push("--metrics-addr".into());
    a.push(format!("127.0.0.1:{L2_METRICS_PORT}"));
    a.extend(l2_flags.iter().map(|s| s.to_string()));
    a
}

/// An overlayd process in a namespace; its output goes to a log file. Killed on drop (after a
/// SIGTERM grace period); the log tail is printed if the test is panicking.
#[derive(Debug)]
pub struct Overlayd {
    child: Option<Child>,
    ns: String,
    /// Command words put before the binary (e.g. `setpriv ...` to drop capabilities).
    wrapper: Vec<String>,
    args: Vec<String>,
    started: SystemTime,
    subnet_file: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Overlayd {
    /// Path of the binary under test.
    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_overlayd")
    }

    /// Starts overlayd in `ns` with `args`; adds `--subnet-file <tmp>/subnet.env` unless given.
    /// Like [`Overlayd::spawn`], with `wrapper` words run in front of the binary.
    pub fn spawn_wrapped<S: AsRef<str>>(
        ns: &Netns,
        wrapper: &[&str],
        args: impl IntoIterator<Item = S>,
    ) -> Overlayd {
        Self::spawn_inner(ns, wrapper, args)
    }

    pub fn spawn<S: AsRef<str>>(ns: &Netns, args: impl IntoIterator<Item = S>) -> Overlayd {
        Self::spawn_inner(ns, &[], args)
    }

    fn spawn_inner<S: AsRef<str>>(
        ns: &Netns,
        wrapper: &[&str],
        args: impl IntoIterator<Item = S>,
    ) -> Overlayd {
        let mut args: Vec<String> = args.into_iter().map(|s| s.as_ref().to_owned()).collect();
        let dir = TempDir::new("overlayd");
        let subnet_file = match args.iter().position(|a| a == "--subnet-file") {
            Some(i) => PathBuf::from(args.get(i + 1).expect("--subnet-file needs a value")),
            None => {
                let p = dir.path().join("subnet.env");
                args.push("--subnet-file".into());
                args.push(p.display().to_string());
                p
            }
        };
        // The instance lock goes into the test's own directory, not the host's /run.
        if !args.iter().any(|a| a == "--run-dir") {
            args.push("--run-dir".into());
            args.push(dir.path().join("run").display().to_string());
        }
        let mut d = Overlayd {
            child: None,
            ns: ns.name().to_owned(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            args,
            started: SystemTime::now(),
            subnet_file,
            log: dir.path().join("overlayd.log"),
            dir,
        };
        d.launch();
        d
    }

    fn launch(&mut self) {
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open overlayd log");
        let _ = writeln!(log, "==== {} {}", Self::bin(), self.args.join(" "));
        self.started = SystemTime::now();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(&self.wrapper)
            .arg(Self::bin())
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", Self::bin()));
        self.child = Some(child);
    }

    /// Waits until the subnet file is written by this run; returns `FLANNEL_SUBNET`.
    /// Panics (with the log tail) on timeout or if the process exits first.
    pub fn wait_ready(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) =
                wait_ready_since(&self.subnet_file, self.started, Duration::from_millis(100))
            {
                return s;
            }
            if let Some(st) = self.try_wait() {
                panic!(
                    "overlayd in {} exited before ready ({st}); log:\n{}",
                    self.ns,
                    tail(&self.log, 40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "overlayd in {} not ready after {timeout:?}; log:\n{}",
                    self.ns,
                    tail(&self.log, 40)
                );
            }
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or None (still
    /// running; it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pid (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait up to `timeout`; returns the exit status, or `None` if it had to be
    /// SIGKILLed (i.e. it did not exit cleanly in time).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        signal(child.id(), "TERM");
        let st = wait_timeout(&mut child, timeout);
        if st.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        st
    }

    /// SIGKILL (a crash, as far as the daemon is concerned).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (SIGTERM, 10 s grace) and starts again with the same arguments and subnet file.
    pub fn restart(&mut self) {
        self.terminate(Duration::from_secs(10));
        self.launch();
    }

    /// The subnet file this instance writes.
    pub fn subnet_file(&self) -> &Path {
        &self.subnet_file
    }

    /// The parsed subnet file.
    pub fn subnet_env(&self) -> Option<BTreeMap<String, String>> {
        read_subnet_env(&self.subnet_file)
    }

    /// Path of the log file (stdout + stderr of every run).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Temp dir of this instance (for extra files the test wants next to the log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Overlayd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- overlayd log tail ({}) ----\n{}\n---- end ----",
                self.ns,
                tail(&self.log, 60)
            );
        }
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(3));
        }
    }
}

// Metrics

/// GET /metrics at `addr` from inside namespace `ns` (bounded: 2 s connect, 5 s read).
pub fn scrape_metrics(ns: &str, addr: SocketAddr) -> Result<String, String> {
    run_in_netns(ns, move || -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
    .map_err(|e| format!("enter netns {ns}: {e}"))?
    .map_err(|e| format!("scrape {addr} in {ns}: {e}"))
}

/// Sum of the series `name` whose label set contains every one of `labels` (e.g.
/// `&["network=\"a\"", "kind=\"flood\""]`) in Prometheus text `text`; 0 when absent.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let base = series.split('{').next().unwrap_or("");
            base == name && labels.iter().all(|lab| series.contains(lab))
        })
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

impl Overlayd {
    /// The `--metrics-addr` it was started with, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let i = self.args.iter().position(|a| a == "--metrics-addr")?;
        self.args.get(i + 1)?.parse().ok()
    }

    /// Its /metrics text (panics if it has no `--metrics-addr` or the scrape fails).
    pub fn scrape(&self) -> String {
        let addr = self
            .metrics_addr()
            .expect("overlayd started without --metrics-addr");
        scrape_metrics(&self.ns, addr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One metric from [`Overlayd::scrape`], see [`metric_value`].
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_value(&self.scrape(), name, labels)
    }
}
