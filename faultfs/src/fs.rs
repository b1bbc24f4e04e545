//! The FUSE file system: every call passes through to the backing directory, except
//! file data and sizes, which stay in memory ([`Volatile`]) until the file is synced.
//!
//! Inode numbers are the file system's own, one per path seen (the root is 1); a rename
//! moves a number to its new path, an unlink or rmdir forgets the path. The kernel caches
//! neither attributes nor names (a TTL of zero) and drops a file's cached pages whenever
//! it is opened, so after a cut a new process reads what the backing directory holds.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::libc;

use crate::trap::Trap;
use crate::volatile::Volatile;

/// How long the kernel may cache an answer: not at all.
const TTL: Duration = Duration::ZERO;

/// What the file system knows, shared with the [`crate::Mount`] that cuts it.
#[derive(Debug)]
pub struct State {
    backing: PathBuf,
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_inode: u64,
    volatile: HashMap<u64, Volatile>,
    handles: HashMap<u64, File>,
    next_handle: u64,
    disk: Disk,
    stats: Stats,
}

/// How the disk treats `fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disk {
    /// `fsync` and `fdatasync` make a file's data durable.
    Honest,
    /// `fsync` and `fdatasync` succeed and make nothing durable, as a disk whose write
    /// cache ignores flushes: a cut drops every write since the mount.
    IgnoresSync,
}

/// What the file system has seen since it was mounted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Writes.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Calls of `fsync` or `fdatasync` on files.
    pub syncs: u64,
    /// Cuts.
    pub cuts: u64,
    /// Files whose unsynced data or size a cut dropped, summed over the cuts.
    pub dropped_files: u64,
    /// Bytes of unsynced pages the cuts dropped.
    pub dropped_bytes: u64,
}

/// What a cut dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Files that had unsynced data or sizes.
    pub files: usize,
    /// Bytes of unsynced pages.
    pub bytes: u64,
}

impl State {
    /// A file system over `backing` on `disk`.
    pub fn new(backing: PathBuf, disk: Disk) -> State {
        let root = PathBuf::new();
        State {
            backing,
            paths: HashMap::from([(1, root.clone())]),
            inodes: HashMap::from([(root, 1)]),
            next_inode: 2,
            volatile: HashMap::new(),
            handles: HashMap::new(),
            next_handle: 1,
            disk,
            stats: Stats::default(),
        }
    }

    /// Forgets every unsynced change: the power cut.
    pub fn cut(&mut self) -> Dropped {
        let dropped = self.unsynced();
        self.volatile.clear();
        self.stats.cuts += 1;
        self.stats.dropped_files += dropped.files as u64;
        self.stats.dropped_bytes += dropped.bytes;
        dropped
    }

    /// What it has seen.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// What a cut would drop now.
    pub fn unsynced(&self) -> Dropped {
        Dropped {
            files: self.volatile.len(),
            bytes: self.volatile.values().map(Volatile::held).sum(),
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).map(|p| self.backing.join(p)).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let parent = self.paths.get(&parent.0).ok_or(Errno::ENOENT)?;
        Ok(parent.join(name))
    }

    fn inode(&mut self, relative: &Path) -> u64 {
        if let Some(&ino) = self.inodes.get(relative) {
            return ino;
        }
        let ino = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(relative.to_path_buf(), ino);
        self.paths.insert(ino, relative.to_path_buf());
        ino
    }

    fn forget_path(&mut self, relative: &Path) {
        if let Some(ino) = self.inodes.remove(relative) {
            self.paths.remove(&ino);
        }
    }

    fn attr(&self, ino: u64, meta: &Metadata) -> FileAttr {
        let size = self.volatile.get(&ino).map_or(meta.len(), Volatile::size);
        let time = |secs: i64, nanos: i64| {
            UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    fn entry(&mut self, relative: &Path) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(self.backing.join(relative))?;
        let ino = self.inode(relative);
        Ok(self.attr(ino, &meta))
    }

    fn handle(&self, fh: FileHandle) -> Result<&File, Errno> {
        self.handles.get(&fh.0).ok_or(Errno::EBADF)
    }

    fn open_handle(&mut self, path: &Path) -> Result<u64, Errno> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(_) => File::open(path)?,
        };
        let fh = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(fh, file);
        Ok(fh)
    }

    fn volatile(&mut self, ino: INodeNo, len: u64) -> &mut Volatile {
        self.volatile.entry(ino.0).or_insert_with(|| Volatile::new(len))
    }

    fn getattr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(self.path(ino)?)?;
        Ok(self.attr(ino.0, &meta))
    }

    fn setattr(
        &mut self,
        ino: INodeNo,
        mode: Option<u32>,
        owner: (Option<u32>, Option<u32>),
        size: Option<u64>,
    ) -> Result<FileAttr, Errno> {
        let path = self.path(ino)?;
        if let Some(mode) = mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if owner.0.is_some() || owner.1.is_some() {
            std::os::unix::fs::chown(&path, owner.0, owner.1)?;
        }
        if let Some(size) = size {
            let len = fs::metadata(&path)?.len();
            self.volatile(ino, len).truncate(size);
        }
        self.getattr(ino)
    }

    fn read(&self, ino: INodeNo, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let file = self.handle(fh)?;
        if let Some(volatile) = self.volatile.get(&ino.0) {
            return Ok(volatile.read(file, offset, u64::from(size))?);
        }
        let mut buf = vec![0; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn write(
        &mut self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let file = self.handles.get(&fh.0).ok_or(Errno::EBADF)?;
        let len = file.metadata()?.len();
        let volatile = self.volatile.entry(ino.0).or_insert_with(|| Volatile::new(len));
        volatile.write(file, offset, data)?;
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        Ok(())
    }

    fn fsync(&mut self, ino: INodeNo, fh: FileHandle) -> Result<(), Errno> {
        self.stats.syncs += 1;
        if self.disk == Disk::IgnoresSync {
            return Ok(());
        }
        if let Some(volatile) = self.volatile.get(&ino.0) {
            volatile.apply(self.handle(fh)?)?;
            self.volatile.remove(&ino.0);
        }
        Ok(())
    }

    fn create(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let relative = self.child(parent, name)?;
        let path = self.backing.join(&relative);
        OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(flags & libc::O_EXCL)
            .mode(mode)
            .open(&path)?;
        let attr = self.entry(&relative)?;
        if flags & libc::O_TRUNC != 0 {
            self.volatile(attr.ino, attr.size).truncate(0);
        }
        let fh = self.open_handle(&path)?;
        Ok((self.getattr(attr.ino)?, fh))
    }

    /// Removes the entry `name` of `parent` from the backing directory with `remove`
    /// (a file or a directory), and forgets its path.
    fn remove(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        remove: fn(PathBuf) -> io::Result<()>,
    ) -> Result<(), Errno> {
        let relative = self.child(parent, name)?;
        remove(self.backing.join(&relative))?;
        self.forget_path(&relative);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
    ) -> Result<(), Errno> {
        let from = self.child(parent, name)?;
        let to = self.child(new_parent, new_name)?;
        fs::rename(self.backing.join(&from), self.backing.join(&to))?;
        self.forget_path(&to);
        // The renamed entry and, for a directory, everything under it move.
        let moved: Vec<(PathBuf, u64)> = (self.inodes.iter())
            .filter(|(path, _)| path.starts_with(&from))
            .map(|(path, &ino)| (path.clone(), ino))
            .collect();
        for (path, _) in &moved {
            self.inodes.remove(path);
        }
        for (path, ino) in moved {
            let rest = path.strip_prefix(&from).expect("filtered by prefix");
            let new = if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) };
            self.inodes.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
        Ok(())
    }

    fn readdir(&mut self, ino: INodeNo) -> Result<Vec<(u64, FileType, std::ffi::OsString)>, Errno> {
        let relative = self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)?;
        let parent = relative.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".into()),
            (self.inode(&parent), FileType::Directory, "..".into()),
        ];
        let mut names: Vec<_> = fs::read_dir(self.backing.join(&relative))?
            .map(|e| e.map(|e| (e.file_name(), e.file_type())))
            .collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in names {
            let child = self.inode(&relative.join(&name));
            let kind = kind.ok().and_then(FileType::from_std).unwrap_or(FileType::RegularFile);
            entries.push((child, kind, name));
        }
        Ok(entries)
    }
}

/// The file system the kernel talks to.
#[derive(Debug)]
pub struct FaultFs {
    state: Arc<Mutex<State>>,
    trap: Arc<Trap>,
}

impl FaultFs {
    /// The file system of `state`, its syncs watched by `trap`.
    pub fn new(state: Arc<Mutex<State>>, trap: Arc<Trap>) -> FaultFs {
        FaultFs { state, trap }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        match state.child(parent, name).and_then(|relative| state.entry(&relative)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().getattr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.state().setattr(ino, mode, (uid, gid), size) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        let made = state.child(parent, name).and_then(|relative| {
            let path = state.backing.join(&relative);
            fs::create_dir(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & !umask & 0o7777))?;
            state.entry(&relative)
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().remove(parent, name, fs::remove_file) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().remove(parent, name, fs::remove_dir) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            reply.error(Errno::EINVAL);
            return;
        }
        match self.state().rename(parent, name, newparent, newname) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.state();
        match state.path(ino).and_then(|path| state.open_handle(&path)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.state().create(parent, name, mode & !umask, flags) {
            Ok((attr, fh)) => {
                reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(ino, fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino, fh, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Closing a file syncs nothing.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.trap.hold() {
            // Released by a cut: the caller is gone, and nothing was synced.
            reply.error(Errno::EIO);
            return;
        }
        match self.state().fsync(ino, fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.state().readdir(ino) {
            Ok(entries) => {
                for (i, (child, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are durable at once: there is nothing to sync.
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.state().path(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
