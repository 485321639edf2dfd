//! A tiny seeded generator (xorshift64*) for reproducible faults; not for anything secret.

#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        // Zero is xorshift's fixed point; spread the seed so nearby seeds diverge quickly.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_sequence_and_uniform_enough() {
        let mut a = Rng::seeded(7);
        let mut b = Rng::seeded(7);
        let draws: Vec<f64> = (0..10_000).map(|_| a.next_f64()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert_eq!(
            draws[..5],
            (0..5).map(|_| b.next_f64()).collect::<Vec<_>>()[..]
        );
        let below_quarter = draws.iter().filter(|d| **d < 0.25).count();
        assert!((2_200..2_800).contains(&below_quarter), "{below_quarter}");
    }
}
