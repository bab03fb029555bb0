//! Which version of each request to send, from the broker's ApiVersions
//! answer: the highest both sides speak, never a guess. Pure.

use std::collections::BTreeMap;

use kafka_protocol::messages::ApiKey;

/// The versions a broker offers, by API key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerVersions {
    ranges: BTreeMap<i16, (i16, i16)>,
}

impl BrokerVersions {
    /// From ApiVersions' (api key, min, max) entries; a nonsensical range
    /// (min above max, negative) is left out, as if not offered.
    pub fn new(entries: impl IntoIterator<Item = (i16, i16, i16)>) -> BrokerVersions {
        let ranges =
            entries.into_iter().filter(|(_, min, max)| *min >= 0 && min <= max).map(|(k, a, b)| (k, (a, b))).collect();
        BrokerVersions { ranges }
    }

    /// The highest version of `api` in both the broker's range and `ours`.
    pub fn pick(&self, api: ApiKey, ours: (i16, i16)) -> Option<i16> {
        let (min, max) = *self.ranges.get(&(api as i16))?;
        let top = max.min(ours.1);
        (top >= min.max(ours.0)).then_some(top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_highest_common_version_or_none() {
        let v = BrokerVersions::new([(ApiKey::OffsetFetch as i16, 0, 9), (ApiKey::FindCoordinator as i16, 0, 3)]);
        assert_eq!(v.pick(ApiKey::OffsetFetch, (1, 8)), Some(8));
        assert_eq!(v.pick(ApiKey::OffsetFetch, (8, 10)), Some(9));
        assert_eq!(v.pick(ApiKey::FindCoordinator, (4, 4)), None, "no batched FindCoordinator");
        assert_eq!(v.pick(ApiKey::ListGroups, (0, 4)), None, "not offered");
        let odd = BrokerVersions::new([(ApiKey::OffsetFetch as i16, 5, 2), (ApiKey::ListGroups as i16, -1, 3)]);
        assert_eq!(odd, BrokerVersions::default());
    }
}
