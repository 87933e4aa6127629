//! Configuration: one TOML file, parsed, merged with command-line flags, validated, typed.
//!
//! The pipeline, in order, one file per step:
//! 1. **parse** (`file.rs`): serde reads the file into `RawSettings`: unknown fields rejected,
//!    a field left out keeps its default, durations and sizes kept as written. A TOML syntax
//!    error or a serde error (unknown field, wrong type) stops here and is reported at
//!    `file:line:column`, with the field path when it can be found.
//! 2. **merge** (`overrides.rs`): `--listen`, `--upstream` and `--admin-listen` replace the
//!    file's values.
//! 3. **validate and convert** (`check.rs`): each field is checked and converted to its typed
//!    value in one pass; every [`Problem`] is collected, so one run of `keywarden check-config`
//!    shows them all, each named by its field path.
//! 4. **typed** (`settings.rs`): [`Settings`] is assembled only when there was no problem at
//!    all.
//!
//! This file runs the steps in order ([`Settings::load`], [`Settings::from_toml_str`]), holds
//! [`ConfigSource`] (what a reload reads again) and the built-in defaults, and re-exports what
//! the rest of the crate names. Sizes and durations are read in `units.rs`; a [`Problem`] and
//! the [`ConfigError`] that gathers them are in `problem.rs`.
//!
//! Units, never bare numbers (a bare number is an error saying a unit is required; `units.rs`):
//! - durations are humantime text: `"500ms"`, `"5s"`, `"1m"` (a minute), `"1h 30m"`;
//! - sizes are a whole number and a unit, case-insensitive: `B`, `KB`/`KiB`, `MB`/`MiB`,
//!   `GB`/`GiB`, where `KB` = `KiB` = 1024 bytes, as Redis reads `1kb`. A bare `k`, `m` or `g`
//!   is refused: Redis reads `1k` as 1000, so it would mean different things in the two files.
//!
//! Secrets (`upstream.password`, `requirepass_sha256`, `[[user]].password_sha256`) never appear
//! in `Debug` output or in a problem's message: a digest is as good as a weak password, and a
//! password is sometimes written where its digest belongs.
//!
//! The defaults are declared once, as the text a user would write, in `RawSettings::default`;
//! they go through the same checks as a file. `config/keywarden.toml` spells out the same
//! values and a test keeps the two equal.

mod check;
pub mod cli;
mod file;
pub(crate) mod live;
mod overrides;
mod problem;
mod settings;
#[cfg(test)]
mod tests;
mod units;

use std::path::Path;

use crate::config::check::{check_settings, Checker};
use crate::config::file::{toml_problem, RawSettings};

pub use overrides::Overrides;
pub use problem::{ConfigError, Problem};
pub use settings::{
    AdminSettings, ClientTls, EventSettings, HealthSettings, Limits, LocalStoreSettings, LogFormat,
    LogSettings, SentinelSettings, Settings, UpstreamSettings, UpstreamTls,
};

/// A config file and the command-line flags applied over it: what a reload reads again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub path: std::path::PathBuf,
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Reads, merges, validates and types the file again, with the same flags.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        Settings::load(&self.path, &self.overrides)
    }
}

impl Settings {
    /// Reads, merges, validates and types the config file at `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(origin.as_str(), format!("cannot read: {e}")))?;
        let mut settings = Settings::from_toml_str(&text, &origin, overrides)?;
        settings.source = Some(ConfigSource {
            path: path.to_owned(),
            overrides: overrides.clone(),
        });
        Ok(settings)
    }

    /// Same as [`Settings::load`] for text already in memory; `origin` names it in problems
    /// (usually the file's path). An empty text gives the defaults, plus the overrides.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        // toml accepts a byte-order mark; strip it here so spans count from what we index.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut raw: RawSettings = toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![toml_problem(text, origin, &e)],
        })?;
        raw.merge(overrides);
        let mut checker = Checker {
            problems: Vec::new(),
            overrides,
            table: "",
        };
        match check_settings(&mut checker, raw) {
            Some(settings) if checker.problems.is_empty() => Ok(settings),
            // Every field that failed to convert recorded a problem, so this is never empty.
            _ => Err(ConfigError {
                problems: checker.problems,
            }),
        }
    }
}

impl Default for Settings {
    /// The built-in defaults: what runs when no config file exists. They are declared once,
    /// as text, in `RawSettings::default`, and typed by the same pipeline as a file.
    fn default() -> Settings {
        Settings::from_toml_str("", "built-in defaults", &Overrides::default())
            .expect("the built-in defaults are valid (tested)")
    }
}

impl Default for UpstreamSettings {
    fn default() -> UpstreamSettings {
        Settings::default().upstream
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Settings::default().limits
    }
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        Settings::default().log
    }
}
