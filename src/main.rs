//! The `overlayd` binary: flags, logging, the runtime, and one clear error on failure.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use overlayd::cli::{self, Args};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    cli::import_flannel_env();
    if let Err(e) = cli::load_config_file(&argv) {
        eprintln!("overlayd: {e}");
        return ExitCode::from(2);
    }
    if argv.get(1).is_some_and(|a| a == "status") {
        return status(&argv[1..]);
    }
    let args = Args::parse();
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
    let args = overlayd::status::StatusArgs::parse_from(argv);
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
