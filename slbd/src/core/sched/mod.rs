//! Choosing a real server for a new flow. Pure: each algorithm is a small synchronous
//! [`Scheduler`] that sees the candidate servers and returns an index; it never sees packets,
//! sockets or clocks.

mod least_connections;
mod lower_latency;
pub mod maglev;
mod random;
mod ratio;
mod rng;
mod round_robin;

use std::fmt;
use std::str::FromStr;

pub use least_connections::LeastConnections;
pub use lower_latency::LowerLatency;
pub use maglev::Maglev;
pub use random::Random;
pub use ratio::Ratio;
pub use round_robin::RoundRobin;

/// The scheduling algorithms a service can name in `slb_conf.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RoundRobin,
    Ratio,
    Random,
    LeastConnections,
    LowerLatency,
    Maglev,
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::RoundRobin,
        Algorithm::Ratio,
        Algorithm::Random,
        Algorithm::LeastConnections,
        Algorithm::LowerLatency,
        Algorithm::Maglev,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "ROUND_ROBIN",
            Algorithm::Ratio => "RATIO",
            Algorithm::Random => "RANDOM",
            Algorithm::LeastConnections => "LEAST_CONNECTIONS",
            Algorithm::LowerLatency => "LOWER_LATENCY",
            Algorithm::Maglev => "MAGLEV",
        }
    }

    /// A fresh scheduler; `seed` feeds the randomised ones, `maglev` the consistent one.
    pub fn scheduler(self, seed: u64, maglev: maglev::Settings) -> Box<dyn Scheduler> {
        match self {
            Algorithm::RoundRobin => Box::new(RoundRobin::default()),
            Algorithm::Ratio => Box::new(Ratio::default()),
            Algorithm::Random => Box::new(Random::new(seed)),
            Algorithm::LeastConnections => Box::new(LeastConnections::default()),
            Algorithm::LowerLatency => Box::new(LowerLatency::new(seed)),
            Algorithm::Maglev => Box::new(Maglev::new(maglev)),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a scheduling algorithm ({})", known())]
pub struct UnknownAlgorithm {
    given: String,
}

fn known() -> String {
    let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    names.join(", ")
}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;
    fn from_str(s: &str) -> Result<Self, UnknownAlgorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownAlgorithm {
                given: s.to_string(),
            })
    }
}

/// What a scheduler may know about one real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub weight: u32,
    /// False while the server is out of rotation; such a server is never chosen.
    pub up: bool,
    /// Live flows to the server now.
    pub live: u32,
    /// Smoothed service latency (TCP connect time), once measured.
    pub latency_us: Option<u32>,
    /// The server's identity, the same on every balancer ([`maglev::server_id`]).
    pub key: u64,
}

/// What a scheduler may know about the new flow itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The flow's keyed hash (the service's [`maglev::Settings::flow_hash`]).
    pub hash: u64,
    /// Milliseconds on the data plane's clock.
    pub now_ms: u64,
    /// A server in rotation that just failed this flow's handshake, marked not up among the
    /// candidates: consistent hashing keeps it in its table and skips it for this flow only.
    pub avoid: Option<usize>,
}

/// Picks the index of the server a new flow goes to, or `None` when no server is up.
pub trait Scheduler: Send + Fork {
    fn pick(&mut self, servers: &[Candidate]) -> Option<usize>;

    /// The choice for one flow: the consistent-hashing scheduler looks at the flow, the
    /// others do not.
    fn pick_flow(&mut self, servers: &[Candidate], _flow: &Flow) -> Option<usize> {
        self.pick(servers)
    }
}

/// A copy of a scheduler in its current state: what it would pick next, asked without moving
/// the real one on (`slbctl explain`).
pub trait Fork {
    fn fork(&self) -> Box<dyn Scheduler>;
}

impl<T: Scheduler + Clone + 'static> Fork for T {
    fn fork(&self) -> Box<dyn Scheduler> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use proptest::prelude::*;

    pub fn up(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .map(|&weight| Candidate {
                weight,
                up: true,
                live: 0,
                latency_us: None,
                key: 0,
            })
            .collect()
    }

    /// How many of `n` picks each server got.
    pub fn spread(s: &mut dyn Scheduler, servers: &[Candidate], n: usize) -> Vec<usize> {
        let mut counts = vec![0; servers.len()];
        for _ in 0..n {
            counts[s.pick(servers).expect("a server is up")] += 1;
        }
        counts
    }

    /// The indices of the servers that are up.
    pub fn up_indices(servers: &[Candidate]) -> Vec<usize> {
        (0..servers.len()).filter(|&i| servers[i].up).collect()
    }

    /// One random server: weight 1-100, up or down, a live count (often small, so equal loads
    /// happen) and a latency (often under 2 ms, where the floor matters; sometimes unmeasured).
    pub fn candidate() -> impl Strategy<Value = Candidate> {
        (
            1u32..=100,
            any::<bool>(),
            prop_oneof![0u32..4, 0u32..1000],
            prop::option::weighted(0.8, prop_oneof![0u32..2_000, 0u32..200_000]),
            any::<u64>(),
        )
            .prop_map(|(weight, up, live, latency_us, key)| Candidate {
                weight,
                up,
                live,
                latency_us,
                key,
            })
    }

    /// 1-16 random servers, at least one of them up.
    pub fn servers() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec(candidate(), 1..=16)
            .prop_flat_map(|s| {
                let n = s.len();
                (Just(s), 0..n)
            })
            .prop_map(|(mut s, i)| {
                s[i].up = true;
                s
            })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::candidate;
    use super::*;
    use proptest::prelude::*;

    /// MAGLEV over a table that builds in microseconds, so that these tests can rebuild it
    /// hundreds of times.
    fn small_table() -> maglev::Settings {
        maglev::Settings {
            table_size: maglev::MIN_TABLE_SIZE,
            ..Default::default()
        }
    }

    #[test]
    fn parses_names_case_insensitively() {
        assert_eq!(
            "round_robin".parse::<Algorithm>(),
            Ok(Algorithm::RoundRobin)
        );
        assert_eq!("RATIO".parse::<Algorithm>(), Ok(Algorithm::Ratio));
        assert_eq!(
            "LOWEST".parse::<Algorithm>().unwrap_err().to_string(),
            r#""LOWEST" is not a scheduling algorithm (ROUND_ROBIN, RATIO, RANDOM, LEAST_CONNECTIONS, LOWER_LATENCY, MAGLEV)"#
        );
    }

    #[test]
    fn no_algorithm_picks_from_an_empty_or_all_down_set() {
        for a in Algorithm::ALL {
            let mut s = a.scheduler(1, small_table());
            assert_eq!(s.pick(&[]), None, "{a}");
            let down = [Candidate {
                weight: 1,
                up: false,
                live: 0,
                latency_us: None,
                key: 0,
            }; 3];
            assert_eq!(s.pick(&down), None, "{a}");
        }
    }

    proptest! {
        /// Server lists that change between picks (servers added, removed, up, down, none up,
        /// none at all), as a reload or a health check changes them under a live scheduler.
        #[test]
        fn no_algorithm_picks_a_down_server_or_past_the_end_and_none_only_when_none_is_up(
            seed in any::<u64>(),
            sets in prop::collection::vec(prop::collection::vec(candidate(), 0..=16), 1..12),
            picks in 1usize..8,
        ) {
            for a in Algorithm::ALL {
                let mut s = a.scheduler(seed, small_table());
                for servers in &sets {
                    let any_up = servers.iter().any(|c| c.up);
                    for _ in 0..picks {
                        match s.pick(servers) {
                            None => prop_assert!(!any_up, "{} picked nothing from {:?}", a, servers),
                            Some(i) => {
                                prop_assert!(i < servers.len(), "{} picked {} of {}", a, i, servers.len());
                                prop_assert!(servers[i].up, "{} picked down server {} of {:?}", a, i, servers);
                            }
                        }
                    }
                }
            }
        }
    }
}
