//! The `lsm` binary against the fake cluster: `lsm run`'s exit statuses, lease loss and
//! signal forwarding, and the exit codes and outputs of the one-shot commands.

#![cfg(feature = "cli")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Fake, Role, dead_addr};
use lsm_client::{Client, ClientConfig};
use lsm_core::CheckoutId;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BOUND: Duration = Duration::from_secs(15);

fn lsm(fake_addrs: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lsm"));
    command
        .arg("--servers")
        .arg(fake_addrs.join(","))
        .arg("--timeout")
        .arg("3s")
        .env_remove("LSM_CLIENT_ID")
        .env_remove("LSM_ADMIN_TOKEN")
        .env("USER", "jane")
        .stdin(Stdio::null());
    command
}

/// Runs `lsm` to completion off the async runtime's threads.
async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("lsm runs")).await.unwrap()
}

/// A running `lsm run` whose stderr lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Running {
        let mut child =
            command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn lsm");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines, stderr: Vec::new() }
    }

    /// Waits for a stderr line containing `text`.
    async fn wait_line(&mut self, text: &str) -> String {
        let started = Instant::now();
        loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => {
                    assert!(started.elapsed() < BOUND, "no {text:?} on stderr: {:?}", self.stderr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    panic!("stderr closed without {text:?}: {:?}", self.stderr)
                }
            }
        }
    }

    /// The checkout id from the `checked out #ID` line.
    async fn checkout_id(&mut self) -> CheckoutId {
        let line = self.wait_line("checked out #").await;
        let digits: String = line
            .split("checked out #")
            .nth(1)
            .unwrap()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        CheckoutId(digits.parse().unwrap())
    }

    async fn exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.stderr.extend(self.lines.try_iter());
                return status;
            }
            if started.elapsed() > BOUND {
                let _ = self.child.kill();
                panic!("lsm did not exit: {:?}", self.stderr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn run_passes_the_exit_status_on_and_releases() {
    let fake = Fake::start(&[Role::Follower, Role::Leader]).await;
    let mut command = lsm(&fake.addrs);
    command.args(["run", "--feature", "abaqus", "--tokens", "2", "--lease", "1s", "--"]);
    command.args(["sh", "-c", "test \"$LSM_CHECKOUT_ID\" = 1 && sleep 0.8 && exit 7"]);
    let mut run = Running::spawn(command);
    let line = run.wait_line("checked out #").await;
    assert_eq!(line, "lsm: checked out #1 (abaqus 2 tokens, pool default)");
    let status = run.exit().await;
    assert_eq!(status.code(), Some(7), "{:?}", run.stderr);
    let checkout = fake.checkout(CheckoutId(1));
    assert!(checkout.released, "released at the end: {:?}", run.stderr);
    assert!(checkout.renewals >= 1, "renewed while running: {:?}", run.stderr);
    assert!(!run.stderr.iter().any(|l| l.contains("lease lost")), "{:?}", run.stderr);
}

#[tokio::test]
async fn run_exits_128_plus_the_signal_that_killed_the_command() {
    let fake = Fake::start(&[Role::Leader]).await;
    let mut command = lsm(&fake.addrs);
    command.args(["run", "-f", "abaqus:1", "--", "sh", "-c", "kill -KILL $$"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(137), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(fake.checkout(CheckoutId(1)).released);

    let mut command = lsm(&fake.addrs);
    command.args(["run", "-f", "abaqus:1", "--", "/nonexistent/solver"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(127), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(fake.checkout(CheckoutId(2)).released, "released when the command cannot start");
}

#[tokio::test]
async fn run_stops_the_command_when_the_lease_is_revoked() {
    let fake = Fake::start(&[Role::Leader]).await;
    let mut command = lsm(&fake.addrs);
    command.args(["run", "-f", "abaqus:2", "--lease", "900ms", "--kill-grace", "2s", "--"]);
    command.args(["sleep", "30"]);
    let mut run = Running::spawn(command);
    let id = run.checkout_id().await;
    let admin = Client::new(ClientConfig::new(fake.addrs.clone())).unwrap();
    admin.revoke(id, "maintenance window").await.unwrap();
    let line = run.wait_line("lease lost").await;
    assert!(line.contains("revoked by an administrator: maintenance window"), "{line}");
    let status = run.exit().await;
    assert_eq!(status.code(), Some(75), "{:?}", run.stderr);
    assert!(!fake.checkout(id).released, "a revoked checkout is not released again");
}

#[tokio::test]
async fn run_with_warn_keeps_the_command_running_after_a_loss() {
    let fake = Fake::start(&[Role::Leader]).await;
    let mut command = lsm(&fake.addrs);
    command.args(["run", "-f", "abaqus:2", "--lease", "900ms", "--on-lease-loss", "warn", "--"]);
    command.args(["sh", "-c", "sleep 1.5; exit 3"]);
    let mut run = Running::spawn(command);
    let id = run.checkout_id().await;
    let admin = Client::new(ClientConfig::new(fake.addrs.clone())).unwrap();
    admin.revoke(id, "testing").await.unwrap();
    run.wait_line("warning: lease lost").await;
    assert_eq!(run.exit().await.code(), Some(3), "{:?}", run.stderr);
}

#[tokio::test]
async fn run_forwards_sigterm_to_the_command() {
    let fake = Fake::start(&[Role::Leader]).await;
    let mut command = lsm(&fake.addrs);
    command.args(["run", "-f", "abaqus:1", "--"]);
    command.args([
        "sh",
        "-c",
        "trap 'exit 42' TERM; echo ready >&2; while true; do sleep 0.05; done",
    ]);
    let mut run = Running::spawn(command);
    run.checkout_id().await;
    run.wait_line("ready").await;
    kill(Pid::from_raw(run.child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(run.exit().await.code(), Some(42), "{:?}", run.stderr);
    assert!(fake.checkout(CheckoutId(1)).released);
}

#[tokio::test]
async fn run_reports_queue_positions_while_waiting() {
    let fake = Fake::start(&[Role::Leader]).await;
    fake.lock().queue_polls = 2;
    let mut command = lsm(&fake.addrs);
    command.args(["run", "-f", "abaqus:4", "--wait", "1m", "--lease", "600ms", "--", "true"]);
    let out = output(command).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("lsm: waiting in the queue as #1: position 2"), "{stderr}");
    assert!(stderr.contains("lsm: checked out #1"), "{stderr}");
}

#[tokio::test]
async fn checkout_then_release_from_another_process_with_the_same_client_id() {
    let fake = Fake::start(&[Role::Leader]).await;
    let mut command = lsm(&fake.addrs);
    command.args(["checkout", "-f", "abaqus:3", "--client-id", "script-7", "--lease", "1m"]);
    let out = output(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.starts_with("checked out #1: abaqus 3 tokens, pool default; lease ends "),
        "{stdout}"
    );
    assert!(stdout.contains("client id: script-7"), "{stdout}");

    // Another client may not release it: refused, exit 1.
    let mut command = lsm(&fake.addrs);
    command.args(["release", "1"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_owner"), "{out:?}");

    let mut command = lsm(&fake.addrs);
    command.args(["--json", "heartbeat", "1"]).env("LSM_CLIENT_ID", "script-7");
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((json["status"].as_str(), json["id"].as_u64()), (Some("renewed"), Some(1)));

    let mut command = lsm(&fake.addrs);
    command.args(["release", "#1", "--client-id", "script-7"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "released #1\n");
    assert!(fake.checkout(CheckoutId(1)).released);

    // The second process continued the first one's sequence numbers.
    let seqs: Vec<u64> = fake.seen("/v1/checkouts").iter().map(|s| s.envelope().1).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test]
async fn exit_codes_say_refused_usage_or_unavailable() {
    let fake = Fake::start(&[Role::Leader]).await;
    let mut command = lsm(&fake.addrs);
    command.args(["--json", "checkout", "-f", "abaqus:1"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"], "granted");
    assert!(json["client"].as_str().is_some_and(|c| c.contains('-')), "{json}");

    let mut command = lsm(&fake.addrs);
    command.args(["heartbeat", "99"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(1), "refused: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("lsm: refused (unknown_checkout"),
        "{out:?}"
    );

    let mut command = lsm(&fake.addrs);
    command.args(["--json", "release", "99"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(1));
    let body: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(body["error"]["code"], "unknown_checkout", "the API's error body: {body}");

    let mut command = lsm(&fake.addrs);
    command.args(["checkout", "-f", "abaqus"]);
    assert_eq!(output(command).await.status.code(), Some(2), "usage");

    let mut command = lsm(&fake.addrs);
    command.args(["checkout", "--bogus"]);
    assert_eq!(output(command).await.status.code(), Some(2), "clap usage");

    let mut command = lsm(&[dead_addr()]);
    command.args(["--timeout", "300ms", "status"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(3), "unavailable: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not serve"), "{out:?}");

    let mut command = lsm(&fake.addrs);
    command.args(["status"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no features"));
}

#[tokio::test]
async fn cluster_asks_every_server_and_shows_the_unreachable() {
    let fake = Fake::start(&[Role::Leader]).await;
    let dead = dead_addr();
    let mut command = lsm(&[fake.addrs[0].clone(), dead.clone()]);
    command.args(["cluster"]);
    let out = output(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout.lines().nth(1).unwrap().contains("Leader"), "{stdout}");
    let dead_line = stdout.lines().find(|l| l.starts_with(&dead)).unwrap();
    assert!(dead_line.contains("unreachable: cannot connect"), "{stdout}");
}
