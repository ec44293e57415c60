//! The minibatch schedule of an epoch over one or several datasets.

/// One training step: a minibatch (cell indices) of every dataset, in dataset order.
pub type Step<'a> = Vec<&'a [usize]>;

/// Pairs the minibatches of several datasets for one epoch (gimvi.md §6.1). `train_cells`
/// holds each dataset's (already shuffled) training cells. The dataset with the most training
/// cells drives the epoch (ties: the earlier dataset); every other dataset cycles through
/// the minibatches of its single pass, in the same order, as often as needed.
pub fn cyclic_schedule<'a>(train_cells: &'a [Vec<usize>], batch_size: usize) -> Vec<Step<'a>> {
    let chunks: Vec<Vec<&[usize]>> = train_cells
        .iter()
        .map(|cells| cells.chunks(batch_size.max(1)).collect())
        .collect();
    let driver = train_cells.iter().enumerate().fold(0, |best, (i, c)| {
        if c.len() > train_cells[best].len() {
            i
        } else {
            best
        }
    });
    if chunks.iter().any(|c| c.is_empty()) {
        return Vec::new();
    }
    (0..chunks[driver].len())
        .map(|k| chunks.iter().map(|c| c[k % c.len()]).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_dataset_replays_its_minibatches_in_order() {
        // gimvi.md §10.7: short loader [1, 2], long [10, 11, 12] -> (1,10), (2,11), (1,12).
        let sets = vec![vec![1, 2], vec![10, 11, 12]];
        let steps = cyclic_schedule(&sets, 1);
        let pairs: Vec<(usize, usize)> = steps.iter().map(|s| (s[0][0], s[1][0])).collect();
        assert_eq!(pairs, vec![(1, 10), (2, 11), (1, 12)]);
        // Ties go to the first dataset; its batches are all used once.
        let tie = vec![vec![1, 2, 3], vec![4, 5, 6]];
        let steps = cyclic_schedule(&tie, 2);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1], vec![&[3][..], &[6][..]]);
        // The driver is the dataset with more training cells, not more minibatches.
        let sets = vec![vec![0; 5], vec![1; 6]];
        let steps = cyclic_schedule(&sets, 4);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1][1].len(), 2);
        assert_eq!(steps[1][0].len(), 1);
    }
}
