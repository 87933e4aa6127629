//! What is wrong with a configuration: each problem with its place, and all of them together.

use std::fmt;

/// Everything wrong with a configuration (never empty), in the order of the example file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One thing wrong, and where: a field path such as `upstream.command_timeout`, or
/// `file:line:column` for a syntax or type error found while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub place: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

impl fmt::Display for ConfigError {
    /// One problem per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(super) fn one(place: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            problems: vec![Problem {
                place: place.into(),
                message: message.into(),
            }],
        }
    }
}
