//! RANDOM: the original's "random without repetition inside a cycle": servers are visited in
//! a fresh random order each cycle, so over a cycle every server that is up gets one flow.

use super::rng::Rng;
use super::{Candidate, Scheduler};

#[derive(Debug, Clone)]
pub struct Random {
    rng: Rng,
    order: Vec<usize>,
    at: usize,
}

impl Random {
    pub fn new(seed: u64) -> Random {
        Random {
            rng: Rng::new(seed),
            order: Vec::new(),
            at: 0,
        }
    }

    fn shuffle(&mut self, n: usize) {
        self.order = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.rng.below(i + 1);
            self.order.swap(i, j);
        }
        self.at = 0;
    }
}

impl Scheduler for Random {
    fn pick(&mut self, servers: &[Candidate]) -> Option<usize> {
        if !servers.iter().any(|s| s.up) {
            return None;
        }
        if self.order.len() != servers.len() {
            self.shuffle(servers.len());
        }
        loop {
            if self.at >= self.order.len() {
                self.shuffle(servers.len());
            }
            let i = self.order[self.at];
            self.at += 1;
            if servers[i].up {
                return Some(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{servers, spread, up, up_indices};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_cycle_visits_each_server_once() {
        let servers = up(&[1; 5]);
        let mut r = Random::new(7);
        for _ in 0..20 {
            let mut cycle: Vec<usize> = (0..5).map(|_| r.pick(&servers).unwrap()).collect();
            cycle.sort();
            assert_eq!(cycle, vec![0, 1, 2, 3, 4]);
        }
    }

    #[test]
    fn orders_differ_between_cycles() {
        let servers = up(&[1; 6]);
        let mut r = Random::new(11);
        let cycles: Vec<Vec<usize>> = (0..10)
            .map(|_| (0..6).map(|_| r.pick(&servers).unwrap()).collect())
            .collect();
        let distinct: std::collections::HashSet<_> = cycles.iter().collect();
        assert!(distinct.len() >= 8, "{cycles:?}");
    }

    #[test]
    fn down_servers_are_skipped_and_the_rest_stay_even() {
        let mut servers = up(&[1; 4]);
        servers[2].up = false;
        assert_eq!(
            spread(&mut Random::new(3), &servers, 300),
            vec![100, 100, 0, 100]
        );
    }

    proptest! {
        /// Each cycle (as many picks as servers up) visits every up server exactly once.
        #[test]
        fn every_cycle_of_picks_visits_each_up_server_once(
            seed in any::<u64>(),
            servers in servers(),
            k in 1usize..6,
        ) {
            let mut r = Random::new(seed);
            let up = up_indices(&servers);
            for cycle in 0..k {
                let mut picks: Vec<usize> = (0..up.len()).map(|_| r.pick(&servers).unwrap()).collect();
                picks.sort_unstable();
                prop_assert_eq!(&picks, &up, "cycle {}", cycle);
            }
        }
    }
}
