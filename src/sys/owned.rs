//! Files only we control: opened never through a symbolic link (`O_NOFOLLOW`), and accepted
//! only when they are regular files owned by this process's user that no one else may
//! write. The one check behind the instance lock file and the CNI plugin's saved state.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why a file was refused. Each message names the file and what would be accepted.
#[derive(Debug, thiserror::Error)]
pub enum OwnedError {
    #[error("{path} is a symbolic link, which is not followed: remove it (it must be a regular file that only we write)")]
    Link { path: String },
    #[error("{path} is not a regular file owned by us (uid {uid}, a {kind}; we are uid {me}): remove it, or use a directory only we write to")]
    Stranger {
        path: String,
        uid: u32,
        kind: &'static str,
        me: u32,
    },
    #[error("{path} may be written by other users (mode {mode:o}): it must not be group- or world-writable; remove it")]
    Writable { path: String, mode: u32 },
    #[error("cannot open {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Opens `path` with `options` (plus `O_NOFOLLOW`) and checks what was opened: a regular file
/// owned by our effective uid, not group- or world-writable.
pub fn open(path: &Path, options: &mut OpenOptions) -> Result<File, OwnedError> {
    let shown = || path.display().to_string();
    let file = options
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => OwnedError::Link { path: shown() },
            _ => OwnedError::Io {
                path: shown(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| OwnedError::Io {
        path: shown(),
        source,
    })?;
    let me = super::lock::effective_uid();
    if !meta.is_file() || meta.uid() != me {
        return Err(OwnedError::Stranger {
            path: shown(),
            uid: meta.uid(),
            kind: if meta.is_file() {
                "regular file"
            } else {
                "special file"
            },
            me,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(OwnedError::Writable {
            path: shown(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn links_strangers_and_shared_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("overlayd-owned-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let read = || {
            let mut o = OpenOptions::new();
            o.read(true);
            o
        };
        let ours = dir.join("ours");
        std::fs::write(&ours, "x").unwrap();
        std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(open(&ours, &mut read()).is_ok());
        let link = dir.join("link");
        std::os::unix::fs::symlink(&ours, &link).unwrap();
        assert!(matches!(
            open(&link, &mut read()),
            Err(OwnedError::Link { .. })
        ));
        std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = open(&ours, &mut read()).unwrap_err();
        assert!(e.to_string().contains("mode 664"), "{e}");
        std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o600)).unwrap();
        if super::super::lock::effective_uid() == 0 {
            std::os::unix::fs::chown(&ours, Some(65534), None).unwrap();
            let e = open(&ours, &mut read()).unwrap_err();
            assert!(matches!(e, OwnedError::Stranger { uid: 65534, .. }), "{e}");
        } else {
            println!("skipped the foreign-owner case: not root");
        }
        assert!(matches!(
            open(&dir.join("absent"), &mut read()),
            Err(OwnedError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
