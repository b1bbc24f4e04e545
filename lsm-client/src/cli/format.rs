//! What `lsm` prints for people: aligned tables and one-line summaries.
//!
//! Every function here is pure: it takes the API's data and the current time, and returns
//! text, so the output is tested as plain strings. Numbers are right-aligned, text
//! left-aligned, columns two spaces apart, no trailing blanks. Times are shown in UTC as
//! RFC 3339, and leases relative to now.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use lsm_core::{
    Checkout, CheckoutStatus, Demand, FeatureStatus, Grant, GrantedItem, Item, ParallelMode,
    WaiterInfo,
};

use crate::api::ClusterInfo;

/// A plain text table.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns; a header starting with `>` is right-aligned (the `>` is
    /// not printed).
    pub fn new(headers: &[&'static str]) -> Table {
        let right = headers.iter().map(|h| h.starts_with('>')).collect();
        let headers = headers.iter().map(|h| h.trim_start_matches('>')).collect();
        Table { headers, right, rows: Vec::new() }
    }

    /// Adds a row; missing cells are blank.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (width, right)) in widths.iter().zip(&self.right).enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                let pad = width - cell.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                if *right {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `lsm status`: the features, then the pools.
pub fn status(features: &[FeatureStatus], now_ms: u64) -> String {
    if features.is_empty() {
        return "no features are licensed (install a license with `lsm admin install-license`)\n"
            .to_string();
    }
    let mut table =
        Table::new(&["FEATURE", ">TOTAL", ">USED", ">FREE", ">QUEUED", "EXPIRES", "NOTE"]);
    for f in features {
        let mut notes = Vec::new();
        if f.retired {
            notes.push("retired".to_string());
        } else if f.expired {
            notes.push("expired".to_string());
        } else if f.starts_at_ms > now_ms {
            notes.push(format!("starts {}", time(f.starts_at_ms)));
        }
        table.row(vec![
            f.feature.to_string(),
            f.tokens_total.to_string(),
            f.in_use.to_string(),
            f.free.to_string(),
            f.queued.to_string(),
            time(f.expires_at_ms),
            notes.join(", "),
        ]);
    }
    let mut pools = Table::new(&[
        "FEATURE",
        "POOL",
        ">RESERVE",
        ">CAP",
        ">USED",
        ">AVAILABLE",
        ">LENT",
        ">BORROWED",
        "NOTE",
    ]);
    for f in features {
        for p in &f.pools {
            pools.row(vec![
                f.feature.to_string(),
                p.pool.to_string(),
                p.reserve.to_string(),
                p.cap.to_string(),
                p.in_use.to_string(),
                p.available.to_string(),
                p.lent.to_string(),
                p.borrowed.to_string(),
                if p.retired { "retired".into() } else { String::new() },
            ]);
        }
    }
    format!("{}\n{}", table.render(), pools.render())
}

/// `lsm checkouts`.
pub fn checkouts(list: &[Checkout], now_ms: u64) -> String {
    if list.is_empty() {
        return "no checkouts\n".to_string();
    }
    let mut table = Table::new(&[">ID", "USER", "HOST", "JOB", "HOLDS", "CLIENT", "LEASE"]);
    for c in list {
        let lease = if c.borrowed {
            format!("borrowed until {}", time(c.lease_expires_at_ms))
        } else {
            expires_in(c.lease_expires_at_ms, now_ms)
        };
        table.row(vec![
            c.id.to_string(),
            c.user.to_string(),
            c.host.to_string(),
            c.job.as_ref().map_or("-".into(), ToString::to_string),
            held(&c.items),
            c.client.to_string(),
            lease,
        ]);
    }
    table.render()
}

/// `lsm queue`.
pub fn queue(list: &[WaiterInfo], now_ms: u64) -> String {
    if list.is_empty() {
        return "the queue is empty\n".to_string();
    }
    let mut table =
        Table::new(&[">POS", ">ID", "USER", "HOST", "WANTS", ">PRIORITY", "WAITING", "NOTE"]);
    for w in list {
        let mut notes = Vec::new();
        if w.blocking {
            notes.push("blocking".to_string());
        }
        if w.bypassed > 0 {
            notes.push(format!("bypassed {}x", w.bypassed));
        }
        table.row(vec![
            w.position.to_string(),
            w.id.to_string(),
            w.user.to_string(),
            w.host.to_string(),
            wanted(&w.items),
            w.priority.to_string(),
            span(now_ms.saturating_sub(w.queued_at_ms)),
            notes.join(", "),
        ]);
    }
    table.render()
}

/// `lsm show`.
pub fn show(status: &CheckoutStatus, now_ms: u64) -> String {
    let mut out = String::new();
    match status {
        CheckoutStatus::Live(c) => {
            let _ = writeln!(out, "checkout #{}: live", c.id);
            let lease = if c.borrowed {
                format!("offline borrow until {}", time(c.lease_expires_at_ms))
            } else {
                format!(
                    "{} ({}), renewed to {} by each heartbeat",
                    time(c.lease_expires_at_ms),
                    expires_in(c.lease_expires_at_ms, now_ms),
                    span(c.lease_ttl_ms)
                )
            };
            let rows = [
                ("holds", held(&c.items)),
                ("user", c.user.to_string()),
                ("host", c.host.to_string()),
                ("job", c.job.as_ref().map_or("-".into(), ToString::to_string)),
                ("client", c.client.to_string()),
                ("granted", time(c.granted_at_ms)),
                ("lease", lease),
                ("fence", c.fence.to_string()),
            ];
            fields(&mut out, &rows);
        }
        CheckoutStatus::Queued(w) => {
            let _ = writeln!(out, "checkout #{}: queued at position {}", w.id, w.position);
            let rows = [
                ("wants", wanted(&w.items)),
                ("user", w.user.to_string()),
                ("host", w.host.to_string()),
                ("job", w.job.as_ref().map_or("-".into(), ToString::to_string)),
                ("client", w.client.to_string()),
                ("priority", w.priority.to_string()),
                (
                    "queued",
                    format!(
                        "{} ({} ago)",
                        time(w.queued_at_ms),
                        span(now_ms.saturating_sub(w.queued_at_ms))
                    ),
                ),
                ("leaves", format!("{} unless polled", time(w.wait_expires_at_ms))),
                ("blocking", if w.blocking { "yes".into() } else { "no".into() }),
            ];
            fields(&mut out, &rows);
        }
        CheckoutStatus::Gone(denial) => {
            let _ = writeln!(out, "not live: {denial}");
        }
    }
    out
}

/// One server's answer to `lsm cluster`: its view, or why it did not answer.
pub type ClusterView = (String, Result<ClusterInfo, String>);

/// `lsm cluster`: one row per listed server; the lag comes from a leader's view.
pub fn cluster(views: &[ClusterView]) -> String {
    let leader_view = views.iter().find_map(|(_, v)| {
        v.as_ref()
            .ok()
            .filter(|i| i.leader == Some(i.node) && i.role.eq_ignore_ascii_case("leader"))
    });
    let mut table = Table::new(&[
        "SERVER",
        ">NODE",
        "ROLE",
        ">TERM",
        ">LEADER",
        ">LAST-LOG",
        ">COMMIT",
        ">APPLIED",
        ">LAG",
        "NOTE",
    ]);
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for (addr, view) in views {
        match view {
            Ok(info) => {
                let lag = leader_view
                    .and_then(|l| l.members.iter().find(|m| m.id == info.node))
                    .and_then(|m| m.lag);
                let member = info.members.iter().find(|m| m.id == info.node);
                let note = match member {
                    Some(m) if !m.voter => "learner".to_string(),
                    Some(_) => String::new(),
                    None if info.members.is_empty() => "not initialized".to_string(),
                    None => "not a member".to_string(),
                };
                table.row(vec![
                    addr.clone(),
                    info.node.to_string(),
                    info.role.clone(),
                    info.term.to_string(),
                    opt(info.leader),
                    opt(info.last_log_index),
                    opt(info.commit_index),
                    opt(info.applied_index),
                    opt(lag),
                    note,
                ]);
            }
            Err(reason) => {
                let mut row = vec![addr.clone()];
                row.extend(std::iter::repeat_n("-".to_string(), 8));
                row.push(format!("unreachable: {reason}"));
                table.row(row);
            }
        }
    }
    let mut out = table.render();
    match leader_view {
        Some(l) => {
            let addr = l.leader_addr.as_deref().unwrap_or("?");
            let _ = writeln!(out, "\nleader: node {} at {addr}, term {}", l.node, l.term);
        }
        None => out.push_str("\nno listed server is the leader\n"),
    }
    out
}

/// A grant in one line: `abaqus 3 tokens, pool default; lsdyna 8 tokens, pool smp`.
pub fn granted(grant: &Grant) -> String {
    let items: Vec<String> = grant
        .items
        .iter()
        .map(|i| format!("{} {} token{}, pool {}", i.feature, i.tokens, plural(i.tokens), i.pool))
        .collect();
    items.join("; ")
}

/// A time in ms since the Unix epoch, as RFC 3339 UTC to the second; `never` past 9999.
pub fn time(ms: u64) -> String {
    if ms >= 253_402_300_800_000 {
        return "never".to_string();
    }
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `in 25s`, or `overdue 3s`.
pub fn expires_in(at_ms: u64, now_ms: u64) -> String {
    if at_ms >= now_ms {
        format!("in {}", span(at_ms - now_ms))
    } else {
        format!("overdue {}", span(now_ms - at_ms))
    }
}

/// A length of time in ms, to the second (`1h 2m 5s`, `0s`).
pub fn span(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

fn held(items: &[GrantedItem]) -> String {
    let items: Vec<String> =
        items.iter().map(|i| format!("{} {} ({})", i.feature, i.tokens, i.pool)).collect();
    items.join(", ")
}

fn wanted(items: &[Item]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|i| {
            let amount = match i.demand {
                Demand::Tokens(n) => format!("{n} token{}", plural(n)),
                Demand::Cores { cores, mode } => {
                    let mode = match mode {
                        ParallelMode::Smp => "smp",
                        ParallelMode::Mpp => "mpp",
                    };
                    format!("{cores} cores {mode}")
                }
            };
            match &i.pool {
                Some(pool) => format!("{} {amount} ({pool})", i.feature),
                None => format!("{} {amount}", i.feature),
            }
        })
        .collect();
    items.join(", ")
}

fn fields(out: &mut String, rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        let _ = writeln!(out, "  {key:<width$}  {value}");
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}
