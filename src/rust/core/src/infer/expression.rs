//! Expression queries written once for every model with an expression head
//! ([`ExpressionModule`]): posterior normalised expression (scvi.md §8.2) and the
//! `n_samples_overall` sampler behind differential expression (§9.2).

use burn::tensor::{backend::Backend, Tensor};

use crate::data::batch::host;
use crate::data::DataSet;
use crate::error::{invalid_arg, Result};
use crate::family::{ExpressionModule, Head};
use crate::infer::{check_batch, check_cells, Matrix};

/// Options of the importance weights, scvi-tools' `importance_weighting_kwargs`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportanceOptions {
    /// Anchor cells drawn without replacement from the group (all when it is smaller).
    pub max_cells: usize,
    /// Raise every log weight to at least the log of the mean weight (Ionides 2008).
    pub truncation: bool,
    /// Samples of each anchor's marginal log-likelihood.
    pub n_mc_samples: usize,
}

impl Default for ImportanceOptions {
    fn default() -> Self {
        ImportanceOptions {
            max_cells: 1024,
            truncation: false,
            n_mc_samples: 500,
        }
    }
}

/// How the rows of `n_samples_overall` are drawn from the posterior draws.
#[derive(Clone, Debug)]
pub enum RowWeights {
    Uniform,
    Importance(ImportanceOptions),
}

/// Options of [`normalized_expression`].
pub struct ExpressionQuery<'a> {
    pub cells: &'a [usize],
    /// Batch codes to decode with (averaged); `None` in the list = each cell's own batch.
    pub transform_batch: Vec<Option<u32>>,
    pub genes: Option<&'a [usize]>,
    /// `None` = "latent": μ_x with the cell's library; else ρ times this number.
    pub library_size: Option<f64>,
    pub n_samples: usize,
    pub batch_size: usize,
}

/// Posterior normalised expression averaged over `n_samples` draws and the transform batches.
pub fn normalized_expression<B: Backend, M: ExpressionModule<B>>(
    model: &M,
    data: &DataSet,
    q: &ExpressionQuery,
    device: &B::Device,
) -> Result<Matrix> {
    check_cells(model, 0, data, q.cells)?;
    check_batch(q.batch_size, q.cells, data)?;
    if q.transform_batch.is_empty() {
        return Err(invalid_arg(
            "transform_batch",
            "must name at least one batch",
        ));
    }
    if let Some(&b) = q
        .transform_batch
        .iter()
        .flatten()
        .find(|&&b| b as usize >= model.n_batch())
    {
        return Err(invalid_arg(
            "transform_batch",
            format!("batch code {b} is unknown to the model"),
        ));
    }
    let g = head_width(model, Head::Expression)?;
    let genes: Vec<usize> = q.genes.map_or_else(|| (0..g).collect(), |s| s.to_vec());
    let s = q.n_samples.max(1);
    let n_tb = q.transform_batch.len().max(1);
    let mut values = Vec::with_capacity(q.cells.len() * genes.len());
    let gene_index = Tensor::<B, 1, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(
            genes.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [genes.len()],
        ),
        device,
    );
    for (done, chunk) in q.cells.chunks(q.batch_size).enumerate() {
        crate::interrupt::step(done, q.cells.len().div_ceil(q.batch_size))?;
        data.load(chunk)?;
        let mut acc: Option<Tensor<B, 2>> = None;
        for tb in &q.transform_batch {
            let b = M::expression_minibatch(model.config(), data, chunk, *tb, device);
            let pass = model.expression_pass(&b);
            for k in 0..s {
                crate::interrupt::check()?;
                let draw = model.expression_draw(&b, &pass, k, true, Head::Expression);
                let e = match q.library_size {
                    Some(ls) => draw.scale * ls,
                    None => draw.rate,
                };
                let e = e.select(1, gene_index.clone());
                acc = Some(match acc {
                    Some(a) => a + e,
                    None => e,
                });
            }
        }
        let mean = acc.expect("at least one sample") / (s * n_tb) as f64;
        values.extend(host(&mean));
    }
    Ok(Matrix {
        n_rows: q.cells.len(),
        n_cols: genes.len(),
        values,
    })
}

/// Number of features of `head`, or an error naming the head the model lacks.
pub(crate) fn head_width<B: Backend, M: ExpressionModule<B>>(
    model: &M,
    head: Head,
) -> Result<usize> {
    match model.head_columns(head) {
        Some(r) => Ok(r.len()),
        None => Err(invalid_arg(
            "model",
            format!("has no {} data", format!("{head:?}").to_lowercase()),
        )),
    }
}

/// `m` rows of `head`'s normalised values (ρ·`library_size` for expression) for `cells` decoded with `transform_batch` (None = each cell's own batch),
/// drawn with replacement from S·N posterior draws, S = m / N + 1 (scvi.md §8.2
/// `n_samples_overall`, the DE sampler of §9.2), uniformly or with importance weights
/// (§8.10). Row-major m x genes. Uniform draws keep only the drawn rows, so memory stays at
/// m x genes whatever S·N is; importance weights need every draw.
#[allow(clippy::too_many_arguments)]
pub fn scale_samples<B: Backend, M: ExpressionModule<B>>(
    model: &M,
    head: Head,
    data: &DataSet,
    cells: &[usize],
    transform_batch: Option<u32>,
    library_size: f32,
    m: usize,
    weights: &RowWeights,
    batch_size: usize,
    rng: &mut impl rand::Rng,
    device: &B::Device,
) -> Result<Vec<f32>> {
    use rand::RngExt;
    check_cells(model, 0, data, cells)?;
    check_batch(batch_size, cells, data)?;
    if cells.is_empty() {
        return Err(invalid_arg("idx1", "selects no cells"));
    }
    let (n, g) = (cells.len(), head_width(model, head)?);
    // The draws (m x features, f32) and, for DE, the other group's and their pairing.
    crate::train::check_memory(
        (m as u64).saturating_mul(g as u64).saturating_mul(4 * 3),
        "n_samples_overall",
        "draw fewer samples",
    )?;
    let s = m / n + 1;
    if let RowWeights::Importance(opts) = weights {
        if head != Head::Expression {
            return Err(invalid_arg(
                "weights",
                "\"importance\" applies to expression only; use \"uniform\"",
            ));
        }
        let (rho, p) = model.importance_rows(
            data,
            cells,
            transform_batch,
            s,
            opts,
            batch_size,
            rng,
            device,
        )?;
        let pick = rand::distr::weighted::WeightedIndex::new(&p)
            .map_err(|e| crate::Error::NonFinite(format!("importance weights: {e}")))?;
        let mut out = Vec::with_capacity(m * g);
        for _ in 0..m {
            let r = rng.sample(&pick);
            out.extend(rho[r * g..(r + 1) * g].iter().map(|&v| v * library_size));
        }
        return Ok(out);
    }
    // (sample, cell position) -> output rows that take it
    let mut wanted: std::collections::HashMap<(usize, usize), Vec<usize>> = Default::default();
    for row in 0..m {
        let k = rng.random_range(0..s * n);
        wanted.entry((k / n, k % n)).or_default().push(row);
    }
    let mut out = vec![0f32; m * g];
    for (chunk_idx, chunk) in cells.chunks(batch_size).enumerate() {
        crate::interrupt::step(chunk_idx, cells.len().div_ceil(batch_size))?;
        let offset = chunk_idx * batch_size;
        let needed: Vec<usize> = (0..s)
            .filter(|&smp| (0..chunk.len()).any(|p| wanted.contains_key(&(smp, offset + p))))
            .collect();
        if needed.is_empty() {
            continue;
        }
        data.load(chunk)?;
        let b = M::expression_minibatch(model.config(), data, chunk, transform_batch, device);
        let pass = model.expression_pass(&b);
        for smp in needed {
            crate::interrupt::check()?;
            let draw = model.expression_draw(&b, &pass, smp, false, head);
            let rho = host(&draw.scale);
            for p in 0..chunk.len() {
                if let Some(targets) = wanted.get(&(smp, offset + p)) {
                    for &row in targets {
                        for (o, &r) in out[row * g..(row + 1) * g]
                            .iter_mut()
                            .zip(&rho[p * g..(p + 1) * g])
                        {
                            *o = r * library_size;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}
