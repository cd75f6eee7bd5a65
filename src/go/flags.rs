//! flanneld's command-line syntax (Go's `flag` package) turned into overlayd's (clap's), before
//! clap sees it, so that unit files and manifests written for flanneld work unchanged.
//!
//! Go accepts `-flag`, `--flag`, `-flag=value`, `-flag value` (not for booleans) and, for
//! booleans, `-flag=true|false` (any of `1 0 t f T F true false TRUE FALSE True False`).
//! [`normalize`] rewrites every such word into clap's `--flag`/`--flag=value` or `-v value`,
//! canonicalises boolean values, and leaves today's clap spellings as they are. Flags that
//! flanneld has and overlayd does not get one clear error naming what to use instead. Pure:
//! it only looks at the words and at the clap command's flag table.

use clap::{ArgAction, Command};

/// Why a command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// `-flag=value` where `flag` is a boolean and `value` is not a Go boolean.
    #[error("{flag}={value}: not a boolean; use {flag}=true or {flag}=false")]
    BadBool { flag: String, value: String },
    /// One of flanneld's flags that overlayd does not implement.
    #[error("{flag} is a flanneld flag that overlayd does not support: {why}")]
    Unsupported { flag: String, why: &'static str },
    /// Not a flag of overlayd's, nor of flanneld's.
    #[error("unknown flag {flag}; `overlayd --help` lists every flag")]
    Unknown { flag: String },
}

/// flanneld flags (v0.28) without an overlayd counterpart, and what to do instead.
pub const FLANNEL_ONLY: &[(&str, &str)] = &[
    ("kube-subnet-mgr", "overlayd takes subnet leases from etcd only (--etcd-endpoints), as flanneld does without it"),
    ("kube-api-url", "overlayd does not talk to the Kubernetes API; leases live in etcd (--etcd-endpoints)"),
    ("kubeconfig-file", "overlayd does not talk to the Kubernetes API; leases live in etcd (--etcd-endpoints)"),
    ("kube-annotation-prefix", "overlayd does not talk to the Kubernetes API; leases live in etcd (--etcd-endpoints)"),
    ("set-node-network-unavailable", "overlayd does not talk to the Kubernetes API"),
    ("net-config-path", "the network config lives in etcd at <prefix>/config; `overlayd init-network --network CIDR` or --network creates it"),
    ("vmodule", "use -v/--log-level"),
    ("log_backtrace_at", "use RUST_BACKTRACE=1"),
];

/// Whether a clap argument is a switch (takes no value, or only an optional `=bool`).
fn is_bool(arg: &clap::Arg) -> bool {
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Help | ArgAction::Version => true,
        ArgAction::Set => arg.get_num_args().is_some_and(|n| n.min_values() == 0),
        _ => false,
    }
}

/// Go's `strconv.ParseBool`, as `true`/`false`.
pub fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Rewrites `argv` (program name first) from Go flag syntax into `cmd`'s clap syntax.
pub fn normalize(argv: &[String], cmd: &Command) -> Result<Vec<String>, FlagError> {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut out: Vec<String> = argv.iter().take(1).cloned().collect();
    let mut words = argv.iter().skip(1);
    while let Some(w) = words.next() {
        if w == "--" {
            out.push(w.clone());
            out.extend(words.cloned());
            break;
        }
        let Some(body) = w
            .strip_prefix("--")
            .or_else(|| w.strip_prefix('-'))
            .filter(|b| !b.is_empty() && !b.starts_with('-'))
        else {
            out.push(w.clone());
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let long = cmd.get_arguments().find(|a| {
            a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|al| al.contains(&name))
        });
        let short = (name.chars().count() == 1)
            .then(|| name.chars().next())
            .flatten()
            .and_then(|c| cmd.get_arguments().find(|a| a.get_short() == Some(c)));
        // A single-dash word that is not a long flag is clap's short syntax (e.g. `-v 2`):
        // left alone unless its name is one of the short flags.
        if let Some(arg) = long.or(short) {
            let flag = match (long, arg.get_long()) {
                (Some(_), Some(l)) => format!("--{l}"),
                _ => format!("-{}", arg.get_short().expect("found by its short name")),
            };
            match (is_bool(arg), value) {
                (true, None) => out.push(flag),
                (true, Some(v)) => {
                    let b = go_bool(v).ok_or_else(|| FlagError::BadBool {
                        flag: format!("-{name}"),
                        value: v.to_string(),
                    })?;
                    out.push(format!("{flag}={b}"));
                }
                (false, Some(v)) if flag.starts_with("--") => out.push(format!("{flag}={v}")),
                (false, Some(v)) => {
                    out.push(flag);
                    out.push(v.to_string());
                }
                (false, None) => {
                    // Go: the next word is the value, whatever it looks like.
                    match words.next() {
                        Some(v) if flag.starts_with("--") => out.push(format!("{flag}={v}")),
                        Some(v) => {
                            out.push(flag);
                            out.push(v.clone());
                        }
                        None => out.push(flag),
                    }
                }
            }
            continue;
        }
        if let Some((_, why)) = FLANNEL_ONLY.iter().find(|(f, _)| *f == name) {
            return Err(FlagError::Unsupported {
                flag: format!("--{name}"),
                why,
            });
        }
        if w.starts_with("--") || name.chars().count() > 1 && w.contains('=') {
            return Err(FlagError::Unknown {
                flag: format!("-{}", body.split('=').next().unwrap_or(body)),
            });
        }
        if name.chars().count() > 1 {
            // `-foo`: Go's spelling of an unknown long flag, not a cluster of short ones.
            return Err(FlagError::Unknown {
                flag: w.to_string(),
            });
        }
        out.push(w.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(version)]
    struct T {
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = clap::value_parser!(bool), action = ArgAction::Set)]
        masq: bool,
        #[arg(short = 'v', long = "log-level", default_value = "info")]
        level: String,
        #[arg(long)]
        quiet: bool,
    }

    fn norm(words: &[&str]) -> Result<Vec<String>, FlagError> {
        let argv: Vec<String> = std::iter::once("t")
            .chain(words.iter().copied())
            .map(String::from)
            .collect();
        normalize(&argv, &<T as clap::CommandFactory>::command())
            .map(|v| v.into_iter().skip(1).collect())
    }

    #[test]
    fn go_spellings_become_clap_spellings() {
        let ok = |w: &[&str], want: &[&str]| assert_eq!(norm(w).unwrap(), want, "{w:?}");
        ok(&["-endpoints=a,b"], &["--endpoints=a,b"]);
        ok(&["--endpoints=a,b"], &["--endpoints=a,b"]);
        ok(&["-endpoints", "a,b"], &["--endpoints=a,b"]);
        ok(&["--endpoints", "a,b"], &["--endpoints=a,b"]);
        ok(&["-endpoints", "-x"], &["--endpoints=-x"]);
        ok(&["-masq"], &["--masq"]);
        ok(&["--masq"], &["--masq"]);
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            ok(&[&format!("-masq={t}")], &["--masq=true"]);
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            ok(&[&format!("--masq={f}")], &["--masq=false"]);
        }
        ok(&["-quiet=true"], &["--quiet=true"]);
        ok(&["-v=2"], &["-v", "2"]);
        ok(&["--v=2"], &["-v", "2"]);
        ok(&["-v", "2"], &["-v", "2"]);
        ok(&["-log-level=debug"], &["--log-level=debug"]);
        ok(&["-help"], &["--help"]);
        ok(&["-version"], &["--version"]);
        ok(&["--", "-masq=x"], &["--", "-masq=x"]);
        ok(&["stray"], &["stray"]);
    }

    #[test]
    fn bad_words_get_one_clear_error() {
        assert_eq!(
            norm(&["-masq=yes please"]).unwrap_err().to_string(),
            "-masq=yes please: not a boolean; use -masq=true or -masq=false"
        );
        let e = norm(&["-kube-subnet-mgr"]).unwrap_err().to_string();
        assert!(e.contains("--kube-subnet-mgr") && e.contains("etcd"), "{e}");
        let e = norm(&["--kube-subnet-mgr=true"]).unwrap_err().to_string();
        assert!(e.contains("--kube-subnet-mgr"), "{e}");
        assert_eq!(
            norm(&["-bogus=1"]).unwrap_err(),
            FlagError::Unknown {
                flag: "-bogus".into()
            }
        );
        assert_eq!(
            norm(&["--bogus"]).unwrap_err(),
            FlagError::Unknown {
                flag: "-bogus".into()
            }
        );
        assert_eq!(
            norm(&["-bogus"]).unwrap_err(),
            FlagError::Unknown {
                flag: "-bogus".into()
            }
        );
    }

    #[test]
    fn normalized_lines_parse_as_clap_would() {
        let t = T::try_parse_from(
            std::iter::once("t".to_string())
                .chain(norm(&["-endpoints=a,b", "-masq=false", "-v=3"]).unwrap()),
        )
        .unwrap();
        assert_eq!(t.endpoints, ["a", "b"]);
        assert!(!t.masq);
        assert_eq!(t.level, "3");
        let t = T::try_parse_from(["t", "--masq"]).unwrap();
        assert!(t.masq);
    }
}
