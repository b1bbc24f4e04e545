//! The unsynced contents of one file: the pages written and the size set since the file
//! was last synced, over the synced image in the backing file.
//!
//! The backing file holds what survives a power cut. A [`Volatile`] holds, in memory,
//! every page (4 KiB) written since, the current size, and the floor: how much of the
//! backing file still shows through (a truncation below the backing file's length hides
//! the rest, even when the file grows again). Reads see the pages, else the backing file
//! below the floor, else zeros, up to the current size. [`Volatile::apply`] writes it all
//! to the backing file, which is what an `fsync` does; dropping it is what a cut does.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

/// The page size of the model: writes are kept, and lost, in whole pages.
pub const PAGE: u64 = 4096;

/// What a file holds beyond its synced image.
#[derive(Debug)]
pub struct Volatile {
    size: u64,
    floor: u64,
    pages: BTreeMap<u64, Vec<u8>>,
}

impl Volatile {
    /// Nothing unsynced yet over a backing file of `len` bytes.
    pub fn new(len: u64) -> Volatile {
        Volatile { size: len, floor: len, pages: BTreeMap::new() }
    }

    /// The file's current size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many bytes of pages are held.
    pub fn held(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }

    /// Up to `len` bytes at `offset`, as the file reads now.
    pub fn read(&self, backing: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            let page = self.page(backing, index)?;
            let from = (at - index * PAGE) as usize;
            let to = (end - index * PAGE).min(PAGE) as usize;
            out.extend_from_slice(&page[from..to]);
            at = index * PAGE + to as u64;
        }
        Ok(out)
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            let mut page = self.page(backing, index)?;
            let from = (at - index * PAGE) as usize;
            let to = (end - index * PAGE).min(PAGE) as usize;
            let taken = (at - offset) as usize;
            page[from..to].copy_from_slice(&data[taken..taken + (to - from)]);
            self.pages.insert(index, page);
            at = index * PAGE + to as u64;
        }
        self.size = self.size.max(end);
        Ok(())
    }

    /// Sets the size to `len`: what lies beyond is gone, and reads as zeros if the file
    /// grows again.
    pub fn truncate(&mut self, len: u64) {
        if len < self.size {
            let first_gone = len.div_ceil(PAGE);
            self.pages.retain(|&index, _| index < first_gone);
            if let Some(page) = self.pages.get_mut(&(len / PAGE)) {
                page[(len % PAGE) as usize..].fill(0);
            }
            self.floor = self.floor.min(len);
        }
        self.size = len;
    }

    /// Makes the backing file hold what the file holds now.
    pub fn apply(&self, backing: &File) -> io::Result<()> {
        if backing.metadata()?.len() > self.floor {
            backing.set_len(self.floor)?;
        }
        for (&index, page) in &self.pages {
            let start = index * PAGE;
            if start < self.size {
                let len = (self.size - start).min(PAGE) as usize;
                backing.write_all_at(&page[..len], start)?;
            }
        }
        backing.set_len(self.size)
    }

    /// Page `index` as the file reads now (zeros past its end).
    fn page(&self, backing: &File, index: u64) -> io::Result<Vec<u8>> {
        if let Some(page) = self.pages.get(&index) {
            return Ok(page.clone());
        }
        let mut page = vec![0; PAGE as usize];
        let start = index * PAGE;
        let shown = self.floor.saturating_sub(start).min(PAGE) as usize;
        let mut got = 0;
        while got < shown {
            match backing.read_at(&mut page[got..shown], start + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        Ok(page)
    }
}
