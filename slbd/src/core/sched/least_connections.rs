//! LEAST_CONNECTIONS: a new flow goes to the server with the fewest live flows per unit of
//! weight. Ties go round robin, so an idle pool is not filled one server at a time.

use super::{Candidate, Scheduler};

#[derive(Debug, Default, Clone)]
pub struct LeastConnections {
    next: usize,
}

impl Scheduler for LeastConnections {
    fn pick(&mut self, servers: &[Candidate]) -> Option<usize> {
        let n = servers.len();
        let mut best: Option<usize> = None;
        // Scan from the round-robin position so equal loads take turns.
        for k in 0..n {
            let i = (self.next + k) % n;
            let s = &servers[i];
            if !s.up {
                continue;
            }
            // live_i / w_i < live_b / w_b, without division.
            let lighter = best.is_none_or(|b| {
                let o = &servers[b];
                u64::from(s.live) * u64::from(o.weight.max(1))
                    < u64::from(o.live) * u64::from(s.weight.max(1))
            });
            if lighter {
                best = Some(i);
            }
        }
        let b = best?;
        self.next = (b + 1) % n;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{servers, up, up_indices};
    use super::*;
    use proptest::prelude::*;

    /// Picks `n` times, counting each pick as a new live flow (as the data path does).
    fn fill(servers: &mut [Candidate], n: usize) -> Vec<u32> {
        let mut lc = LeastConnections::default();
        for _ in 0..n {
            let i = lc.pick(servers).unwrap();
            servers[i].live += 1;
        }
        servers.iter().map(|s| s.live).collect()
    }

    #[test]
    fn new_flows_go_to_the_least_loaded() {
        let mut servers = up(&[1, 1, 1]);
        servers[0].live = 10;
        assert_eq!(fill(&mut servers, 10), vec![10, 5, 5]);
        // Once level, they stay within one flow of each other.
        let after = fill(&mut servers, 11);
        assert_eq!(after.iter().sum::<u32>(), 31);
        assert!(
            after.iter().max().unwrap() - after.iter().min().unwrap() <= 1,
            "{after:?}"
        );
    }

    #[test]
    fn weights_scale_the_share() {
        let mut servers = up(&[3, 1]);
        assert_eq!(fill(&mut servers, 40), vec![30, 10]);
    }

    #[test]
    fn equal_loads_take_turns() {
        let servers = up(&[1, 1, 1]);
        let mut lc = LeastConnections::default();
        let picks: Vec<usize> = (0..6).map(|_| lc.pick(&servers).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_down_server_is_never_chosen_however_idle() {
        let mut servers = up(&[1, 1]);
        servers[0].up = false;
        servers[1].live = 1000;
        assert_eq!(LeastConnections::default().pick(&servers), Some(1));
    }

    proptest! {
        /// The pick has the fewest live flows per unit of weight of the servers up; the
        /// servers tied with it each get one of the next picks (loads unchanged) before any
        /// gets a second, wherever the turn was.
        #[test]
        fn the_pick_has_the_fewest_live_flows_per_weight_and_ties_take_turns(
            servers in servers(),
            warmup in 0usize..20,
        ) {
            let mut lc = LeastConnections::default();
            for _ in 0..warmup {
                lc.pick(&servers);
            }
            let p = lc.pick(&servers).unwrap();
            // live_p / w_p compared with live_j / w_j, without division.
            let load = |i: usize, j: usize| {
                u64::from(servers[i].live) * u64::from(servers[j].weight)
            };
            for j in up_indices(&servers) {
                prop_assert!(
                    load(p, j) <= load(j, p),
                    "picked {} ({:?}) over {} ({:?})", p, servers[p], j, servers[j]
                );
            }
            let tied: Vec<usize> = up_indices(&servers)
                .into_iter()
                .filter(|&j| load(p, j) == load(j, p))
                .collect();
            let mut turns: Vec<usize> = std::iter::once(p)
                .chain((1..tied.len()).map(|_| lc.pick(&servers).unwrap()))
                .collect();
            turns.sort_unstable();
            prop_assert_eq!(turns, tied, "the next picks among equal loads");
        }
    }
}
