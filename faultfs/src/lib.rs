//! A FUSE file system for power-loss tests: it passes through to a backing directory but
//! keeps in memory every file's data written since that file was last synced, so that a
//! power cut ([`Mount::cut`]) drops exactly what was not synced.
//!
//! The model. The backing directory holds the durable image. A write, or a change of a
//! file's size (`truncate`, `ftruncate`, `O_TRUNC`), is held in memory, in 4 KiB pages,
//! and reads see it; `fsync` or `fdatasync` of the file writes what is held for it to the
//! backing file. Closing a file syncs nothing. A cut forgets everything held: afterwards
//! every file reads as it did at its last sync (a file created and never synced is
//! empty). Names are durable at once: `create`, `mkdir`, `rename`, `unlink` and `rmdir`
//! go straight to the backing directory and survive a cut without an `fsync` of the
//! directory, as on a file system that commits its metadata synchronously. So a rename
//! is atomic, and a file renamed into place before its data was synced is found, after a
//! cut, with the data it had at its last sync. Hard links, symlinks, extended attributes
//! and `fallocate` are not offered. A disk that ignores syncs ([`Disk::IgnoresSync`])
//! is there to show that a test of durability catches a loss.
//!
//! A cut can be timed to the worst moment: [`Mount::trap_next_sync`] holds the next
//! sync of a file, so the cut comes after a process wrote and before its data is
//! durable.
//!
//! A cut models the machine losing power, so whatever uses the file system must be gone
//! first: SIGKILL the processes, then cut, then start them again. [`Mount::new`] mounts
//! (as root directly through `/dev/fuse`, otherwise through `fusermount3`); dropping the
//! [`Mount`] unmounts. [`check_support`] says plainly what is missing where FUSE is not
//! available.

mod fs;
mod trap;
mod volatile;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption};

pub use fs::{Disk, Dropped, Stats};
use fs::{FaultFs, State};
use trap::Trap;

/// A mounted fault file system.
#[derive(Debug)]
pub struct Mount {
    state: Arc<Mutex<State>>,
    trap: Arc<Trap>,
    session: Option<BackgroundSession>,
    backing: PathBuf,
    mountpoint: PathBuf,
}

/// Whether FUSE file systems can be mounted here; if not, what is missing, in words.
pub fn check_support() -> Result<(), String> {
    let dev = Path::new("/dev/fuse");
    if !dev.exists() {
        return Err("/dev/fuse does not exist: this machine (or container) offers no FUSE; \
                    load the fuse module or run the container with --device /dev/fuse"
            .into());
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Err(format!("/dev/fuse cannot be opened ({e}): run as root or give access"));
    }
    let root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt as _;
        m.uid() == 0
    });
    if !root.unwrap_or(false) && !on_path("fusermount3") {
        return Err("fusermount3 is not installed (not root, so mounting needs it): \
                    apt-get install fuse3"
            .into());
    }
    Ok(())
}

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(name).is_file())
}

impl Mount {
    /// Mounts a fault file system over `backing` (a directory, which must exist) at
    /// `mountpoint` (an empty directory, which must exist), on an honest disk.
    pub fn new(backing: &Path, mountpoint: &Path) -> io::Result<Mount> {
        Mount::on(backing, mountpoint, Disk::Honest)
    }

    /// [`Mount::new`] on `disk`.
    pub fn on(backing: &Path, mountpoint: &Path, disk: Disk) -> io::Result<Mount> {
        check_support().map_err(io::Error::other)?;
        let backing = backing.canonicalize()?;
        let state = Arc::new(Mutex::new(State::new(backing.clone(), disk)));
        let mut config = Config::default();
        config.mount_options =
            vec![MountOption::FSName("lsm-faultfs".into()), MountOption::DefaultPermissions];
        let trap = Arc::new(Trap::default());
        let fs = FaultFs::new(state.clone(), trap.clone());
        let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot mount on {}: {e}", mountpoint.display()))
        })?;
        let mountpoint = mountpoint.to_path_buf();
        Ok(Mount { state, trap, session: Some(session), backing, mountpoint })
    }

    /// Cuts the power: everything not synced is gone. Kill every process that uses the
    /// file system first. A sync held by the trap is let go, and fails.
    pub fn cut(&self) -> Dropped {
        let dropped = self.state.lock().unwrap_or_else(|p| p.into_inner()).cut();
        self.trap.release();
        dropped
    }

    /// Arms a trap on the next `fsync` or `fdatasync` of a file: it syncs nothing and
    /// does not return until the next [`Mount::cut`], and then fails. True if a sync is
    /// caught within `within`: then SIGKILL the processes (without waiting for them, for
    /// the one in the held sync ends only after the cut), cut, and reap them. False if
    /// none came; the trap stays armed until the next cut.
    pub fn trap_next_sync(&self, within: Duration) -> bool {
        self.trap.arm();
        self.trap.wait_caught(within)
    }

    /// What a cut would drop now.
    pub fn unsynced(&self) -> Dropped {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).unsynced()
    }

    /// What the file system has seen since it was mounted.
    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }

    /// The backing directory (its durable image).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for Mount {
    /// Unmounts and waits for the file system's thread.
    fn drop(&mut self) {
        self.trap.release();
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            eprintln!("lsm-faultfs: unmounting {} failed: {e}", self.mountpoint.display());
        }
    }
}
