//! [`Capture`], a bounded tcpdump in a namespace: one line per frame, MACs included, killed on
//! drop.

use std::io;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::netns::Netns;
use super::process::{signal, wait_timeout};

/// A bounded tcpdump in a namespace: at most `max_frames` frames, at most `timeout`; one line
/// per frame (`-n -e -tt`: MACs included; decoded inner frames joined with " | "). Killed on
/// drop.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    what: String,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    stderr: Arc<std::sync::Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Capture {
    /// Starts `tcpdump -i IFACE -n -e -l -tt -c MAX FILTER` in `ns` under `timeout` and waits
    /// (≤ 5 s) until it is listening. `filter` is a pcap filter ("" = everything).
    pub fn start(
        ns: &Netns,
        iface: &str,
        filter: &str,
        max_frames: u32,
        timeout: Duration,
    ) -> Capture {
        use std::io::BufRead;
        let secs = timeout.as_secs().max(1).to_string();
        let mut cmd = ns.command("timeout");
        cmd.args([
            "-s", "INT", &secs, "tcpdump", "-i", iface, "-n", "-e", "-l", "-tt",
        ])
        .args(["-c", &max_frames.max(1).to_string()]);
        cmd.args(filter.split_whitespace());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tcpdump (installed?): {e}"));
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let l2 = Arc::clone(&lines);
        let e2 = Arc::clone(&stderr);
        let readers = vec![
            thread::spawn(move || {
                // With -tt every frame starts with "<epoch>.<usec>"; tcpdump prints what it
                // decodes inside (e.g. VXLAN's inner frame) on continuation lines: join them.
                for line in io::BufReader::new(out).lines().map_while(Result::ok) {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let starts_frame = line
                        .split_whitespace()
                        .next()
                        .is_some_and(|t| t.parse::<f64>().is_ok());
                    let mut v = l2.lock().expect("lines lock");
                    match v.last_mut() {
                        Some(last) if !starts_frame => {
                            last.push_str(" | ");
                            last.push_str(line.trim());
                        }
                        _ => v.push(line),
                    }
                }
            }),
            thread::spawn(move || {
                for line in io::BufReader::new(err).lines().map_while(Result::ok) {
                    let mut s = e2.lock().expect("stderr lock");
                    s.push_str(&line);
                    s.push('\n');
                }
            }),
        ];
        let cap = Capture {
            child: Some(child),
            what: format!("tcpdump -i {iface} {filter} in {}", ns.name()),
            lines,
            stderr,
            readers,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cap
            .stderr
            .lock()
            .expect("stderr lock")
            .contains("listening on")
        {
            if Instant::now() >= deadline {
                panic!(
                    "{}: not listening after 5 s; stderr: {}",
                    cap.what,
                    cap.stderr.lock().expect("stderr lock")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        cap
    }

    /// Lines captured so far.
    pub fn so_far(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// Waits `settle` (for frames in flight), stops tcpdump (SIGINT, bounded) and returns one
    /// line per captured frame.
    pub fn finish(mut self, settle: Duration) -> Vec<String> {
        thread::sleep(settle);
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                signal(child.id(), "INT");
            }
            if wait_timeout(&mut child, Duration::from_secs(3)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let lines = self.lines.lock().expect("lines lock").clone();
        eprintln!("capture [{}]: {} frame(s)", self.what, lines.len());
        for l in lines.iter().take(10) {
            eprintln!("    {l}");
        }
        lines
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
