//! The whole dataset kept on the training device, so that a minibatch is a row gather there
//! and no counts cross the host-device link per step (used for GPU training). Counts are
//! stored dense: 1M cells x 2,000 genes take 8 GB of the card's memory.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::data::batch::Batch;
use crate::data::DataSet;
use crate::error::{Error, Result};

/// Cells uploaded per transfer while building the device copy (bounds host memory).
const UPLOAD_CHUNK: usize = 16_384;

pub struct ResidentData<B: Backend> {
    full: Batch<B>,
}

impl<B: Backend> ResidentData<B> {
    /// Uploads `data`; fails cleanly when the dense copy would exceed `max_bytes`.
    pub fn upload(data: &DataSet, device: &B::Device, max_bytes: usize) -> Result<Self> {
        let (n, g) = (data.n_cells(), data.n_genes());
        let bytes = n.saturating_mul(g).saturating_mul(8);
        if bytes > max_bytes {
            return Err(Error::Device(format!(
                "the dense counts ({n} cells x {g} genes, {:.1} GB with their log) do not fit the \
                 device memory budget ({:.1} GB)",
                bytes as f64 / 1e9,
                max_bytes as f64 / 1e9
            )));
        }
        let cells: Vec<usize> = (0..n).collect();
        let parts: Vec<Batch<B>> = cells
            .chunks(UPLOAD_CHUNK)
            .map(|c| Batch::from_host(&data.host_batch(c, None), g, device))
            .collect();
        Ok(Self {
            full: Batch::cat(parts),
        })
    }

    /// The minibatch of `cells`, gathered on the device.
    pub fn batch(&self, cells: &[usize]) -> Batch<B> {
        let device = self.full.x.device();
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                cells.iter().map(|&c| c as i64).collect::<Vec<_>>(),
                [cells.len()],
            ),
            &device,
        );
        self.full.select(idx)
    }
}
