//! RATIO: weighted round robin, the smooth variant (nginx's): over any run of picks each server
//! gets its share of the total weight, interleaved rather than in bursts.

use super::{Candidate, Scheduler};

#[derive(Debug, Default)]
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
    use super::super::testing::{spread, up};
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
        /// Over one full cycle (sum of weights picks) every server gets exactly its weight.
        #[test]
        fn one_cycle_gives_each_server_its_weight(weights in prop::collection::vec(1u32..20, 1..8)) {
            let servers = up(&weights);
            let total: u32 = weights.iter().sum();
            let counts = spread(&mut Ratio::default(), &servers, total as usize);
            let expected: Vec<usize> = weights.iter().map(|&w| w as usize).collect();
            prop_assert_eq!(counts, expected);
        }
    }
}
