//! `--stale-after-intervals`: when a node stops serving a monitor's result
//! as current. One flag, the same on managers, collectors and standalone,
//! because all three judge results with the same rule
//! (`kollector_core::result::StaleRule`).

use clap::Args;
use kollector_core::result::StaleRule;

#[derive(Args, Clone, Copy, Debug)]
pub struct StaleArgs {
    /// A monitor's result is served as stale (state `stale`, `up` 0, no
    /// Kafka series) once its owner's next result is this many collection
    /// intervals late, counted from the last result (the collection
    /// timeout aside): 3 means three missed collections. 2 to 1000.
    #[arg(long, default_value = "3", value_parser = parse_stale_rule)]
    pub stale_after_intervals: StaleRule,
}

fn parse_stale_rule(s: &str) -> Result<StaleRule, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a whole number of intervals"))?;
    StaleRule::new(n).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_a_count_within_range_only() {
        assert_eq!(parse_stale_rule("5").unwrap().intervals(), 5);
        assert!(parse_stale_rule("1").unwrap_err().contains("2 to 1000"));
        assert!(parse_stale_rule("2.5").unwrap_err().contains("whole number"));
        assert!(parse_stale_rule("-1").is_err());
    }
}
