//! Shared by every crate's property tests: one configuration, so CI runs a
//! fixed number of cases from a fixed seed (a failure reproduces) and never
//! writes regression files into the tree.

use proptest::test_runner::{Config, RngSeed};

/// 512 cases from a fixed seed, no failure persistence.
pub fn proptest_config() -> Config {
    Config { cases: 512, failure_persistence: None, rng_seed: RngSeed::Fixed(0x6b6f6c6c), ..Config::default() }
}
