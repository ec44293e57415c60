//! NumPy's legacy `RandomState` permutation (MT19937 + masked rejection), needed to hold out
//! exactly the cells scvi-tools holds out for a given seed (scvi.md §7.1.1).

const N: usize = 624;
const M: usize = 397;

/// 32-bit Mersenne Twister seeded with the classic `init_genrand`.
pub struct Mt19937 {
    state: [u32; N],
    index: usize,
}

impl Mt19937 {
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: N }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mut next = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Uniform integer in `[0, max]` by masked rejection, as NumPy's legacy `random_interval`.
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16] {
            mask |= mask >> shift;
        }
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }
}

/// `np.random.RandomState(seed).permutation(n)`.
pub fn numpy_permutation(n: usize, seed: u32) -> Vec<usize> {
    assert!(
        n <= u32::MAX as usize,
        "permutations above 2^32 elements are not supported"
    );
    let mut rng = Mt19937::new(seed);
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u32) as usize;
        perm.swap(i, j);
    }
    perm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_legacy_permutations() {
        assert_eq!(numpy_permutation(10, 0), vec![2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
        assert_eq!(
            numpy_permutation(20, 0),
            vec![18, 1, 19, 8, 10, 17, 6, 13, 4, 2, 5, 14, 9, 7, 16, 11, 3, 0, 15, 12]
        );
        assert_eq!(
            numpy_permutation(10, 42),
            vec![8, 1, 5, 0, 7, 2, 9, 4, 3, 6]
        );
    }

    #[test]
    fn first_output_of_seed_5489_is_the_reference_value() {
        // Reference value of MT19937 with the default seed (Matsumoto & Nishimura).
        assert_eq!(Mt19937::new(5489).next_u32(), 3_499_211_612);
    }
}
