//! SHELL: the pair's shared key file (heartbeats, peer commands and flow replication are all
//! authenticated with it, through [`crate::auth`]). Side effects: reads one file.

use std::io;

/// Reads a shared key file, refusing one that others can read.
pub fn read_key(path: &std::path::Path) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} holds the pair's key and must be mode 0600",
                path.display()
            ),
        ));
    }
    let key = std::fs::read(path)?;
    if key.len() < 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: a key needs at least 16 bytes", path.display()),
        ));
    }
    Ok(key)
}
