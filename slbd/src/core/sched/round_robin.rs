//! ROUND_ROBIN: each new flow goes to the next server that is up, in configured order.

use super::{Candidate, Scheduler};

#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    next: usize,
}

impl Scheduler for RoundRobin {
    fn pick(&mut self, servers: &[Candidate]) -> Option<usize> {
        let n = servers.len();
        (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| servers[i].up)
            .inspect(|&i| self.next = (i + 1) % n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{servers, spread, up, up_indices};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spreads_evenly_in_order() {
        let servers = up(&[1, 5, 1]);
        let mut rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&servers).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(spread(&mut rr, &servers, 30), vec![10, 10, 10]);
    }

    #[test]
    fn skips_servers_that_are_down() {
        let mut servers = up(&[1, 1, 1, 1]);
        servers[1].up = false;
        let mut rr = RoundRobin::default();
        assert_eq!(spread(&mut rr, &servers, 30), vec![10, 0, 10, 10]);
    }

    #[test]
    fn survives_the_server_list_shrinking() {
        let mut rr = RoundRobin::default();
        let four = up(&[1, 1, 1, 1]);
        for _ in 0..3 {
            rr.pick(&four);
        }
        let two = up(&[1, 1]);
        assert_eq!(spread(&mut rr, &two, 10), vec![5, 5]);
    }

    proptest! {
        /// Whatever the scheduler picked before (from another server list), the next k cycles
        /// (k × the servers up) go to the up servers in configured order, k flows each.
        #[test]
        fn k_full_cycles_visit_each_up_server_k_times_in_order(
            before in servers(),
            servers in servers(),
            warmup in 0usize..20,
            k in 1usize..5,
        ) {
            let mut rr = RoundRobin::default();
            for _ in 0..warmup {
                rr.pick(&before);
            }
            let up = up_indices(&servers);
            let picks: Vec<usize> = (0..k * up.len()).map(|_| rr.pick(&servers).unwrap()).collect();
            for w in picks.windows(2) {
                let next = up.iter().find(|&&i| i > w[0]).unwrap_or(&up[0]);
                prop_assert_eq!(w[1], *next, "the pick after {} in {:?}", w[0], picks);
            }
            let mut counts = vec![0; servers.len()];
            picks.iter().for_each(|&i| counts[i] += 1);
            let expected: Vec<usize> = servers.iter().map(|s| if s.up { k } else { 0 }).collect();
            prop_assert_eq!(counts, expected, "flows per server over {} cycles", k);
        }
    }
}
