//! `overlay-cni`: the CNI plugin for overlayd (flannel's CNI plugin, compatible config).
//! All logic lives in [`overlayd::cni`]; this reads stdin, runs it and writes the outcome.

#![forbid(unsafe_code)]

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("overlay-cni: cannot read stdin: {e}");
    }
    let outcome = overlayd::cni::run(|k| std::env::var(k).ok(), &stdin);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&outcome.stdout);
    let _ = out.flush();
    std::process::exit(outcome.code);
}
