//! ATSEs from junction coordinates, for splicing data that come without an event map
//! (STARsolo's SJ output): LeafCutter-style clusters, the connected components of the
//! junctions that share a donor or an acceptor site on the same chromosome and strand.

use std::collections::HashMap;

use crate::error::{invalid_arg, Result};

/// Cluster code of every junction (0-based, numbered in order of first appearance).
/// `chrom`, `start`, `end` and `strand` hold one entry per junction.
pub fn junction_clusters(
    chrom: &[String],
    start: &[i64],
    end: &[i64],
    strand: &[String],
) -> Result<Vec<u32>> {
    let n = chrom.len();
    if start.len() != n || end.len() != n || strand.len() != n {
        return Err(invalid_arg(
            "junctions",
            "needs chromosome, start, end and strand for every junction",
        ));
    }
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    // Each site is keyed by (chromosome, strand, side, position); the first junction seen at a
    // site stands for it.
    let mut sites: HashMap<(&str, &str, bool, i64), usize> = HashMap::new();
    for j in 0..n {
        for (donor, pos) in [(true, start[j]), (false, end[j])] {
            let key = (chrom[j].as_str(), strand[j].as_str(), donor, pos);
            let first = *sites.entry(key).or_insert(j);
            let (a, b) = (root(&mut parent, first), root(&mut parent, j));
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut codes = HashMap::new();
    Ok((0..n)
        .map(|j| {
            let r = root(&mut parent, j);
            let next = codes.len() as u32;
            *codes.entry(r).or_insert(next)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn shared_donors_or_acceptors_chain_junctions_into_one_cluster() {
        // 0-1 share a donor, 1-2 an acceptor; 3 is alone; 4 has 0's donor on the other
        // strand; 5 has 3's coordinates on another chromosome.
        let chrom = s(&["1", "1", "1", "1", "1", "2"]);
        let start = [100, 100, 150, 500, 100, 500];
        let end = [200, 300, 300, 600, 200, 600];
        let strand = s(&["+", "+", "+", "+", "-", "+"]);
        let c = junction_clusters(&chrom, &start, &end, &strand).unwrap();
        assert_eq!(c, vec![0, 0, 0, 1, 2, 3]);
        assert!(junction_clusters(&chrom, &start[..2], &end, &strand).is_err());
    }
}
