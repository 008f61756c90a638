//! Several slb nodes on one host (a lab, two balancers side by side): an instance name puts a
//! node's files one folder deeper, `/etc/slb/NAME/amgr.json`, `/run/slb/NAME/slbd.sock`, as
//! `slb-node-config --instance NAME` writes them, so `--instance NAME` on a command finds them
//! all. Pure.

use std::path::{Path, PathBuf};

/// `default` for `instance`: the same file in a folder named after the instance.
pub fn path(default: &str, instance: Option<&str>) -> PathBuf {
    let p = Path::new(default);
    match (instance, p.parent(), p.file_name()) {
        (Some(name), Some(dir), Some(file)) => dir.join(name).join(file),
        _ => p.to_path_buf(),
    }
}

/// Whether `name` may name an instance (it becomes a path component).
pub fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_one_folder_deeper() {
        assert_eq!(
            path("/run/slb/slbd.sock", Some("lb2")),
            PathBuf::from("/run/slb/lb2/slbd.sock")
        );
        assert_eq!(
            path("/etc/slb/amgr.json", None),
            PathBuf::from("/etc/slb/amgr.json")
        );
        assert!(valid("lb-2_a") && !valid("../x") && !valid("") && !valid("A"));
    }
}
