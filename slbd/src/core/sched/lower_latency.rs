//! LOWER_LATENCY: favour servers with a lower smoothed service latency (TCP connect time from
//! the health checks). A strict "lowest wins" herds every new flow onto one server between two
//! checks (the original's results spread 0 to 8 clients a server); instead each flow is drawn
//! at random with odds inversely proportional to latency plus a 1 ms floor (times weight), so a
//! server twice as slow gets about half the share, near-ties split evenly, and no server that
//! is up starves.

use super::rng::Rng;
use super::{Candidate, Scheduler};

#[derive(Debug, Clone)]
pub struct LowerLatency {
    rng: Rng,
}

impl LowerLatency {
    pub fn new(seed: u64) -> LowerLatency {
        LowerLatency {
            rng: Rng::new(seed),
        }
    }
}

/// Added to every latency before the odds are taken: differences well under a millisecond are
/// connect-time jitter on a LAN, not a slower server, and count as near-ties.
pub const FLOOR_US: u64 = 1000;

/// Latency assumed for a server with no measurement yet: the best measured one, so a new
/// server is tried at a fair share rather than flooded or ignored.
fn latency_or(s: &Candidate, best: u32) -> u64 {
    u64::from(s.latency_us.unwrap_or(best)) + FLOOR_US
}

impl Scheduler for LowerLatency {
    fn pick(&mut self, servers: &[Candidate]) -> Option<usize> {
        let best = servers
            .iter()
            .filter(|s| s.up)
            .filter_map(|s| s.latency_us)
            .min()
            .unwrap_or(1);
        // Odds as integers: weight * 2^30 / (latency + floor).
        let odds = |s: &Candidate| -> u64 {
            if !s.up {
                return 0;
            }
            // An up server always keeps some chance, however slow.
            ((u64::from(s.weight.max(1)) << 30) / latency_or(s, best)).max(1)
        };
        let total: u64 = servers.iter().map(odds).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = ((u128::from(self.rng.next_u64()) * u128::from(total)) >> 64) as u64;
        for (i, s) in servers.iter().enumerate() {
            let o = odds(s);
            if ticket < o {
                return Some(i);
            }
            ticket -= o;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{servers, spread, up};
    use super::*;
    use proptest::prelude::*;

    fn with_latency(lat: &[Option<u32>]) -> Vec<Candidate> {
        let mut s = up(&vec![1; lat.len()]);
        for (c, l) in s.iter_mut().zip(lat) {
            c.latency_us = *l;
        }
        s
    }

    #[test]
    fn share_is_inverse_to_latency() {
        // 1 ms, 1 ms, 7 ms, plus the 1 ms floor: odds 1/2 : 1/2 : 1/8, i.e. 4 : 4 : 1 of 9.
        let servers = with_latency(&[Some(1000), Some(1000), Some(7000)]);
        let counts = spread(&mut LowerLatency::new(1), &servers, 9000);
        for (got, want) in counts.iter().zip([4000, 4000, 1000]) {
            assert!((*got as i64 - want).abs() < 250, "{counts:?}");
        }
    }

    #[test]
    fn near_ties_split_evenly_instead_of_herding() {
        let servers = with_latency(&[Some(1000), Some(1010), Some(990), Some(1000)]);
        let counts = spread(&mut LowerLatency::new(2), &servers, 4000);
        assert!(counts.iter().all(|c| (900..1100).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_slow_server_gets_fewer_but_is_not_starved() {
        // 0.5 ms vs 50 ms: odds 1/1.5 vs 1/51, about 1.5 % for the slow one.
        let servers = with_latency(&[Some(500), Some(500), Some(50_000)]);
        let counts = spread(&mut LowerLatency::new(3), &servers, 20_000);
        assert!(counts[2] > 150 && counts[2] < 450, "{counts:?}");
    }

    #[test]
    fn sub_millisecond_differences_are_near_ties() {
        // 0.1 ms vs 0.3 ms: with the floor, 1.1 vs 1.3, a 54 : 46 split rather than 75 : 25.
        let servers = with_latency(&[Some(100), Some(300)]);
        let counts = spread(&mut LowerLatency::new(6), &servers, 10_000);
        assert!((5100..5700).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn unmeasured_servers_get_the_best_servers_share() {
        let servers = with_latency(&[Some(1000), None]);
        let counts = spread(&mut LowerLatency::new(4), &servers, 2000);
        assert!((800..1200).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn down_servers_get_nothing() {
        let mut servers = with_latency(&[Some(100), Some(100)]);
        servers[0].up = false;
        assert_eq!(
            spread(&mut LowerLatency::new(5), &servers, 100),
            vec![0, 100]
        );
    }

    /// How far `n` draws with odds `p` may stray from `n × p` and still pass, set so that a
    /// correct scheduler fails with probability under 1e-9 (Bernstein's inequality for a sum
    /// of independent 0/1 draws; about 6.5 standard deviations for large counts, and a few
    /// draws of slack for tiny ones, where the normal approximation fails).
    fn tolerance(n: usize, p: f64) -> f64 {
        let l = (2.0 / 1e-9f64).ln();
        let variance = n as f64 * p * (1.0 - p);
        l / 3.0 + (l * l / 9.0 + 2.0 * l * variance).sqrt()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Over 20,000 picks each server's share is within a statistical tolerance of the
        /// promised odds: weight / (latency + 1 ms), an unmeasured server counted at the best
        /// measured latency; a down server gets nothing.
        #[test]
        fn shares_follow_the_promised_odds_within_statistical_tolerance(
            seed in any::<u64>(),
            servers in servers(),
        ) {
            const N: usize = 20_000;
            let best = servers.iter().filter(|s| s.up).filter_map(|s| s.latency_us).min();
            let odds: Vec<f64> = servers
                .iter()
                .map(|s| match (s.up, s.latency_us.or(best)) {
                    (false, _) => 0.0,
                    // No server up is measured: all count alike, by weight.
                    (true, None) => f64::from(s.weight),
                    (true, Some(l)) => f64::from(s.weight) / (f64::from(l) + FLOOR_US as f64),
                })
                .collect();
            let total: f64 = odds.iter().sum();
            let counts = spread(&mut LowerLatency::new(seed), &servers, N);
            for (i, (&got, o)) in counts.iter().zip(&odds).enumerate() {
                let p = o / total;
                let want = N as f64 * p;
                let tol = tolerance(N, p);
                prop_assert!(
                    (got as f64 - want).abs() <= tol,
                    "server {} ({:?}) got {} of {}, promised {:.1} ± {:.1}",
                    i, servers[i], got, N, want, tol
                );
                if p == 0.0 {
                    prop_assert_eq!(got, 0, "down server {} was picked", i);
                }
            }
        }
    }
}
