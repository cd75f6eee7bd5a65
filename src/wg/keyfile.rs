//! The node's WireGuard private key, kept in a file as flanneld keeps it: `/run/flannel/wgkey`
//! (`WIREGUARD_KEY_FILE` overrides), the key in base64 as `wg genkey` prints it, created
//! with mode 0600 when absent and read back on every start, so that the node's public key
//! (in its lease, and in every peer's configuration) survives restarts.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use boringtun::x25519::StaticSecret;

use crate::control::lease::{decode_key, encode_key};

/// flanneld's default key file.
pub const DEFAULT_PATH: &str = "/run/flannel/wgkey";

/// The key file to use: `WIREGUARD_KEY_FILE` when set (and not empty), else flanneld's.
pub fn path_from_env() -> PathBuf {
    std::env::var_os("WIREGUARD_KEY_FILE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from)
}

/// Why the key file could not be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the WireGuard key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create the WireGuard key file {path}: {source} (set WIREGUARD_KEY_FILE to a writable path)")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("the WireGuard key file {path} does not hold a key: expected 32 bytes in base64, as `wg genkey` prints them; remove it to have a new key made")]
    Invalid { path: String },
}

/// The private key in `path`: read when the file exists, else made and written (0600,
/// its directory created), as flanneld does.
pub fn load_or_create(path: &Path) -> Result<StaticSecret, KeyFileError> {
    let name = || path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => decode_key(&text)
            .map(StaticSecret::from)
            .ok_or_else(|| KeyFileError::Invalid { path: name() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // rand's thread generator: a CSPRNG seeded from the OS.
            let key = StaticSecret::from(rand::random::<[u8; 32]>());
            create(path, &encode_key(&key.to_bytes())).map_err(|source| KeyFileError::Create {
                path: name(),
                source,
            })?;
            Ok(key)
        }
        Err(source) => Err(KeyFileError::Read {
            path: name(),
            source,
        }),
    }
}

fn create(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The umask may not take bits away from 0600 that matter, but make it exact.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("overlayd-wgkey-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn created_0600_then_kept() {
        let dir = scratch("keep");
        let path = dir.join("sub/wgkey");
        let k1 = load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 44, "{text:?}");
        assert_eq!(decode_key(&text), Some(k1.to_bytes()));
        let k2 = load_or_create(&path).unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        // A file `wg genkey` wrote (with its newline) reads the same.
        std::fs::write(&path, format!("{text}\n")).unwrap();
        assert_eq!(load_or_create(&path).unwrap().to_bytes(), k1.to_bytes());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_without_a_key_is_refused_and_left_alone() {
        let dir = scratch("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wgkey");
        std::fs::write(&path, "not a key").unwrap();
        let e = load_or_create(&path).err().unwrap().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("does not hold a key"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
        let e = load_or_create(&dir).err().unwrap().to_string();
        assert!(e.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn env_overrides_the_path() {
        // nextest runs each test in its own process: the variable is ours alone.
        std::env::remove_var("WIREGUARD_KEY_FILE");
        assert_eq!(path_from_env(), PathBuf::from(DEFAULT_PATH));
        std::env::set_var("WIREGUARD_KEY_FILE", "/tmp/x/wgkey");
        assert_eq!(path_from_env(), PathBuf::from("/tmp/x/wgkey"));
        std::env::remove_var("WIREGUARD_KEY_FILE");
    }
}
