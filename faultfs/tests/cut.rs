//! The fault file system with real files through a real mount: what survives a cut is
//! exactly what was synced, and until the cut every read sees every write.
//!
//! Each test mounts its own file system over a temporary backing directory; where FUSE
//! is not available the test fails and says what is missing.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lsm_faultfs::{Disk, Mount};

/// A mount over a fresh backing directory, and its directories.
struct Fixture {
    mount: Option<Mount>,
    _dir: tempfile::TempDir,
    at: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::on(Disk::Honest)
    }

    fn on(disk: Disk) -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (backing, at) = (dir.path().join("backing"), dir.path().join("mnt"));
        fs::create_dir(&backing).expect("the backing directory");
        fs::create_dir(&at).expect("the mount point");
        let mount = Mount::on(&backing, &at, disk).unwrap_or_else(|e| panic!("cannot mount: {e}"));
        Fixture { mount: Some(mount), _dir: dir, at }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.at.join(name)
    }

    fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("mounted")
    }

    fn backing(&self, name: &str) -> PathBuf {
        self.mount().backing().join(name)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Unmount before the directory goes.
        self.mount.take();
    }
}

fn write_file(path: &Path, data: &[u8], sync: bool) {
    let mut file = File::create(path).expect("create");
    file.write_all(data).expect("write");
    if sync {
        file.sync_all().expect("fsync");
    }
}

#[test]
fn written_and_synced_survives_a_cut() {
    let fx = Fixture::new();
    write_file(&fx.path("a"), b"durable", true);
    let dropped = fx.mount().cut();
    assert_eq!(dropped.files, 0, "nothing was left unsynced");
    assert_eq!(fs::read(fx.path("a")).unwrap(), b"durable");
    assert_eq!(fs::read(fx.backing("a")).unwrap(), b"durable");
}

#[test]
fn written_and_not_synced_reads_back_until_the_cut_and_is_gone_after_it() {
    let fx = Fixture::new();
    write_file(&fx.path("a"), b"volatile", false);
    assert_eq!(fs::read(fx.path("a")).unwrap(), b"volatile", "reads see unsynced writes");
    assert_eq!(fs::read(fx.backing("a")).unwrap(), b"", "the backing file holds nothing yet");
    let dropped = fx.mount().cut();
    assert_eq!(dropped.files, 1);
    // The name was durable at once; its data was not.
    assert_eq!(fs::read(fx.path("a")).unwrap(), b"");
}

#[test]
fn an_unsynced_overwrite_falls_back_to_the_synced_bytes() {
    let fx = Fixture::new();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    write_file(&fx.path("log"), &data, true);
    let file = OpenOptions::new().write(true).open(fx.path("log")).unwrap();
    file.write_all_at(b"XXXX", 5000).unwrap();
    file.write_all_at(b"tail", data.len() as u64).unwrap();
    drop(file);
    let now = fs::read(fx.path("log")).unwrap();
    assert_eq!(now.len(), data.len() + 4);
    assert_eq!(&now[5000..5004], b"XXXX");
    assert_eq!(&now[..5000], &data[..5000]);
    fx.mount().cut();
    assert_eq!(fs::read(fx.path("log")).unwrap(), data, "exactly the synced image");
}

#[test]
fn only_the_synced_file_keeps_its_writes() {
    let fx = Fixture::new();
    write_file(&fx.path("kept"), b"one", false);
    write_file(&fx.path("lost"), b"two", false);
    File::open(fx.path("kept")).unwrap().sync_data().unwrap();
    fx.mount().cut();
    assert_eq!(fs::read(fx.path("kept")).unwrap(), b"one");
    assert_eq!(fs::read(fx.path("lost")).unwrap(), b"");
}

#[test]
fn a_truncation_is_lost_unless_synced_and_a_regrown_file_reads_zeros() {
    let fx = Fixture::new();
    write_file(&fx.path("t"), &[7u8; 10_000], true);
    let file = OpenOptions::new().read(true).write(true).open(fx.path("t")).unwrap();
    file.set_len(100).unwrap();
    file.write_all_at(b"end", 9000).unwrap();
    let mut now = Vec::new();
    (&file).seek(SeekFrom::Start(0)).unwrap();
    (&file).read_to_end(&mut now).unwrap();
    assert_eq!(now.len(), 9003);
    assert!(now[..100].iter().all(|&b| b == 7));
    assert!(now[100..9000].iter().all(|&b| b == 0), "the truncated bytes do not come back");
    drop(file);
    fx.mount().cut();
    assert_eq!(fs::read(fx.path("t")).unwrap(), vec![7u8; 10_000], "the truncation was lost");

    let file = OpenOptions::new().write(true).open(fx.path("t")).unwrap();
    file.set_len(50).unwrap();
    file.sync_all().unwrap();
    drop(file);
    fx.mount().cut();
    assert_eq!(fs::read(fx.path("t")).unwrap(), vec![7u8; 50], "the synced truncation stays");
}

#[test]
fn a_rename_over_a_file_is_atomic_and_keeps_the_synced_data_of_the_new_file() {
    let fx = Fixture::new();
    write_file(&fx.path("conf"), b"old", true);
    write_file(&fx.path("conf.tmp"), b"new", true);
    fs::rename(fx.path("conf.tmp"), fx.path("conf")).unwrap();
    fx.mount().cut();
    assert_eq!(fs::read(fx.path("conf")).unwrap(), b"new");
    assert!(!fx.path("conf.tmp").exists());

    // Renamed into place before its data was synced: the name moved, the data is lost.
    write_file(&fx.path("conf.tmp"), b"newer", false);
    fs::rename(fx.path("conf.tmp"), fx.path("conf")).unwrap();
    assert_eq!(fs::read(fx.path("conf")).unwrap(), b"newer");
    fx.mount().cut();
    assert_eq!(fs::read(fx.path("conf")).unwrap(), b"", "neither old nor new data");
}

#[test]
fn directories_files_in_them_and_unlinks_pass_through() {
    let fx = Fixture::new();
    fs::create_dir_all(fx.path("d/e")).unwrap();
    write_file(&fx.path("d/e/f"), b"deep", true);
    write_file(&fx.path("d/g"), b"gone", true);
    fs::remove_file(fx.path("d/g")).unwrap();
    fs::rename(fx.path("d/e"), fx.path("d/h")).unwrap();
    let mut names: Vec<_> =
        fs::read_dir(fx.path("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["h"]);
    fx.mount().cut();
    assert_eq!(fs::read(fx.path("d/h/f")).unwrap(), b"deep");
    assert_eq!(fs::read(fx.backing("d/h/f")).unwrap(), b"deep");
    fs::remove_file(fx.path("d/h/f")).unwrap();
    fs::remove_dir(fx.path("d/h")).unwrap();
    assert!(!fx.backing("d/h").exists());
}

#[test]
fn appends_after_a_sync_are_cut_back_to_the_synced_length() {
    let fx = Fixture::new();
    let mut log = OpenOptions::new().create(true).append(true).open(fx.path("wal")).unwrap();
    for i in 0..100u32 {
        log.write_all(format!("entry {i}\n").as_bytes()).unwrap();
        if i == 49 {
            log.sync_data().unwrap();
        }
    }
    drop(log);
    let all = fs::read_to_string(fx.path("wal")).unwrap();
    assert_eq!(all.lines().count(), 100);
    assert!(fx.mount().unsynced().bytes > 0);
    fx.mount().cut();
    let kept = fs::read_to_string(fx.path("wal")).unwrap();
    let expected: String = (0..50).map(|i| format!("entry {i}\n")).collect();
    assert_eq!(kept, expected);
}

#[test]
fn a_disk_that_ignores_syncs_loses_synced_writes_and_the_stats_count_them() {
    let fx = Fixture::on(Disk::IgnoresSync);
    write_file(&fx.path("a"), b"believed durable", true);
    File::open(fx.path("a")).unwrap().sync_all().unwrap();
    let stats = fx.mount().stats();
    assert_eq!((stats.writes, stats.bytes_written, stats.syncs), (1, 16, 2));
    let dropped = fx.mount().cut();
    assert_eq!(dropped.files, 1);
    assert_eq!(fs::read(fx.path("a")).unwrap(), b"");
    let stats = fx.mount().stats();
    assert_eq!((stats.cuts, stats.dropped_files, stats.dropped_bytes), (1, 1, 4096));
}

#[test]
fn a_trapped_sync_holds_until_the_cut_then_fails_and_its_write_is_gone() {
    let fx = Fixture::new();
    write_file(&fx.path("wal"), b"synced ", true);
    let path = fx.path("wal");
    let writer = std::thread::spawn(move || {
        let mut wal = OpenOptions::new().append(true).open(path).unwrap();
        wal.write_all(b"in flight").unwrap();
        wal.sync_data()
    });
    assert!(fx.mount().trap_next_sync(Duration::from_secs(10)), "the sync was not caught");
    assert!(!writer.is_finished(), "the trapped sync returned before the cut");
    let dropped = fx.mount().cut();
    assert_eq!(dropped.files, 1);
    let synced = writer.join().unwrap();
    assert!(synced.is_err(), "a sync cut short reports an error: {synced:?}");
    assert_eq!(fs::read(fx.path("wal")).unwrap(), b"synced ");
}

#[test]
fn an_untriggered_trap_times_out_and_the_cut_disarms_it() {
    let fx = Fixture::new();
    assert!(!fx.mount().trap_next_sync(Duration::from_millis(100)));
    fx.mount().cut();
    write_file(&fx.path("a"), b"after", true);
    fx.mount().cut();
    assert_eq!(fs::read(fx.path("a")).unwrap(), b"after");
}
