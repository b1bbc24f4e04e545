//! Benchmarks and the load tools for lsm. The criterion benchmarks live in `benches/`, the
//! measurement tools in `src/bin/`; this library holds what they share, and the load
//! tool `lsm_bench` ([`load`]).

pub mod apply;
pub mod load;

/// A well-known valid name.
pub fn name<T: std::str::FromStr<Err = lsm_core::NameError>>(s: &str) -> T {
    s.parse().expect("valid name")
}

/// SplitMix64 finalizer: a cheap, deterministic scramble of `x`.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
