//! A small parser for Prometheus text exposition, so tests can assert on
//! exact series and values from a real `/metrics` scrape.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            return Ok(labels);
        }
        if chars.next() != Some('"') {
            return Err(format!("label {key} has no quoted value in {s:?}"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => return Err("dangling escape".into()),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err(format!("unterminated value in {s:?}")),
            }
        }
        labels.insert(key, value);
    }
}

impl Metrics {
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| format!("bad line {line:?}"))?;
            let value: f64 = value.parse().map_err(|_| format!("bad value in {line:?}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').ok_or_else(|| format!("bad labels in {line:?}"))?;
                    (name.to_string(), parse_labels(body)?)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push(Sample { name, labels, value });
        }
        Ok(Metrics { samples })
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    /// The value of the single sample of `name` matching `labels`, if exactly one exists.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.find(name, labels).as_slice() {
            [one] => Some(one.value),
            _ => None,
        }
    }

    /// Every sample carrying `label=value`.
    pub fn with_label(&self, label: &str, value: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.labels.get(label).map(String::as_str) == Some(value)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_escapes() {
        let m = Metrics::parse("# HELP x y\nx{a=\"1\",b=\"q\\\"z\"} 3\ny 4.5\n").unwrap();
        assert_eq!(m.value("x", &[("a", "1")]), Some(3.0));
        assert_eq!(m.find("x", &[])[0].labels["b"], "q\"z");
        assert_eq!(m.value("y", &[]), Some(4.5));
    }
}
