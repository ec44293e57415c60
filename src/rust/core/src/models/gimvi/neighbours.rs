//! GIMVI's blended imputation (issue 20): the decoder's prediction for a spatial cell mixed
//! with the expression of the sequencing cells nearest to it in the measured panel. On sparse
//! panels the decoder alone barely beats such a nearest-neighbour average, and the two err
//! differently, so their mix beats both (bench/README.md, GIMVI section).

use burn::prelude::Backend;
use rayon::prelude::*;

use super::{imputed_values, GimviConfig, Jvae, SEQ, SPATIAL};
use crate::data::DataSet;
use crate::error::{invalid_arg, Error, Result};

/// Spatial cells per parallel block (between blocks the query polls Ctrl-C).
const BLOCK: usize = 256;

/// For each of `cells` of the spatial dataset: the mean, over its `k` nearest sequencing
/// cells, of every sequencing gene's counts divided by that cell's total over the genes of
/// decode mode `mode` (the panel for `SPATIAL`, all genes for `SEQ`): the decoder's
/// normalised scale. Nearness: Euclidean distance of log1p(1e4 x / panel total) over the
/// panel genes; sequencing cells without panel counts are no candidates. Row-major n x G.
pub fn panel_neighbour_expression(
    config: &GimviConfig,
    data: [&DataSet; 2],
    cells: &[usize],
    k: usize,
    mode: usize,
) -> Result<Vec<f32>> {
    let [seq, spatial] = data;
    let panel = &config.spatial_gene_index;
    let (n_genes, n_panel) = (config.n_genes, panel.len());
    if seq.latent_posterior.is_some() || spatial.latent_posterior.is_some() {
        return Err(Error::InvalidData(
            "the neighbour imputation needs the counts of both datasets".into(),
        ));
    }
    let mut panel_pos = vec![usize::MAX; n_genes];
    for (p, &g) in panel.iter().enumerate() {
        panel_pos[g] = p;
    }
    // Candidates: sequencing cells with panel counts, their features and denominators.
    let mut candidates = Vec::new();
    let mut seq_features = Vec::new();
    let mut denominators = Vec::new();
    let mut panel_row = vec![0f32; n_panel];
    for c in 0..seq.n_cells() {
        panel_row.iter_mut().for_each(|v| *v = 0.0);
        let (idx, val) = seq.counts.row(c);
        for (&j, &v) in idx.iter().zip(val) {
            if panel_pos[j as usize] != usize::MAX {
                panel_row[panel_pos[j as usize]] = v;
            }
        }
        let panel_total: f32 = panel_row.iter().sum();
        if panel_total <= 0.0 {
            continue;
        }
        candidates.push(c);
        seq_features.extend(log_normalised(&panel_row, panel_total));
        denominators.push(if mode == SEQ {
            val.iter().sum::<f32>()
        } else {
            panel_total
        });
    }
    if k == 0 || k > candidates.len() {
        return Err(invalid_arg(
            "k",
            format!(
                "must be in [1, {}] (the sequencing cells with counts on the spatial panel)",
                candidates.len()
            ),
        ));
    }
    crate::train::memory::check_memory(
        (cells.len() as u64) * (n_genes as u64) * 8,
        "x_spatial",
        "impute fewer spatial cells at a time (a subset as x_spatial)",
    )?;
    let mut out = vec![0f32; cells.len() * n_genes];
    let n_blocks = cells.len().div_ceil(BLOCK);
    for (b, (block_cells, block_out)) in cells
        .chunks(BLOCK)
        .zip(out.chunks_mut(BLOCK * n_genes))
        .enumerate()
    {
        crate::interrupt::step(b, n_blocks)?;
        block_cells
            .par_iter()
            .zip(block_out.par_chunks_mut(n_genes))
            // Per-thread buffers: the distances to every candidate are the large one.
            .for_each_init(
                || (vec![0f32; n_panel], Vec::with_capacity(candidates.len())),
                |(x, d), (&cell, row)| {
                    x.iter_mut().for_each(|v| *v = 0.0);
                    let (idx, val) = spatial.counts.row(cell);
                    for (&j, &v) in idx.iter().zip(val) {
                        x[j as usize] = v;
                    }
                    let total: f32 = x.iter().sum();
                    let me = log_normalised(x, total.max(f32::MIN_POSITIVE));
                    d.clear();
                    d.extend(seq_features.chunks(n_panel).enumerate().map(|(i, f)| {
                        (
                            me.iter()
                                .zip(f)
                                .map(|(a, b)| (a - b) * (a - b))
                                .sum::<f32>(),
                            i,
                        )
                    }));
                    // Ties broken by cell order, so results do not depend on the thread count.
                    d.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    for &(_, i) in &d[..k] {
                        let (idx, val) = seq.counts.row(candidates[i]);
                        let scale = 1.0 / (denominators[i] * k as f32);
                        for (&j, &v) in idx.iter().zip(val) {
                            row[j as usize] += v * scale;
                        }
                    }
                },
            );
    }
    Ok(out)
}

/// log1p(1e4 x / total), the features of the neighbour search.
fn log_normalised(x: &[f32], total: f32) -> Vec<f32> {
    x.iter().map(|&v| (1e4 * v / total).ln_1p()).collect()
}

/// Mixes the decoder's imputation (n x G, row-major) with the neighbours' in place:
/// (1 - weight) * decoder + weight * neighbours, the neighbours' proportions scaled to counts
/// by each row's `library` (the spatial cell's observed panel total) in the unnormalised view.
fn blend(
    decoder: &mut [f32],
    neighbours: &[f32],
    n_genes: usize,
    weight: f64,
    library: Option<&[f32]>,
) {
    let w = weight as f32;
    for (r, (dec, nb)) in decoder
        .chunks_mut(n_genes)
        .zip(neighbours.chunks(n_genes))
        .enumerate()
    {
        let scale = library.map_or(1.0, |l| l[r]);
        for (a, &b) in dec.iter_mut().zip(nb) {
            *a = (1.0 - w) * *a + w * b * scale;
        }
    }
}

/// The blended imputation of `cells` of the spatial dataset (`data` = [sequencing,
/// spatial]): [`imputed_values`] mixed with [`panel_neighbour_expression`] at `weight`.
#[allow(clippy::too_many_arguments)]
pub fn blended_imputed_values<B: Backend>(
    module: &Jvae<B>,
    data: [&DataSet; 2],
    cells: &[usize],
    deterministic: bool,
    normalized: bool,
    mode: Option<usize>,
    batch_size: usize,
    k: usize,
    weight: f64,
    device: &B::Device,
) -> Result<Vec<f32>> {
    if !(0.0..=1.0).contains(&weight) {
        return Err(invalid_arg("weight", "must be in [0, 1]"));
    }
    super::check_data(&module.config, data)?;
    let mode = mode.unwrap_or(SPATIAL);
    let mut out = imputed_values(
        module,
        SPATIAL,
        data[SPATIAL],
        cells,
        deterministic,
        normalized,
        Some(mode),
        batch_size,
        device,
    )?;
    let nb = panel_neighbour_expression(&module.config, data, cells, k, mode)?;
    let library: Vec<f32> = cells
        .iter()
        .map(|&c| data[SPATIAL].log_library[c].exp())
        .collect();
    blend(
        &mut out,
        &nb,
        module.config.n_genes,
        weight,
        (!normalized).then_some(&library[..]),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(rows: &[&[f32]]) -> DataSet {
        let rows: Vec<Vec<f32>> = rows.iter().map(|r| r.to_vec()).collect();
        super::super::tests::dataset(&rows, vec![0; rows.len()], 1)
    }

    #[test]
    fn neighbours_are_found_in_the_panel_and_averaged_on_the_decoder_scale() {
        // Panel = sequencing genes 2 and 0 (spatial order); gene 1 is imputed.
        let config = GimviConfig::new(3, vec![2, 0], [1, 1]);
        let seq = data(&[
            &[9.0, 4.0, 1.0],
            &[1.0, 2.0, 9.0],
            &[0.0, 5.0, 0.0],
            &[2.0, 6.0, 8.0],
        ]);
        let spatial = data(&[&[10.0, 1.0], &[1.0, 10.0]]);
        let one =
            panel_neighbour_expression(&config, [&seq, &spatial], &[0, 1], 1, SPATIAL).unwrap();
        // Spatial cell 0 (mostly gene 2) is nearest to sequencing cell 1, cell 1 to cell 0;
        // sequencing cell 2 has no panel counts and is never a neighbour.
        let expect = [
            1.0 / 10.0,
            2.0 / 10.0,
            9.0 / 10.0,
            9.0 / 10.0,
            4.0 / 10.0,
            1.0 / 10.0,
        ];
        for (a, b) in one.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{one:?}");
        }
        // Two neighbours of spatial cell 0: sequencing cells 1 and 3, each on its own total.
        let two = panel_neighbour_expression(&config, [&seq, &spatial], &[0], 2, SPATIAL).unwrap();
        assert!((two[1] - (2.0 / 10.0 + 6.0 / 10.0) / 2.0).abs() < 1e-6);
        let all_genes =
            panel_neighbour_expression(&config, [&seq, &spatial], &[0], 1, SEQ).unwrap();
        assert!((all_genes[1] - 2.0 / 12.0).abs() < 1e-6);
        assert!(panel_neighbour_expression(&config, [&seq, &spatial], &[0], 4, SPATIAL).is_err());
    }

    #[test]
    fn blend_mixes_and_scales_the_neighbours_to_counts() {
        let mut dec = vec![1.0, 2.0, 3.0, 4.0];
        blend(
            &mut dec,
            &[0.5, 0.5, 0.1, 0.1],
            2,
            0.25,
            Some(&[10.0, 100.0]),
        );
        for (a, b) in dec
            .iter()
            .zip([0.75 + 1.25, 1.5 + 1.25, 2.25 + 2.5, 3.0 + 2.5])
        {
            assert!((a - b).abs() < 1e-6, "{dec:?}");
        }
    }
}
