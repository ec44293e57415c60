//! Evaluation metrics on an embedding (rows = cells), used by the tests and benchmarks to
//! compare rscvi with scvi-tools on equal terms. Exact brute-force kNN (Euclidean).

use crate::error::{invalid_arg, Result};

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Indices of the `k` nearest rows of `row` among `candidates` (excluding itself).
fn knn(emb: &[f32], dim: usize, row: usize, candidates: &[usize], k: usize) -> Vec<usize> {
    let me = &emb[row * dim..(row + 1) * dim];
    let mut d: Vec<(f32, usize)> = candidates
        .iter()
        .filter(|&&c| c != row)
        .map(|&c| (sq_dist(me, &emb[c * dim..(c + 1) * dim]), c))
        .collect();
    let k = k.min(d.len());
    if k == 0 {
        return vec![];
    }
    d.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
    d[..k].iter().map(|&(_, c)| c).collect()
}

fn check(emb: &[f32], dim: usize, groups: &[&[u32]], k: usize) -> Result<usize> {
    if dim == 0 || !emb.len().is_multiple_of(dim) {
        return Err(invalid_arg(
            "embedding",
            "must be a numeric matrix with at least one column",
        ));
    }
    let n = emb.len() / dim;
    if groups.iter().any(|g| g.len() != n) {
        return Err(invalid_arg(
            "labels",
            "must have one entry per row of the embedding",
        ));
    }
    if k == 0 || k >= n {
        return Err(invalid_arg(
            "k",
            format!("must be in [1, {}]", n.saturating_sub(1)),
        ));
    }
    Ok(n)
}

/// Mean fraction of each cell's k nearest neighbours that share its label.
pub fn knn_purity(emb: &[f32], dim: usize, labels: &[u32], k: usize) -> Result<f64> {
    let n = check(emb, dim, &[labels], k)?;
    let all: Vec<usize> = (0..n).collect();
    let total: f64 = (0..n)
        .map(|i| {
            let nn = knn(emb, dim, i, &all, k);
            nn.iter().filter(|&&j| labels[j] == labels[i]).count() as f64 / nn.len() as f64
        })
        .sum();
    Ok(total / n as f64)
}

/// Within-label batch mixing: for each cell, its k nearest neighbours among cells of the same
/// label; the observed fraction from another batch divided by the fraction expected if
/// batches were perfectly mixed within that label. 1 = ideal mixing, 0 = none.
/// Labels present in a single batch are skipped.
pub fn batch_mixing(
    emb: &[f32],
    dim: usize,
    labels: &[u32],
    batches: &[u32],
    k: usize,
) -> Result<f64> {
    check(emb, dim, &[labels, batches], k)?;
    let mut by_label: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, &l) in labels.iter().enumerate() {
        by_label.entry(l).or_default().push(i);
    }
    let (mut observed, mut expected) = (0.0, 0.0);
    for members in by_label.values() {
        let m = members.len();
        if m < 2 {
            continue;
        }
        let mut per_batch: std::collections::HashMap<u32, usize> = Default::default();
        for &i in members {
            *per_batch.entry(batches[i]).or_default() += 1;
        }
        if per_batch.len() < 2 {
            continue;
        }
        for &i in members {
            let nn = knn(emb, dim, i, members, k);
            observed +=
                nn.iter().filter(|&&j| batches[j] != batches[i]).count() as f64 / nn.len() as f64;
            expected += 1.0 - (per_batch[&batches[i]] - 1) as f64 / (m - 1) as f64;
        }
    }
    Ok(if expected > 0.0 {
        observed / expected
    } else {
        f64::NAN
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purity_and_mixing_on_toy_embeddings() {
        // Two well separated clusters, label = cluster; batches alternate inside clusters.
        let emb: Vec<f32> = vec![0.0, 0.1, 0.2, 0.3, 10.0, 10.1, 10.2, 10.3];
        let labels = [0, 0, 0, 0, 1, 1, 1, 1];
        let batches = [0, 1, 0, 1, 0, 1, 0, 1];
        assert!((knn_purity(&emb, 1, &labels, 3).unwrap() - 1.0).abs() < 1e-12);
        let mixed = batch_mixing(&emb, 1, &labels, &batches, 3).unwrap();
        // Batches separated along the axis inside each cluster: poor mixing.
        let emb_sep: Vec<f32> = vec![0.0, 0.1, 0.5, 0.6, 10.0, 10.1, 10.5, 10.6];
        let sep_batches = [0, 0, 1, 1, 0, 0, 1, 1];
        let separated = batch_mixing(&emb_sep, 1, &labels, &sep_batches, 1).unwrap();
        assert!(mixed > 0.9, "mixed = {mixed}");
        assert!(separated < 0.1, "separated = {separated}");
        assert!(knn_purity(&emb, 1, &labels, 8).is_err());
    }
}
