//! Who subscribes to what, and where each publish goes: the channel layout of one load
//! point, fixed before the run (pure, deterministic for a seed).
//!
//! The single-channel workloads ((a), (b), (e), (f), (g)) put every subscriber on
//! `bench:c0 .. bench:c{k-1}` and publish on `bench:c0`. Workload (c), many channels,
//! gives every connection `k` distinct channels drawn uniformly from `bench:c0 ..
//! bench:c{C-1}`, and sends each publish to one channel drawn uniformly or, with a Zipf
//! exponent `s > 0`, with probability proportional to `1 / (i + 1)^s` for `bench:ci`
//! (so `bench:c0` is the hottest).

use ringcast_sim::Rng;

/// Seed of every many-channel layout, so all systems see the same one.
pub const SEED: u64 = 0x7269_6e67_6361_7374;

/// One load point's channels, subscriptions and publish schedule.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Channel names by index.
    pub names: Vec<String>,
    /// Per subscriber, the indices of its channels.
    pub subscriptions: Vec<Vec<u32>>,
    /// Per message (its sequence number), the index of its channel.
    pub schedule: Vec<u32>,
}

fn name(i: usize) -> String {
    format!("bench:c{i}")
}

impl Layout {
    /// Every subscriber on the first `per_conn` channels, every message on the first.
    #[must_use]
    pub fn single(subscribers: usize, per_conn: usize, messages: usize) -> Layout {
        let per_conn = per_conn.max(1);
        let mine: Vec<u32> = (0..per_conn).map(|i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
        Layout {
            names: (0..per_conn).map(name).collect(),
            subscriptions: vec![mine; subscribers],
            schedule: vec![0; messages],
        }
    }

    /// `channels` channels; every subscriber takes `per_conn` distinct ones uniformly at
    /// random (all of them when `per_conn >= channels`); message `i` goes to a channel
    /// drawn uniformly (`zipf == 0`) or from Zipf(`zipf`) over the channels' indices.
    #[must_use]
    pub fn many(subscribers: usize, channels: usize, per_conn: usize, messages: usize, zipf: f64, seed: u64) -> Layout {
        let channels = channels.max(1);
        let per_conn = per_conn.clamp(1, channels);
        let mut rng = Rng::new(seed);
        let index = |i: u64| u32::try_from(i).unwrap_or(u32::MAX);
        let subscriptions = (0..subscribers)
            .map(|_| {
                let mut mine: Vec<u32> = Vec::with_capacity(per_conn);
                while mine.len() < per_conn {
                    let c = index(rng.below(channels as u64));
                    if !mine.contains(&c) {
                        mine.push(c);
                    }
                }
                mine
            })
            .collect();
        let schedule = if zipf > 0.0 {
            // Cumulative weights; a draw is the first channel whose sum passes it.
            let mut sum = 0.0;
            let cdf: Vec<f64> = (1..=channels)
                .map(|rank| {
                    sum += (rank as f64).powf(-zipf);
                    sum
                })
                .collect();
            (0..messages)
                .map(|_| {
                    let u = rng.unit() * sum;
                    index(cdf.partition_point(|&c| c <= u).min(channels - 1) as u64)
                })
                .collect()
        } else {
            (0..messages).map(|_| index(rng.below(channels as u64))).collect()
        };
        Layout { names: (0..channels).map(name).collect(), subscriptions, schedule }
    }

    /// Subscribers per channel, counting those for which `counts(i)` holds.
    #[must_use]
    pub fn fan_out(&self, counts: impl Fn(usize) -> bool) -> Vec<u32> {
        let mut fan = vec![0u32; self.names.len()];
        for (i, mine) in self.subscriptions.iter().enumerate() {
            if counts(i) {
                for &c in mine {
                    if let Some(f) = fan.get_mut(c as usize) {
                        *f += 1;
                    }
                }
            }
        }
        fan
    }

    /// Channel names of subscriber `i`.
    #[must_use]
    pub fn names_of(&self, i: usize) -> Vec<String> {
        self.subscriptions.get(i).map_or_else(Vec::new, |m| m.iter().map(|&c| self.names[c as usize].clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_channel_layout_puts_everyone_on_the_first_channels() {
        let l = Layout::single(3, 2, 5);
        assert_eq!(l.names, ["bench:c0", "bench:c1"]);
        assert_eq!(l.subscriptions, vec![vec![0, 1]; 3]);
        assert_eq!(l.schedule, vec![0; 5]);
        assert_eq!(l.fan_out(|i| i != 1), [2, 2]);
        assert_eq!(l.names_of(2), ["bench:c0", "bench:c1"]);
    }

    #[test]
    fn many_channels_are_distinct_per_connection_and_the_same_for_a_seed() {
        let l = Layout::many(2000, 100, 3, 1000, 0.0, SEED);
        assert_eq!(l.names.len(), 100);
        for mine in &l.subscriptions {
            assert_eq!(mine.len(), 3);
            assert!(mine[0] != mine[1] && mine[1] != mine[2] && mine[0] != mine[2], "{mine:?}");
            assert!(mine.iter().all(|&c| c < 100));
        }
        let again = Layout::many(2000, 100, 3, 1000, 0.0, SEED);
        assert_eq!(l.subscriptions, again.subscriptions);
        assert_eq!(l.schedule, again.schedule);
        // Uniform: every channel has about 2000 x 3 / 100 = 60 subscribers.
        let fan = l.fan_out(|_| true);
        assert_eq!(fan.iter().sum::<u32>(), 6000);
        assert!(fan.iter().all(|&f| (25..=100).contains(&f)), "{fan:?}");
        // More channels per connection than channels: all of them.
        let mut all = Layout::many(1, 2, 5, 0, 0.0, 1).subscriptions.remove(0);
        all.sort_unstable();
        assert_eq!(all, [0, 1]);
    }

    #[test]
    fn uniform_publishing_spreads_and_zipf_concentrates_on_the_first_channels() {
        let messages = 100_000;
        let count = |l: &Layout, c: u32| l.schedule.iter().filter(|&&x| x == c).count() as f64 / messages as f64;
        let uniform = Layout::many(10, 1000, 1, messages, 0.0, SEED);
        assert!(uniform.schedule.iter().all(|&c| c < 1000));
        assert!(count(&uniform, 0) < 0.003, "{}", count(&uniform, 0));
        // Zipf(1) over 1000 channels: P(c0) = 1 / H(1000) = 0.1336, P(c1) = half that.
        let zipf = Layout::many(10, 1000, 1, messages, 1.0, SEED);
        assert!(zipf.schedule.iter().all(|&c| c < 1000));
        let (p0, p1) = (count(&zipf, 0), count(&zipf, 1));
        assert!((p0 - 0.1336).abs() < 0.01, "{p0}");
        assert!((p1 - 0.0668).abs() < 0.01, "{p1}");
    }
}
