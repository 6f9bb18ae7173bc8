//! The tutorial's Monte Carlo π job, bit-compatible with CPython's `random`:
//! MT19937 seeded like `random.seed(int)` and 53-bit `random.random()`.

/// Mersenne Twister MT19937 exactly as CPython's `_randommodule.c` runs it.
pub struct PyRandom {
    state: [u32; 624],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` / `random.seed(seed)` for an integer seed: the
    /// absolute value split into 32-bit words, least significant first.
    pub fn new(seed: u128) -> Self {
        let mut key = Vec::with_capacity(4);
        let mut rest = seed;
        while rest != 0 {
            key.push(rest as u32);
            rest >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        let mut rng = PyRandom { state: [0; 624], index: 624 };
        rng.init_by_array(&key);
        rng
    }

    fn init_genrand(&mut self, seed: u32) {
        self.state[0] = seed;
        for i in 1..624 {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = 624;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let n = 624usize;
        let (mut i, mut j) = (1usize, 0usize);
        let mut k = n.max(key.len());
        while k > 0 {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= n {
                self.state[0] = self.state[n - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
            k -= 1;
        }
        k = n - 1;
        while k > 0 {
            let prev = self.state[i - 1];
            self.state[i] =
                (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= n {
                self.state[0] = self.state[n - 1];
                i = 1;
            }
            k -= 1;
        }
        self.state[0] = 0x8000_0000;
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for i in 0..624 {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % 624] & LOWER);
            let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// `getrandbits(32)`: one tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random.random()`: a double in [0, 1) with 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `random.expovariate(lambd)`.
    pub fn expovariate(&mut self, lambd: f64) -> f64 {
        -(1.0 - self.random()).ln() / lambd
    }
}

/// The tutorial's `throw_darts((darts, seed))`: how many of `darts` points
/// drawn after `random.seed(seed)` fall inside the unit circle.
pub fn throw_darts(darts: u64, seed: u128) -> u64 {
    let mut rng = PyRandom::new(seed);
    let mut in_circle = 0;
    for _ in 0..darts {
        let x = rng.random();
        let y = rng.random();
        if x * x + y * y < 1.0 {
            in_circle += 1;
        }
    }
    in_circle
}

/// First seed of the tutorial's inputs (`i + 192837465`).
pub const FIRST_SEED: u64 = 192_837_465;

/// The tutorial's inputs as `make_inputs` in the Dask peer harness draws
/// them: `max(floor, int(expovariate(1/mean)))` darts from
/// `random.Random(input_seed)`, with `scale` multiplying floor and mean.
pub fn make_inputs(n_inputs: usize, scale: f64, input_seed: u64) -> Vec<(u64, u64)> {
    let mut rng = PyRandom::new(input_seed as u128);
    let floor = ((1_000_000.0 * scale) as i64).max(1) as u64;
    let mean = 10_000_000.0 * scale;
    (0..n_inputs)
        .map(|i| {
            let drawn = rng.expovariate(1.0 / mean) as u64;
            (drawn.max(floor), FIRST_SEED + i as u64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3.11.7 on this machine:
    //   r = random.Random(s); [r.random() for _ in range(3)], r.getrandbits(32)
    #[test]
    fn random_matches_cpython_for_several_seeds() {
        let cases: [(u128, [f64; 3], u32); 6] = [
            (0, [0.8444218515250481, 0.7579544029403025, 0.420571580830845], 1112038970),
            (1, [0.13436424411240122, 0.8474337369372327, 0.763774618976614], 1095513148),
            (42, [0.6394267984578837, 0.025010755222666936, 0.27502931836911926], 958682846),
            (192837465, [0.14898296817814138, 0.914361072033948, 0.5118826010985855], 3109540031),
            (1099511627783, [0.6137037779936511, 0.8149162973309487, 0.9450115087592873], 2449809396),
            (
                123456789012345678901234567890,
                [0.7275084571578186, 0.1595204831720859, 0.011812474780114934],
                1156635141,
            ),
        ];
        for (seed, draws, bits) in cases {
            let mut rng = PyRandom::new(seed);
            for want in draws {
                assert_eq!(rng.random().to_bits(), want.to_bits(), "seed {seed}");
            }
            assert_eq!(rng.next_u32(), bits, "seed {seed}");
        }
    }

    // CPython: def throw(d, s): random.seed(s); count x*x+y*y<1.0 over d pairs
    #[test]
    fn throw_darts_matches_cpython() {
        assert_eq!(throw_darts(1000, 192837465), 769);
        assert_eq!(throw_darts(10000, 192837466), 7845);
        assert_eq!(throw_darts(123457, 192837500), 97013);
    }

    // CPython: make_inputs(5, 0.01, 1) and make_inputs(3, 1.0, 1) from
    // shared/peers/dask/darts.py.
    #[test]
    fn inputs_match_the_dask_harness() {
        assert_eq!(
            make_inputs(5, 0.01, 1),
            vec![
                (14429, 192837465),
                (188015, 192837466),
                (144296, 192837467),
                (29446, 192837468),
                (68405, 192837469)
            ]
        );
        assert_eq!(
            make_inputs(3, 1.0, 1),
            vec![(1442910, 192837465), (18801562, 192837466), (14429689, 192837467)]
        );
    }
}
