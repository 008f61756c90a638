//! Reading `slb_conf.json`: from a string, or from a file (keeping the raw form that
//! `--show-config` reports and `--save-config` writes back). Side effects: `load` and
//! `load_raw` read one file.

use std::path::Path;

use super::{Config, ConfigError, RawConfig};

impl Config {
    /// Parses and validates a configuration held in a string.
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        Config::try_from(&parse_raw(text)?)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_raw(path).map(|(_, config)| config)
    }

    /// Reads and validates the file at `path`, keeping the raw form too (what `show_config`
    /// reports and `save_config` will write back).
    pub fn load_raw(path: &Path) -> Result<(RawConfig, Config), ConfigError> {
        let raw = parse_raw(&read(path)?)?;
        let config = Config::try_from(&raw)?;
        Ok((raw, config))
    }
}

/// The raw form of `text`, or the syntax error serde found.
pub fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}
