//! Files that survive a crash: a whole file replaced atomically, and the directory
//! entry that names it made durable. Every small state file of a node (certificates
//! and keys, the Raft vote, the membership state, quickstart's credentials) is written
//! through [`write_atomic`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Who may read a file written by [`write_atomic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Mode 0644: certificates, configuration without secrets.
    Public,
    /// Mode 0600: keys, passwords, anything an attacker could use.
    Private,
}

/// Replace `path` with `contents`: once this returns `Ok`, a crash leaves either the
/// old file or the new one, never a mix, and the new one is on disk. The data goes to
/// a temporary file beside it (`.<name>.tmp`), is fsynced, renamed over `path`, and the
/// parent directory is fsynced so that the rename itself is durable. On an error the
/// temporary file is removed and `path` is unchanged.
pub fn write_atomic(path: &Path, contents: &[u8], access: Access) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(match access {
            Access::Public => 0o644,
            Access::Private => 0o600,
        });
    }
    #[cfg(not(unix))]
    let _ = access;
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(parent_of(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Sync a directory, so that the files created, renamed or removed in it stay so.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.toml");
        write_atomic(&p, b"one", Access::Public).unwrap();
        write_atomic(&p, b"two", Access::Private).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the file itself is left");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("f");
        assert!(write_atomic(&p, b"x", Access::Public).is_err());
        assert!(write_atomic(Path::new("/"), b"x", Access::Public).is_err());
    }
}
