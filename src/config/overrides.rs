//! Step 2 of the pipeline: command-line flags, each replacing the file's value before the
//! checks, so that a value given as a flag is checked as the file's would be.

use crate::config::file::{RawSettings, Secret};

/// Values from command-line flags; each one given replaces the file's value before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen`: replaces `listen`.
    pub listen: Option<String>,
    /// `--upstream`: replaces `upstream.address`.
    pub upstream: Option<String>,
    /// `--admin-listen`: replaces `admin.listen`.
    pub admin_listen: Option<String>,
    /// `--requirepass-sha256` or `KEYWARDEN_REQUIREPASS_SHA256`: replaces
    /// `requirepass_sha256` (a container's password, without a config file of its own).
    pub requirepass_sha256: Option<String>,
}

impl RawSettings {
    pub(super) fn merge(&mut self, overrides: &Overrides) {
        if let Some(listen) = &overrides.listen {
            self.listen = listen.clone();
        }
        if let Some(upstream) = &overrides.upstream {
            self.upstream.address = Some(upstream.clone());
        }
        if let Some(admin) = &overrides.admin_listen {
            self.admin.listen = admin.clone();
        }
        if let Some(digest) = &overrides.requirepass_sha256 {
            self.requirepass_sha256 = Secret(digest.clone());
        }
    }
}
