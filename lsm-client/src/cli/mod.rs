//! The `lsm` command-line tool, as a library: `src/bin/lsm.rs` only calls [`main`].
//!
//! | file | what it holds |
//! |------|---------------|
//! | `args.rs` | the flags, as clap parses them |
//! | `request.rs` | checkout flags to a validated request (defaults, item specs) |
//! | `format.rs` | tables and one-line summaries for people |
//! | `commands.rs` | every command but `run`: call the client, print |
//! | `acquire.rs` | checking out with queue reports on stderr, interruptible by signals |
//! | `run.rs` | `lsm run`: hold a lease while a command runs |
//!
//! Exit codes (see `docs/cli.md`): [`EXIT_OK`], [`EXIT_REFUSED`], [`EXIT_USAGE`],
//! [`EXIT_UNAVAILABLE`]; `lsm run` exits with its command's status, or [`EXIT_LEASE_LOST`].

pub mod acquire;
pub mod args;
pub mod commands;
pub mod format;
pub mod request;
pub mod run;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lsm_core::ClientId;

use crate::client::Client;
use crate::config::{ClientConfig, split_servers};
use crate::error::ClientError;
use args::{Cli, Command};

/// Success.
pub const EXIT_OK: u8 = 0;
/// The cluster refused (the error code and message are printed).
pub const EXIT_REFUSED: u8 = 1;
/// Bad flags, configuration or input file.
pub const EXIT_USAGE: u8 = 2;
/// No server could serve the request before the timeout.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// `lsm run`: the lease was lost and the command was stopped (`EX_TEMPFAIL`).
pub const EXIT_LEASE_LOST: u8 = 75;
/// `lsm run`: the command exists but could not be executed.
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// `lsm run`: the command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// Why a command failed, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The client library failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Flags or input that make no sense.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(e) => client_exit_code(e),
            CliError::Usage(_) => EXIT_USAGE,
        }
    }
}

/// The exit code for a client error.
pub fn client_exit_code(error: &ClientError) -> u8 {
    match error {
        ClientError::Api { .. } | ClientError::WaitTimedOut { .. } => EXIT_REFUSED,
        ClientError::Config { .. } => EXIT_USAGE,
        ClientError::Unavailable { .. } | ClientError::Decode { .. } => EXIT_UNAVAILABLE,
    }
}

/// The global flags every command uses.
#[derive(Clone, Debug)]
pub struct Context {
    /// The servers.
    pub servers: Vec<String>,
    /// Print JSON.
    pub json: bool,
    /// The per-operation deadline.
    pub timeout: Duration,
    /// The admin token.
    pub admin_token: Option<String>,
}

impl Context {
    /// The global flags of a parsed command line.
    pub fn of(cli: &Cli) -> Context {
        let mut servers: Vec<String> =
            cli.servers.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if servers.is_empty() {
            // An empty LSM_SERVERS means unset.
            servers = split_servers(args::DEFAULT_SERVERS);
        }
        Context {
            servers,
            json: cli.json,
            timeout: cli.timeout,
            admin_token: cli.admin_token.clone().filter(|t| !t.is_empty()),
        }
    }

    /// The client configuration, with `client_id` when given.
    pub fn config(&self, client_id: Option<ClientId>) -> ClientConfig {
        let mut config = ClientConfig::new(self.servers.iter().cloned());
        config.deadline = self.timeout;
        config.attempt_timeout = config.attempt_timeout.min(self.timeout);
        config.admin_token = self.admin_token.clone();
        config.client_id = client_id;
        config
    }

    /// A client, with `client_id` when given.
    pub fn client(&self, client_id: Option<ClientId>) -> Result<Client, CliError> {
        let config = self.config(client_id);
        config.validate().map_err(|e| match e {
            ClientError::Config { field, problem } if field.starts_with("servers") => {
                CliError::Usage(format!("--servers: {problem}"))
            }
            ClientError::Config { field, problem } if field == "deadline" => {
                CliError::Usage(format!("--timeout: {problem}"))
            }
            other => CliError::Client(other),
        })?;
        Ok(Client::new(config)?)
    }
}

/// Parses the process's arguments, runs the command, and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lsm: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    ExitCode::from(code)
}

/// Runs a parsed command line; prints errors on stderr; returns the exit code.
pub async fn dispatch(cli: Cli) -> u8 {
    let ctx = Context::of(&cli);
    let result = match cli.command {
        Command::Run(args) => run::run(&ctx, args).await,
        command => commands::run(&ctx, command).await.map(|()| EXIT_OK),
    };
    match result {
        Ok(code) => code,
        Err(CliError::Client(ClientError::Api { detail, .. })) if ctx.json => {
            // Scripts get the server's error body, code and all, on stderr.
            let body = crate::api::ErrorBody { error: *detail };
            eprintln!("{}", serde_json::to_string(&body).expect("error bodies serialize"));
            EXIT_REFUSED
        }
        Err(error) => {
            eprintln!("lsm: {error}");
            error.exit_code()
        }
    }
}
