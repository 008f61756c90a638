//! Prometheus metrics: a plain model of metric families (name, help, type, labelled samples)
//! that slbd and amgr build from their own counters at scrape time, and its encoding in the
//! OpenMetrics text format by `prometheus-client` (so the exposition format is the maintained
//! crate's, not ours). Building families is pure; [`http`] is the shell that serves them.
//! slbd's families are in `slbd::daemon::metrics`, amgr's in `amgr::metrics`.

pub mod http;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label name and value pairs of one sample.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A counter: only ever grows while the process lives.
    Counter(u64),
    Gauge(f64),
}

/// One metric family: a name (counters without their `_total`, which the encoding adds) and
/// its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<(Labels, Value)>,
    counter: bool,
}

impl Family {
    pub fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Vec::new(),
            counter: true,
        }
    }

    pub fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Vec::new(),
            counter: false,
        }
    }

    /// Adds a counter sample.
    pub fn count(&mut self, labels: Labels, n: u64) {
        debug_assert!(self.counter, "{} is a gauge", self.name);
        self.samples.push((clean(labels), Value::Counter(n)));
    }

    /// Adds a gauge sample.
    pub fn set(&mut self, labels: Labels, v: f64) {
        debug_assert!(!self.counter, "{} is a counter", self.name);
        self.samples.push((clean(labels), Value::Gauge(v)));
    }
}

/// prometheus-client writes label values as given, and a `"`, `\` or newline would break the
/// exposition; slb's values are names and addresses, so such a character can only come from
/// something odd, which is replaced rather than escaped.
fn clean(mut labels: Labels) -> Labels {
    for (_, v) in &mut labels {
        if v.contains(['"', '\\', '\n']) {
            *v = v.replace(['"', '\\', '\n'], "_");
        }
    }
    labels
}

#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let kind = if f.counter {
                ConstCounter::new(0u64).metric_type()
            } else {
                ConstGauge::new(0f64).metric_type()
            };
            let mut family = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, value) in &f.samples {
                let sample = family.encode_family(labels)?;
                match *value {
                    Value::Counter(n) => ConstCounter::new(n).encode(sample)?,
                    Value::Gauge(v) => ConstGauge::new(v).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// The families in the OpenMetrics text format (ends with `# EOF`).
pub fn encode(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(families)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The value of the first sample of `name` (as exposed, `_total` included) whose labels include
/// all of `labels`, from exposition text. For tests and tools reading a scrape.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name, labels).next()
}

/// Every such sample's value, in order.
pub fn samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Vec<Family> {
        let mut packets = Family::counter("slb_server_packets", "Packets forwarded.");
        packets.count(
            vec![
                ("server", "172.16.0.2:80".into()),
                ("direction", "in".into()),
            ],
            42,
        );
        packets.count(
            vec![
                ("server", "172.16.0.3:80".into()),
                ("direction", "in".into()),
            ],
            7,
        );
        let mut up = Family::gauge("slb_server_up", "1 when in rotation.");
        up.set(vec![("server", "172.16.0.2:80".into())], 1.0);
        vec![packets, up]
    }

    #[test]
    fn counters_get_total_and_types_and_help_are_declared() {
        let text = encode(example());
        assert!(
            text.contains("# HELP slb_server_packets Packets forwarded."),
            "{text}"
        );
        assert!(text.contains("# TYPE slb_server_packets counter"), "{text}");
        assert!(text.contains("# TYPE slb_server_up gauge"), "{text}");
        assert!(
            text.contains("slb_server_packets_total{server=\"172.16.0.2:80\",direction=\"in\"} 42"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn a_scrape_reads_back_what_was_encoded() {
        let text = encode(example());
        assert_eq!(
            sample(
                &text,
                "slb_server_packets_total",
                &[("server", "172.16.0.3:80")]
            ),
            Some(7.0)
        );
        assert_eq!(sample(&text, "slb_server_up", &[]), Some(1.0));
        assert_eq!(
            sample(
                &text,
                "slb_server_packets_total",
                &[("server", "10.9.9.9:1")]
            ),
            None
        );
        assert_eq!(sample(&text, "slb_server_packets", &[]), None);
    }

    #[test]
    fn label_values_cannot_break_the_exposition() {
        let mut f = Family::gauge("x", "h");
        f.set(vec![("reason", "a\"b\\c\nd".into())], 1.0);
        let text = encode(vec![f]);
        assert!(text.contains(r#"x{reason="a_b_c_d"} 1"#), "{text}");
        assert_eq!(sample(&text, "x", &[("reason", "a_b_c_d")]), Some(1.0));
    }

    #[test]
    fn an_empty_family_is_still_declared() {
        let text = encode(vec![Family::counter("amgr_failovers", "h")]);
        assert!(text.contains("# TYPE amgr_failovers counter"), "{text}");
    }
}
