//! `lsm-server dev` end to end: the real binary starts three node processes on free
//! loopback ports, initializes them with the demo license, and stops them all on SIGTERM;
//! SIGKILLed, it cannot stop them, and they exit by themselves (`--exit-with-parent`).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lsm_client::transport::{HyperTransport, Transport};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Kills what the test started if it fails half-way.
struct Cleanup {
    dev: Child,
    pids: Vec<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let _ = self.dev.kill();
        let _ = self.dev.wait();
    }
}

/// A port p with p, p+1 and p+2 free on loopback.
fn free_base_port() -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        if base > 65_000 {
            continue;
        }
        let rest: Vec<_> =
            (1..3).filter_map(|i| TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if rest.len() == 2 {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

fn get(runtime: &tokio::runtime::Runtime, addr: &str, path: &str) -> (u16, serde_json::Value) {
    let transport = HyperTransport::tcp(Duration::from_secs(1));
    let request = http::Request::get(path).body(Bytes::new()).unwrap();
    let response = runtime
        .block_on(transport.send(addr, request, Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let json = serde_json::from_slice(response.body()).unwrap_or(serde_json::Value::Null);
    (response.status().as_u16(), json)
}

/// Starts `lsm-server dev` in `dir` on `base` and reads its output up to the `ready`
/// line; returns the guard (with the node pids) and the output.
fn start_dev(dir: &std::path::Path, base: u16) -> (Cleanup, Vec<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lsm-server"));
    command
        .arg("dev")
        .arg("--dir")
        .arg(dir)
        .arg("--base-port")
        .arg(base.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, _) in std::env::vars() {
        if key.starts_with("LSM_") {
            command.env_remove(key);
        }
    }
    let mut dev = command.spawn().unwrap();
    let stdout = dev.stdout.take().unwrap();
    let mut cleanup = Cleanup { dev, pids: Vec::new() };

    let (lines, received) = mpsc::channel();
    // Reads to the end even once nobody listens, so that dev's stdout stays open.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut output = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = received.recv_timeout(left).unwrap_or_else(|_| {
            panic!("no ready line within 60 s; output so far:\n{}", output.join("\n"))
        });
        if let Some(pid) = line.split("pid ").nth(1).and_then(|rest| rest.split_whitespace().next())
        {
            cleanup.pids.push(pid.parse().unwrap());
        }
        let ready = line.starts_with("ready");
        output.push(line);
        if ready {
            break;
        }
    }
    assert_eq!(cleanup.pids.len(), 3, "{}", output.join("\n"));
    (cleanup, output)
}

/// True once process `pid` is gone: no such process, or a zombie nobody has reaped yet
/// (an orphan's new parent may be slow to, or never, reap it).
fn gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return true;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name in parentheses: `pid (comm) S ...`.
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
}

#[test]
fn dev_runs_a_three_node_cluster_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let (mut cleanup, output) = start_dev(dir.path(), base);
    let text = output.join("\n");
    assert!(text.contains("leader: node "), "{text}");
    assert!(text.contains("lsm run --feature lsdyna --cores 8 --mode smp -- sleep 60"), "{text}");
    assert!(text.contains("run --config"), "{text}");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for port in base..base + 3 {
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(get(&runtime, &addr, "/healthz").0, 200);
        let (status, features) = get(&runtime, &addr, "/v1/features");
        assert_eq!(status, 200, "{features:?}");
        let names: Vec<&str> =
            features.as_array().unwrap().iter().filter_map(|f| f["feature"].as_str()).collect();
        assert_eq!(names, ["abaqus", "fluent", "lsdyna", "lsdyna-implicit"]);
    }
    for name in ["node1.toml", "node2.toml", "node3.toml", "license.toml", "node1.log"] {
        assert!(dir.path().join(name).is_file(), "{name} was not written");
    }

    let dev_pid = Pid::from_raw(i32::try_from(cleanup.dev.id()).unwrap());
    kill(dev_pid, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = cleanup.dev.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dev did not exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "dev exited with {status}");
    for pid in &cleanup.pids {
        assert_eq!(kill(Pid::from_raw(*pid), None), Err(Errno::ESRCH), "node pid {pid} still runs");
    }
    cleanup.pids.clear();
}

#[test]
fn nodes_exit_when_dev_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let (mut cleanup, output) = start_dev(dir.path(), base);
    assert!(cleanup.pids.iter().all(|&pid| !gone(pid)), "{}", output.join("\n"));

    // SIGKILL: dev cannot stop its nodes; they see their parent go (they look every
    // 200 ms) and exit.
    cleanup.dev.kill().unwrap();
    cleanup.dev.wait().unwrap();
    let mut polls = 0;
    while !cleanup.pids.iter().all(|&pid| gone(pid)) {
        polls += 1;
        assert!(polls <= 100, "node processes still run after {polls} polls: {:?}", cleanup.pids);
        std::thread::sleep(Duration::from_millis(100));
    }
    for name in ["node1.log", "node2.log", "node3.log"] {
        let log = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(log.contains("the parent process is gone"), "{name}:\n{log}");
    }
    cleanup.pids.clear();
}
