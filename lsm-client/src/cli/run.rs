//! `lsm run`: check out, run a command while the lease renews itself, release at the end.
//!
//! The command inherits stdin, stdout and stderr; `lsm` writes only to stderr, each line
//! starting with `lsm:`. It gets `LSM_CHECKOUT_ID` and `LSM_FENCE` in its environment.
//!
//! SIGINT and SIGTERM sent to `lsm` are forwarded to the command, which decides when to
//! stop; `lsm` then releases and exits with the command's status. One exception: a Ctrl-C
//! typed at the terminal already reaches the command (it is in `lsm`'s process group), so
//! a SIGINT is not forwarded again while `lsm`'s group is the terminal's foreground group.
//!
//! When the lease is lost while the command runs: with `--on-lease-loss kill` (the
//! default) the command gets SIGTERM, then SIGKILL after `--kill-grace`, and `lsm` exits
//! [`EXIT_LEASE_LOST`]; with `warn` it prints a warning and the command runs on.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::cli::acquire::{Acquired, Signals, acquire};
use crate::cli::args::{OnLeaseLoss, RunArgs};
use crate::cli::request::{Defaults, build};
use crate::cli::{CliError, Context, EXIT_CANNOT_EXECUTE, EXIT_LEASE_LOST, EXIT_NOT_FOUND, format};
use crate::lease::LeaseLoss;

/// Runs `lsm run`; the exit code is the command's, or one of `lsm`'s own.
pub async fn run(ctx: &Context, args: RunArgs) -> Result<u8, CliError> {
    let request = build(&args.request, &Defaults::from_env()).map_err(CliError::Usage)?;
    let client = ctx.client(None)?;
    let mut signals = Signals::catch()?;
    let mut lease = match acquire(&client, request, &mut signals).await? {
        Acquired::Lease(lease) => lease,
        Acquired::Interrupted(signal) => return Ok(signal_exit_code(signal as i32)),
    };
    let id = lease.id();
    let grant = lease.grant();
    eprintln!("lsm: checked out #{id} ({})", format::granted(&grant));

    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let spawned = tokio::process::Command::new(program)
        .args(rest)
        .env("LSM_CHECKOUT_ID", id.to_string())
        .env("LSM_FENCE", grant.fence.to_string())
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!("lsm: cannot run {}: {e}", program.to_string_lossy());
            if let Err(e) = lease.release().await {
                eprintln!("lsm: releasing #{id} failed: {e}");
            }
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_EXECUTE,
            };
            return Ok(code);
        }
    };
    let pid = child.id().map(|pid| Pid::from_raw(pid as i32));
    let send = |signal: Signal| {
        if let Some(pid) = pid {
            let _ = kill(pid, signal);
        }
    };

    let mut loss_seen = false;
    let mut stopped_for_loss = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            loss = lease.lost(), if !loss_seen => {
                loss_seen = true;
                match args.on_lease_loss {
                    OnLeaseLoss::Kill => {
                        eprintln!(
                            "lsm: lease lost on #{id}: {loss}; stopping the command (SIGTERM, SIGKILL in {})",
                            humantime::format_duration(args.kill_grace)
                        );
                        send(Signal::SIGTERM);
                        stopped_for_loss = true;
                        kill_at = Some(Instant::now() + args.kill_grace);
                    }
                    OnLeaseLoss::Warn => eprintln!(
                        "lsm: warning: lease lost on #{id}: {loss}; the command keeps running without a license"
                    ),
                }
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                eprintln!("lsm: the command is still running; sending SIGKILL");
                send(Signal::SIGKILL);
                kill_at = None;
            }
            caught = signals.next() => {
                if caught == Signal::SIGINT && terminal_delivers_to_our_group() {
                    continue;
                }
                send(caught);
            }
        }
    };

    let ended_on_server = matches!(
        lease.loss(),
        Some(LeaseLoss::Revoked { .. } | LeaseLoss::Expired | LeaseLoss::Ended(_))
    );
    if ended_on_server {
        lease.detach();
    } else {
        match lease.release().await {
            Ok(_) => eprintln!("lsm: released #{id}"),
            Err(e) => eprintln!("lsm: releasing #{id} failed: {e}"),
        }
    }
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            eprintln!("lsm: lost track of the command: {e}");
            return Ok(super::EXIT_REFUSED);
        }
    };
    if stopped_for_loss {
        return Ok(EXIT_LEASE_LOST);
    }
    Ok(exit_code(status))
}

/// The exit code that passes a command's status on: its own code, or 128 + the signal
/// that killed it, as shells do.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => signal_exit_code(signal),
        (None, None) => super::EXIT_REFUSED,
    }
}

/// 128 + `signal`.
pub fn signal_exit_code(signal: i32) -> u8 {
    (128 + signal).clamp(0, 255) as u8
}

/// True when stdin is a terminal whose foreground process group is ours: a Ctrl-C there
/// was delivered to the command as well.
fn terminal_delivers_to_our_group() -> bool {
    nix::unistd::tcgetpgrp(std::io::stdin()).is_ok_and(|fg| fg == nix::unistd::getpgrp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_like_a_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(255 << 8)), 255);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137, "SIGKILL");
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143, "SIGTERM");
        assert_eq!(exit_code(ExitStatus::from_raw(2 | 0x80)), 130, "SIGINT with a core dump");
        assert_eq!(signal_exit_code(Signal::SIGINT as i32), 130);
    }
}
