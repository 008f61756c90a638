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

/// The raw form of `text`, or the error serde found, led by the field path it is at
/// (`services[0].servers[1].weight: invalid value: integer `-1`, expected u64 at line 19
/// column 21`) as validation errors are.
pub fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Syntax(match path.as_str() {
            "" | "." => inner.to_string(),
            _ => format!("{path}: {inner}"),
        })
    })?;
    // Trailing garbage after the object.
    de.end().map_err(|e| ConfigError::Syntax(e.to_string()))?;
    Ok(raw)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}
