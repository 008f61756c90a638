//! `slb_conf.json`, from text to a checked model: [`raw`] is the serde schema, [`check`] turns
//! it into the typed model (`crate::core::model`, what the core works on; every error with its
//! field path), [`load`] reads it, [`parse`]
//! holds the value parsers slbctl and amgr share, and [`edit`] applies the changes slbctl
//! sends. Pure, but for reading the file.

mod announce;
pub mod check;
mod checker;
pub mod edit;
pub mod load;
pub mod parse;
mod placement;
pub mod raw;
mod services;

pub use crate::core::model::*;
pub use check::{ConfigError, FieldError};
pub use load::parse_raw;
pub use parse::{parse_server_address, valid_user};
pub use raw::*;
