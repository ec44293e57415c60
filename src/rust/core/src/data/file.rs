//! Counts that stay in a file (an atlas larger than memory): the row pointers in memory, the
//! rows read in windows of contiguous cells. Training walks its cells block-shuffled (blocks
//! of contiguous cells in random order, cells shuffled within a window of blocks), so each
//! window is read once per epoch, the next one by a prefetch thread while the model trains on
//! the current one; queries and validation walk the cells in file order with read-ahead.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;

use crate::data::CsrMatrix;
use crate::error::{Error, Result};

/// Reads the stored nonzeros of a cells x features matrix kept in a file.
pub trait RowReader: Send + Sync {
    /// The file and the matrix in it, for messages.
    fn describe(&self) -> String;
    /// Column indices and values of the nonzeros `nnz` (positions in row-major order).
    fn read(&self, nnz: Range<usize>) -> Result<(Vec<u32>, Vec<f32>)>;
    /// A reader of the same rows that another thread may use, if there is one; else every
    /// read happens on the thread that asks for the rows (see `io::h5` for why HDF5's must).
    fn background(&self) -> Option<Arc<dyn RowReader>> {
        None
    }
}

/// Nonzeros a window holds at most (8 bytes each: 64 MiB), unless one cell has more.
pub const WINDOW_NNZ: usize = 8 << 20;
/// Contiguous cells read together: the unit of the epoch's block shuffle.
pub const BLOCK_CELLS: usize = 256;

/// Rows of some cells, read from the file: the cells as sorted disjoint ranges and their
/// rows in that order.
struct Window {
    ranges: Vec<Range<usize>>,
    /// Local row of each range's first cell.
    starts: Vec<usize>,
    rows: CsrMatrix,
}

impl Window {
    fn local(&self, cell: usize) -> Option<usize> {
        let k = self.ranges.partition_point(|r| r.end <= cell);
        let r = self.ranges.get(k)?;
        (r.start <= cell).then(|| self.starts[k] + cell - r.start)
    }
}

#[derive(Default)]
struct Cache {
    current: Option<Arc<Window>>,
    previous: Option<Arc<Window>>,
    /// The windows the training epoch will ask for next, in order.
    planned: VecDeque<Vec<Range<usize>>>,
    prefetch: Option<JoinHandle<Result<Window>>>,
}

impl Cache {
    fn holds(&self, cell: usize) -> bool {
        [&self.current, &self.previous]
            .iter()
            .any(|w| w.as_ref().is_some_and(|w| w.local(cell).is_some()))
    }

    fn push(&mut self, w: Window) {
        self.previous = self.current.replace(Arc::new(w));
    }
}

/// A count matrix in a file: what a [`crate::data::DataSet`] reads its rows from instead of
/// memory.
pub struct FileCounts {
    reader: Arc<dyn RowReader>,
    /// What the prefetch thread reads with; None: planned windows are read when asked for.
    background: Option<Arc<dyn RowReader>>,
    indptr: Arc<Vec<usize>>,
    n_cols: usize,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for FileCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileCounts({})", self.reader.describe())
    }
}

impl FileCounts {
    /// `indptr`: the row pointers (n_cells + 1, non-decreasing, from 0).
    pub fn new(reader: Arc<dyn RowReader>, indptr: Vec<usize>, n_cols: usize) -> Result<Self> {
        if indptr.first() != Some(&0) || indptr.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::File(format!(
                "{}: inconsistent row pointers",
                reader.describe()
            )));
        }
        Ok(Self {
            background: reader.background(),
            reader,
            indptr: Arc::new(indptr),
            n_cols,
            cache: Mutex::default(),
        })
    }

    pub fn n_rows(&self) -> usize {
        self.indptr.len() - 1
    }

    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    pub fn describe(&self) -> String {
        self.reader.describe()
    }

    fn nnz(&self, r: &Range<usize>) -> usize {
        self.indptr[r.end] - self.indptr[r.start]
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // A panic while the lock was held leaves a cache that is still consistent.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rows of `ranges` (sorted, disjoint), read in one call per range.
    fn read_window(
        reader: &dyn RowReader,
        indptr: &[usize],
        n_cols: usize,
        ranges: Vec<Range<usize>>,
    ) -> Result<Window> {
        let nnz: usize = ranges.iter().map(|r| indptr[r.end] - indptr[r.start]).sum();
        crate::data::check_counts_memory(nnz, 8)?;
        let read = |r: &Range<usize>| -> Result<(Vec<u32>, Vec<f32>)> {
            let (i, v) = reader.read(indptr[r.start]..indptr[r.end])?;
            if i.len() != v.len() || v.len() != indptr[r.end] - indptr[r.start] {
                return Err(Error::File(format!(
                    "{}: read fewer values than its row pointers promise",
                    reader.describe()
                )));
            }
            Ok((i, v))
        };
        // One range (reads in file order) keeps the reader's buffers; several are joined.
        let (mut idx, mut val) = match ranges.as_slice() {
            [r] => read(r)?,
            _ => (Vec::with_capacity(nnz), Vec::with_capacity(nnz)),
        };
        let mut local_ptr = Vec::with_capacity(ranges.iter().map(|r| r.len()).sum::<usize>() + 1);
        local_ptr.push(0usize);
        let mut starts = Vec::with_capacity(ranges.len());
        for r in &ranges {
            starts.push(local_ptr.len() - 1);
            let base = *local_ptr.last().unwrap_or(&0);
            local_ptr.extend(
                indptr[r.start + 1..=r.end]
                    .iter()
                    .map(|&p| p - indptr[r.start] + base),
            );
            if ranges.len() > 1 {
                let (i, v) = read(r)?;
                idx.extend(i);
                val.extend(v);
            }
        }
        let rows = CsrMatrix::new(local_ptr.len() - 1, n_cols, local_ptr, idx, val)
            .map_err(|e| Error::File(format!("{}: {e}", reader.describe())))?;
        Ok(Window {
            ranges,
            starts,
            rows,
        })
    }

    fn start_prefetch(&self, cache: &mut Cache) {
        let Some(reader) = &self.background else {
            return;
        };
        if cache.prefetch.is_some() {
            return;
        }
        if let Some(ranges) = cache.planned.pop_front() {
            let (reader, indptr, n_cols) = (reader.clone(), self.indptr.clone(), self.n_cols);
            cache.prefetch = Some(std::thread::spawn(move || {
                Self::read_window(&*reader, &indptr, n_cols, ranges)
            }));
        }
    }

    /// Moves the next planned window into the cache (the prefetched one, or read now when
    /// there is no background reader) and starts on the one after; false when none is planned.
    fn advance_plan(&self, cache: &mut Cache) -> Result<bool> {
        if cache.prefetch.is_some() {
            Self::finish_prefetch(cache)?;
        } else if self.background.is_none() && !cache.planned.is_empty() {
            let ranges = cache.planned.pop_front().unwrap_or_default();
            let w = Self::read_window(&*self.reader, &self.indptr, self.n_cols, ranges)?;
            cache.push(w);
        } else {
            return Ok(false);
        }
        self.start_prefetch(cache);
        Ok(true)
    }

    fn finish_prefetch(cache: &mut Cache) -> Result<()> {
        if let Some(h) = cache.prefetch.take() {
            let w = h
                .join()
                .map_err(|_| Error::File("reading counts in the background failed".into()))??;
            cache.push(w);
        }
        Ok(())
    }

    /// The windows a training epoch will read, in order: the first starts loading now.
    pub fn set_plan(&self, windows: Vec<Vec<Range<usize>>>) {
        let mut cache = self.lock();
        if let Some(h) = cache.prefetch.take() {
            let _ = h.join(); // an unused read; its error, if any, no longer matters
        }
        cache.planned = windows.into();
        self.start_prefetch(&mut cache);
    }

    /// Drops the plan and the cached windows (memory back when training or a query ends).
    pub fn release(&self) {
        self.set_plan(Vec::new());
        let mut cache = self.lock();
        cache.current = None;
        cache.previous = None;
    }

    /// Makes the rows of `cells` available to [`FileCounts::gather`]: from the cache, the
    /// next planned window, or a read of the cells (with read-ahead when they lie close
    /// together in the file, as in a walk in file order).
    pub fn load(&self, cells: &[usize]) -> Result<()> {
        let mut cache = self.lock();
        if cells.iter().all(|&c| cache.holds(c)) {
            return Ok(());
        }
        if self.advance_plan(&mut cache)? && cells.iter().all(|&c| cache.holds(c)) {
            return Ok(());
        }
        let w = Self::read_window(
            &*self.reader,
            &self.indptr,
            self.n_cols,
            self.ranges_for(cells),
        )?;
        cache.push(w);
        Ok(())
    }

    /// The end of a read from cell `first` holding a window's worth of nonzeros, at least
    /// `min_end` (a single long cell may exceed the budget).
    fn window_end(&self, first: usize, min_end: usize) -> usize {
        let budget = self.indptr[first] + WINDOW_NNZ;
        let end = self
            .indptr
            .partition_point(|&p| p <= budget)
            .saturating_sub(1);
        end.clamp(min_end, self.n_rows())
    }

    /// The cell ranges to read for `cells`: from the first to past the last, extended to a
    /// window's worth of nonzeros, when that span fits a window; else each run of
    /// consecutive cells.
    fn ranges_for(&self, cells: &[usize]) -> Vec<Range<usize>> {
        let mut sorted = cells.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
            return Vec::new();
        };
        if self.nnz(&(first..last + 1)) <= WINDOW_NNZ {
            return std::iter::once(first..self.window_end(first, last + 1)).collect();
        }
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for c in sorted {
            match ranges.last_mut() {
                Some(r) if r.end == c => r.end += 1,
                _ => ranges.push(c..c + 1),
            }
        }
        ranges
    }

    /// Calls `f(position in cells, column indices, values)` for each of `cells`. Rows
    /// missing from the cache (a caller that did not [`FileCounts::load`] them) are read
    /// now.
    pub fn gather(&self, cells: &[usize], mut f: impl FnMut(usize, &[u32], &[f32])) -> Result<()> {
        let cached = {
            let cache = self.lock();
            cells.iter().all(|&c| cache.holds(c))
        };
        if !cached {
            self.load(cells)?;
        }
        let windows: Vec<Arc<Window>> = {
            let cache = self.lock();
            [&cache.current, &cache.previous]
                .into_iter()
                .flatten()
                .cloned()
                .collect()
        };
        for (r, &c) in cells.iter().enumerate() {
            let found = windows
                .iter()
                .find_map(|w| w.local(c).map(|l| w.rows.row(l)));
            let Some((idx, val)) = found else {
                return Err(Error::File(format!(
                    "{}: the rows of a minibatch are not all in memory",
                    self.reader.describe()
                )));
            };
            f(r, idx, val);
        }
        Ok(())
    }

    /// One epoch's order of `cells` for training: blocks of contiguous cells in random
    /// order, packed into windows of at most [`WINDOW_NNZ`] nonzeros, cells shuffled within
    /// each window. Returns the order and each window's cell ranges (to [`Self::set_plan`]).
    pub fn epoch_order(
        &self,
        cells: &[usize],
        rng: &mut impl rand::Rng,
    ) -> (Vec<usize>, Vec<Vec<Range<usize>>>) {
        let mut sorted = cells.to_vec();
        sorted.sort_unstable();
        let mut blocks: Vec<&[usize]> = sorted
            .chunk_by(|a, b| a / BLOCK_CELLS == b / BLOCK_CELLS)
            .collect();
        blocks.shuffle(rng);
        let (mut order, mut windows) = (Vec::with_capacity(cells.len()), Vec::new());
        let mut k = 0;
        while k < blocks.len() {
            let (start, mut nnz) = (order.len(), 0);
            let mut ranges = Vec::new();
            while let Some(b) = blocks.get(k) {
                let r = b[0]..b[b.len() - 1] + 1;
                if !ranges.is_empty() && nnz + self.nnz(&r) > WINDOW_NNZ {
                    break;
                }
                nnz += self.nnz(&r);
                order.extend_from_slice(b);
                ranges.push(r);
                k += 1;
            }
            order[start..].shuffle(rng);
            ranges.sort_unstable_by_key(|r| r.start);
            windows.push(ranges);
        }
        (order, windows)
    }

    /// Each cell's stored values in file order, a window at a time, polling for Ctrl-C and
    /// reporting progress: `f(cell, column indices, values)`.
    pub fn scan(&self, mut f: impl FnMut(usize, &[u32], &[f32]) -> Result<()>) -> Result<()> {
        let n = self.n_rows();
        let mut start = 0;
        while start < n {
            crate::interrupt::step(start, n)?;
            let end = self.window_end(start, start + 1);
            let range = std::iter::once(start..end).collect();
            let w = Self::read_window(&*self.reader, &self.indptr, self.n_cols, range)?;
            for c in start..end {
                let (idx, val) = w.rows.row(c - start);
                f(c, idx, val)?;
            }
            start = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Rows kept in memory, counting the reads (also those of its background copy).
    #[derive(Clone)]
    struct MemoryRows {
        m: Arc<CsrMatrix>,
        reads: Arc<Mutex<usize>>,
        background: bool,
    }

    impl RowReader for MemoryRows {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn background(&self) -> Option<Arc<dyn RowReader>> {
            self.background
                .then(|| Arc::new(self.clone()) as Arc<dyn RowReader>)
        }
        fn read(&self, nnz: Range<usize>) -> Result<(Vec<u32>, Vec<f32>)> {
            *self.reads.lock().unwrap() += 1;
            Ok((
                self.m.indices[nnz.clone()].to_vec(),
                self.m.values[nnz].to_vec(),
            ))
        }
    }

    fn matrix(n: usize) -> CsrMatrix {
        let mut indptr = vec![0];
        let (mut idx, mut val) = (vec![], vec![]);
        for c in 0..n {
            for j in 0..(c % 3 + 1) {
                idx.push(j as u32);
                val.push((c + j) as f32);
            }
            indptr.push(idx.len());
        }
        CsrMatrix::new(n, 3, indptr, idx, val).unwrap()
    }

    fn file(n: usize) -> (FileCounts, Arc<MemoryRows>) {
        file_read(n, true)
    }

    fn file_read(n: usize, background: bool) -> (FileCounts, Arc<MemoryRows>) {
        let m = matrix(n);
        let reader = Arc::new(MemoryRows {
            m: Arc::new(m.clone()),
            reads: Arc::default(),
            background,
        });
        (
            FileCounts::new(reader.clone(), m.indptr, 3).unwrap(),
            reader,
        )
    }

    #[test]
    fn gathered_rows_are_the_stored_rows_whatever_the_order() {
        let (f, _) = file(2000);
        let m = matrix(2000);
        let cells = [1999, 3, 1000, 3, 17];
        f.gather(&cells, |r, idx, val| {
            assert_eq!((idx, val), m.row(cells[r]));
        })
        .unwrap();
        let mut seen = 0;
        f.scan(|c, idx, val| {
            assert_eq!((idx, val), m.row(c));
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 2000);
    }

    #[test]
    fn an_epoch_visits_every_cell_once_reading_each_window_once() {
        // read ahead by a thread, or when asked for (a reader bound to its thread)
        for background in [true, false] {
            an_epoch_reads_each_window_once(background);
        }
    }

    fn an_epoch_reads_each_window_once(background: bool) {
        let (f, reader) = file_read(5000, background);
        let m = matrix(5000);
        let cells: Vec<usize> = (0..5000).filter(|c| c % 7 != 0).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (order, windows) = f.epoch_order(&cells, &mut rng);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, cells);
        assert_ne!(order, cells, "not shuffled");
        let n_reads: usize = windows.iter().map(Vec::len).sum();
        f.set_plan(windows);
        for batch in order.chunks(128) {
            f.load(batch).unwrap();
            f.gather(batch, |r, idx, val| assert_eq!((idx, val), m.row(batch[r])))
                .unwrap();
        }
        // One read per block: the planned windows served every minibatch.
        assert_eq!(*reader.reads.lock().unwrap(), n_reads);
        f.release();
    }
}
