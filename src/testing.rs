//! Test helpers shared by the unit tests: a seeded random source and the byte
//! mutations the fuzz-style tests apply.

/// xorshift64: a repeatable stream of pseudo-random numbers from a seed.
pub(crate) struct XorShift(u64);

impl XorShift {
    /// The stream for `seed` (not zero).
    pub(crate) fn new(seed: u64) -> XorShift {
        XorShift(seed)
    }

    /// The next number.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `input` with 1 to 8 random edits: a byte replaced, removed or doubled, or the rest
/// cut off.
pub(crate) fn mutate(mut input: Vec<u8>, rng: &mut XorShift) -> Vec<u8> {
    for _ in 0..(rng.next() % 8 + 1) {
        if input.is_empty() {
            break;
        }
        let at = (rng.next() as usize) % input.len();
        match rng.next() % 4 {
            0 => input[at] = rng.next() as u8,
            1 => {
                input.remove(at);
            }
            2 => input.insert(at, input[at]),
            _ => input.truncate(at),
        }
    }
    input
}
