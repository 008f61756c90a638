//! The fuzz targets' seed corpora (`fuzz/corpus/TARGET/NAME`) are the unit tests' own
//! fixtures: each test module that owns fixtures checks that the committed seed files are
//! still those bytes, and writes them when `SLB_WRITE_FUZZ_SEEDS=1` is set. A fixture that
//! changes without its seed fails the test that owns it.

use std::path::PathBuf;

fn path(target: &str, name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus"))
        .join(target)
        .join(name)
}

/// Whether `fuzz/corpus/target/name` holds `bytes` (after writing it, when asked to).
/// Returns a message naming the stale seed and how to refresh it, or `Ok`.
pub fn check(target: &str, name: &str, bytes: &[u8]) -> Result<(), String> {
    let p = path(target, name);
    if std::env::var_os("SLB_WRITE_FUZZ_SEEDS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(p.parent().expect("a corpus folder"))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    match std::fs::read(&p) {
        Ok(b) if b == bytes => Ok(()),
        _ => Err(format!(
            "fuzz seed {} is not the fixture it comes from: run the unit tests with \
             SLB_WRITE_FUZZ_SEEDS=1 and commit fuzz/corpus",
            p.display()
        )),
    }
}
