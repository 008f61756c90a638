//! RATIO: weighted round robin, the smooth variant (nginx's): over any run of picks each server
//! gets its share of the total weight, interleaved rather than in bursts.

use super::{Candidate, Scheduler};

#[derive(Debug, Default, Clone)]
pub struct Ratio {
    /// Each server's running credit; resized when the server list changes.
    current: Vec<i64>,
}

impl Scheduler for Ratio {
    fn pick(&mut self, servers: &[Candidate]) -> Option<usize> {
        if self.current.len() != servers.len() {
            self.current = vec![0; servers.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, s) in servers.iter().enumerate().filter(|(_, s)| s.up) {
            let w = i64::from(s.weight.max(1));
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{servers, spread, up};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn three_to_one_to_one_over_thirty() {
        let servers = up(&[3, 1, 1]);
        assert_eq!(spread(&mut Ratio::default(), &servers, 30), vec![18, 6, 6]);
    }

    #[test]
    fn interleaves_instead_of_bursting() {
        let servers = up(&[5, 1, 1]);
        let mut r = Ratio::default();
        let picks: Vec<_> = (0..7).map(|_| r.pick(&servers).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn a_down_server_gets_nothing_and_the_rest_keep_their_ratio() {
        let mut servers = up(&[2, 1, 1]);
        servers[0].up = false;
        assert_eq!(spread(&mut Ratio::default(), &servers, 10), vec![0, 5, 5]);
    }

    proptest! {
        /// From a fresh scheduler, or one already part-way through its sequence for this list,
        /// k full cycles (k × the total weight up) give each up server exactly k × its weight.
        #[test]
        fn k_full_cycles_give_each_up_server_k_times_its_weight(
            servers in servers(),
            warmup in 0usize..200,
            k in 1usize..4,
        ) {
            let mut r = Ratio::default();
            for _ in 0..warmup {
                r.pick(&servers);
            }
            let total: usize = servers.iter().filter(|s| s.up).map(|s| s.weight as usize).sum();
            let counts = spread(&mut r, &servers, k * total);
            let expected: Vec<usize> = servers
                .iter()
                .map(|s| if s.up { k * s.weight as usize } else { 0 })
                .collect();
            prop_assert_eq!(counts, expected, "flows per server over {} cycles", k);
        }
    }
}
