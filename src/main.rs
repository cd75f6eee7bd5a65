//! The `overlayd` binary: flags, logging, the runtime, and one clear error on failure.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use overlayd::cli::{self, Args};
use overlayd::go::flags as goflags;

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).is_some_and(|a| a == "status") {
        cli::import_flannel_env();
        return match goflags::normalize(&raw[1..], &overlayd::status::StatusArgs::command()) {
            Ok(argv) => status(&argv),
            Err(e) => {
                eprintln!("overlayd status: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(sub @ ("init-network" | "install-cni")) = raw.get(1).map(String::as_str) {
        cli::import_flannel_env();
        return setup(sub, &raw[1..]);
    }
    // flanneld's Go flag syntax (-iface=eth0, --ip-masq=false) becomes clap's.
    let argv = match goflags::normalize(&raw, &Args::command()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("overlayd: {e}");
            return ExitCode::from(2);
        }
    };
    cli::import_flannel_env();
    if let Err(e) = cli::load_config_file(&argv) {
        eprintln!("overlayd: {e}");
        return ExitCode::from(2);
    }
    let args = cli::parse(&argv, |a: &mut Args| &mut a.etcd).unwrap_or_else(|e| e.exit());
    // Our own events at the chosen level; the libraries' (tonic, h2, netlink) at warn.
    let filter = tracing_subscriber::EnvFilter::new(format!("warn,overlayd={}", args.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match args.log_format {
        cli::LogFormat::Json => builder.json().init(),
        cli::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("overlayd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(overlayd::daemon::run(args));
    // Do not wait for blocking helper threads (a DNS lookup stuck on an unreachable
    // resolver, say): the stop must not depend on them.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlayd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `overlayd status`: one table, or one error line.
fn status(argv: &[String]) -> ExitCode {
    use overlayd::status::StatusArgs;
    let args = cli::parse(argv, |a: &mut StatusArgs| &mut a.etcd).unwrap_or_else(|e| e.exit());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("overlayd status: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(overlayd::status::run(args)) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("overlayd status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `overlayd init-network` and `overlayd install-cni`: one line of what was done, or one error.
fn setup(sub: &str, argv: &[String]) -> ExitCode {
    use overlayd::setup::{InitNetworkArgs, InstallCniArgs};
    let cmd = if sub == "init-network" {
        InitNetworkArgs::command()
    } else {
        InstallCniArgs::command()
    };
    let argv = match goflags::normalize(argv, &cmd) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("overlayd {sub}: {e}");
            return ExitCode::from(2);
        }
    };
    let res = if sub == "init-network" {
        let args =
            cli::parse(&argv, |a: &mut InitNetworkArgs| &mut a.etcd).unwrap_or_else(|e| e.exit());
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(overlayd::setup::init_network(args)),
            Err(e) => {
                eprintln!("overlayd {sub}: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        overlayd::setup::install_cni(&InstallCniArgs::parse_from(&argv))
    };
    match res {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("overlayd {sub}: {e}");
            ExitCode::FAILURE
        }
    }
}
