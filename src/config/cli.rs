//! The command line: `keywarden [--config FILE] [--listen ADDR] [--upstream ADDR]
//! [--admin-listen ADDR]` runs the proxy; `keywarden check-config FILE` validates a file and
//! exits.
//!
//! `main` stays a thin shell: parse [`Cli`], call [`Cli::into_command`], then either run with
//! the settings or print what [`check_config`] returns and exit with its code.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Overrides, Settings};

/// Where `keywarden` looks for its config when `--config` is not given, relative to the
/// working directory. If nothing is there, the built-in defaults are used.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "config/keywarden.toml";

/// A Redis-protocol proxy that decides, per keyspace, what happens when the upstream is
/// unavailable.
#[derive(Debug, Parser)]
#[command(name = "keywarden", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Config file [default: config/keywarden.toml, or built-in defaults if it does not exist]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to accept clients on (IP:port); replaces `listen` from the file
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Upstream Redis (host:port); replaces `upstream.address` from the file
    #[arg(long, value_name = "ADDR")]
    pub upstream: Option<String>,
    /// Admin HTTP listener (IP:port); replaces `admin.listen` from the file
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// SHA-256 of the default user's password (64 hex digits); replaces `requirepass_sha256`
    /// from the file
    #[arg(
        long,
        value_name = "HEX",
        env = "KEYWARDEN_REQUIREPASS_SHA256",
        hide_env_values = true
    )]
    pub requirepass_sha256: Option<String>,
    #[command(subcommand)]
    pub action: Option<CliAction>,
}

#[derive(Debug, Subcommand)]
pub enum CliAction {
    /// Validate a config file: print each problem with its place and exit 1, or print
    /// "FILE: ok" and exit 0
    CheckConfig {
        /// The config file to check
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// What `main` should do.
// Made once at startup and consumed at once: boxing `Settings` would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CliCommand {
    /// Run the proxy with these settings (file, flags and defaults already merged and checked).
    Run { settings: Settings },
    /// Print what [`check_config`] returns for this file and exit with its code.
    CheckConfig { path: PathBuf },
}

impl Cli {
    /// Resolves the command line into what to do, loading the settings for a run.
    /// `Err` holds the text to print (on stderr) and the process exit code.
    pub fn into_command(self) -> Result<CliCommand, (String, i32)> {
        self.into_command_with_default(Path::new(DEFAULT_CONFIG_PATH))
    }

    fn into_command_with_default(self, default_path: &Path) -> Result<CliCommand, (String, i32)> {
        if let Some(CliAction::CheckConfig { file }) = self.action {
            return Ok(CliCommand::CheckConfig { path: file });
        }
        let overrides = Overrides {
            listen: self.listen,
            upstream: self.upstream,
            admin_listen: self.admin_listen,
            requirepass_sha256: self.requirepass_sha256,
        };
        let (origin, loaded) = match self.config {
            // An explicit path must exist: a typo must not silently run on defaults.
            Some(path) => (
                path.display().to_string(),
                Settings::load(&path, &overrides),
            ),
            None => match default_path.try_exists() {
                Ok(false) => {
                    let origin = "built-in defaults and flags".to_owned();
                    let loaded = Settings::from_toml_str("", &origin, &overrides);
                    (origin, loaded)
                }
                // Present, or unknown (permissions): let loading report what is wrong.
                _ => (
                    default_path.display().to_string(),
                    Settings::load(default_path, &overrides),
                ),
            },
        };
        match loaded {
            Ok(settings) => Ok(CliCommand::Run { settings }),
            Err(error) => Err((report(&origin, &error), 1)),
        }
    }
}

/// Validates the file at `path` (without flags). Returns the text to print and the exit
/// code: `"FILE: ok"` and 0, or a count line followed by each problem on its own line
/// (`place: message`) and 1. The text has no trailing newline.
pub fn check_config(path: &Path) -> (String, i32) {
    match Settings::load(path, &Overrides::default()) {
        Ok(_) => (format!("{}: ok", path.display()), 0),
        Err(error) => (report(&path.display().to_string(), &error), 1),
    }
}

fn report(origin: &str, error: &ConfigError) -> String {
    let count = error.problems.len();
    let plural = if count == 1 { "" } else { "s" };
    format!("{origin}: {count} problem{plural}\n{error}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("keywarden").chain(args.iter().copied())).unwrap()
    }

    /// A file in the temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("keywarden-cli-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn missing() -> PathBuf {
        std::env::temp_dir().join(format!("keywarden-cli-{}-missing.toml", std::process::id()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_default_file_runs_with_defaults_and_flags() {
        let command = cli(&[]).into_command_with_default(&missing()).unwrap();
        assert_eq!(
            command,
            CliCommand::Run {
                settings: Settings::default()
            }
        );

        let command = cli(&[
            "--listen",
            "0.0.0.0:7000",
            "--upstream",
            "redis:6390",
            "--admin-listen",
            "127.0.0.1:9121",
            // Beyond loopback, so it needs a password (protected mode).
            "--requirepass-sha256",
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
        ])
        .into_command_with_default(&missing())
        .unwrap();
        let CliCommand::Run { settings } = command else {
            panic!("{command:?}")
        };
        assert_eq!(settings.listen, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(settings.upstream.address, "redis:6390");
        assert_eq!(
            settings.admin.listen,
            Some("127.0.0.1:9121".parse().unwrap())
        );
    }

    #[test]
    fn the_default_file_is_read_when_present() {
        let file = TempFile::new(
            "default.toml",
            "threads = 4\n[upstream]\naddress = \"file:1\"\n",
        );
        let command = cli(&["--upstream", "flag:2"])
            .into_command_with_default(&file.0)
            .unwrap();
        let CliCommand::Run { settings } = command else {
            panic!("{command:?}")
        };
        assert_eq!(
            (settings.threads, settings.upstream.address.as_str()),
            (4, "flag:2")
        );
    }

    #[test]
    fn an_explicit_config_must_exist() {
        let path = missing();
        let (text, code) = cli(&["--config", path.to_str().unwrap()])
            .into_command_with_default(&missing())
            .unwrap_err();
        assert_eq!(code, 1);
        assert!(
            text.starts_with(&format!(
                "{}: 1 problem\n{}: cannot read: ",
                path.display(),
                path.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn invalid_settings_are_reported_with_their_origin() {
        let file = TempFile::new("bad.toml", "max_clients = 0\n");
        let (text, code) = cli(&["--config", file.0.to_str().unwrap(), "--listen", "nowhere"])
            .into_command_with_default(&missing())
            .unwrap_err();
        assert_eq!(code, 1);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], format!("{}: 2 problems", file.0.display()));
        assert!(
            lines[1].starts_with("listen: \"nowhere\" is not a socket address")
                && lines[1].ends_with("(from --listen)")
        );
        assert_eq!(lines[2], "max_clients: must be at least 1, not 0");
    }

    #[test]
    fn check_config_is_a_subcommand() {
        let command = cli(&["check-config", "some.toml"]).into_command().unwrap();
        assert_eq!(
            command,
            CliCommand::CheckConfig {
                path: PathBuf::from("some.toml")
            }
        );
        // It checks the file alone: flags that would change it are refused.
        assert!(Cli::try_parse_from([
            "keywarden",
            "--listen",
            "0.0.0.0:1",
            "check-config",
            "x.toml"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["keywarden", "check-config"]).is_err());
    }

    #[test]
    fn check_config_reports_ok_or_every_problem() {
        let good = TempFile::new("good.toml", include_str!("../../config/keywarden.toml"));
        assert_eq!(
            check_config(&good.0),
            (format!("{}: ok", good.0.display()), 0)
        );

        let bad = TempFile::new(
            "several.toml",
            "max_clients = 0\n[upstream]\naddress = \"localhost\"\n",
        );
        let (text, code) = check_config(&bad.0);
        assert_eq!(code, 1);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("{}: 2 problems", bad.0.display()));
        assert_eq!(lines[1], "max_clients: must be at least 1, not 0");
        assert!(
            lines[2].starts_with("upstream.address: \"localhost\" is not host:port"),
            "{text}"
        );

        let syntax = TempFile::new("syntax.toml", "[upstream]\nadress = \"h:1\"\n");
        let (text, code) = check_config(&syntax.0);
        assert_eq!(code, 1);
        assert!(text.ends_with(&format!("{}:2:1: upstream.adress: unknown field `adress`, expected one of `address`, `connections`, `connect_timeout`, `command_timeout`, `reconnect_backoff_min`, `reconnect_backoff_max`, `username`, `password`, `tls`, `sentinel`, `cluster_nodes`", syntax.0.display())), "{text}");

        let (text, code) = check_config(&missing());
        assert_eq!(code, 1);
        assert!(text.contains("cannot read"), "{text}");
    }
}
