//! A trap on the next `fsync`: the moment a power cut hurts most, when a process has
//! written and is waiting for its data to become durable.
//!
//! Armed ([`Trap::arm`]), the trap holds the next `fsync` or `fdatasync` of a file
//! without syncing anything and tells whoever waits ([`Trap::wait_caught`]). The caller
//! then kills the processes and cuts the power; the cut releases the trap, and the held
//! call fails with `EIO`, to a process that is gone. A process killed while the kernel
//! waits for the file system's answer ends only once the answer comes, so the cut must
//! come before the caller waits for the process to exit.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where the trap is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Off,
    Armed,
    Holding,
}

/// The trap of one file system.
#[derive(Debug)]
pub struct Trap {
    step: Mutex<Step>,
    changed: Condvar,
}

impl Default for Trap {
    fn default() -> Trap {
        Trap { step: Mutex::new(Step::Off), changed: Condvar::new() }
    }
}

impl Trap {
    /// Arms the trap for the next sync.
    pub fn arm(&self) {
        *self.step() = Step::Armed;
    }

    /// Waits up to `within` for an armed trap to hold a sync; true if it does.
    pub fn wait_caught(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut step = self.step();
        while *step == Step::Armed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            step = self.changed.wait_timeout(step, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        *step == Step::Holding
    }

    /// Called by a sync: if the trap is armed, holds the sync until [`Trap::release`]
    /// and returns true (the sync must then fail); false at once otherwise.
    pub fn hold(&self) -> bool {
        let mut step = self.step();
        if *step != Step::Armed {
            return false;
        }
        *step = Step::Holding;
        self.changed.notify_all();
        while *step == Step::Holding {
            step = self.changed.wait(step).unwrap_or_else(|p| p.into_inner());
        }
        true
    }

    /// Disarms the trap and lets a held sync go.
    pub fn release(&self) {
        *self.step() = Step::Off;
        self.changed.notify_all();
    }

    fn step(&self) -> MutexGuard<'_, Step> {
        self.step.lock().unwrap_or_else(|p| p.into_inner())
    }
}
