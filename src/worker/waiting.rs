//! The images a worker has claimed but not started: in claim order (`ready`), and parked per
//! busy origin, where they start round robin over their jobs once the origin has room.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::queue::ClaimedImage;

/// Parked images per slot past which a worker claims no more until some start: parked images
/// are leased and heartbeated like running ones.
const PARK_PER_SLOT: usize = 4;

/// Images claimed and not started: in claim order, and parked per busy origin.
pub(super) struct Waiting {
    pub(super) ready: VecDeque<ClaimedImage>,
    pub(super) parked: HashMap<String, Parked>,
    parked_count: usize,
    park_cap: usize,
}

/// One busy origin's parked images, started round robin over their jobs (each job's in
/// claim order). In claim order alone, a job whose images arrive behind a hundred parked
/// images of another tenant's jobs on the same slow host would wait for all of them (a
/// hostile pass: 28 s behind 3 s downloads); taking turns, it waits for one image of each
/// job ahead of it.
#[derive(Default)]
pub(super) struct Parked {
    len: usize,
    by_job: HashMap<i64, VecDeque<ClaimedImage>>,
    /// Jobs with parked images, the next to start first.
    turns: VecDeque<i64>,
}

impl Parked {
    fn push(&mut self, image: ClaimedImage) {
        let job = image.job_id;
        let queue = self.by_job.entry(job).or_default();
        if queue.is_empty() {
            self.turns.push_back(job);
        }
        queue.push_back(image);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<ClaimedImage> {
        let job = self.turns.pop_front()?;
        let queue = self.by_job.get_mut(&job)?;
        let image = queue.pop_front();
        self.len -= usize::from(image.is_some());
        if queue.is_empty() {
            self.by_job.remove(&job);
        } else {
            self.turns.push_back(job);
        }
        image
    }

    fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

impl Waiting {
    /// Room for a claim of `target` images, and parking for `PARK_PER_SLOT` per slot.
    pub(super) fn new(target: usize, concurrency: usize) -> Self {
        Waiting {
            ready: VecDeque::with_capacity(target),
            parked: HashMap::new(),
            parked_count: 0,
            park_cap: concurrency * PARK_PER_SLOT,
        }
    }

    /// Whether to claim more: the claimed buffer is low, the parking not full, and either a
    /// slot is free (perhaps for an origin not seen yet) or nothing at all is waiting here.
    pub(super) fn wants_more(&self, target: usize, slots: &Semaphore) -> bool {
        self.ready.len() <= target / 2
            && self.parked_count < self.park_cap
            && (slots.available_permits() > 0 || self.is_empty())
    }

    /// Nothing claimed waits here, ready or parked.
    pub(super) fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.parked_count == 0
    }

    /// Parks `image` until its origin has room, or gives it back when its origin already
    /// holds half the parking: so the images of one slow or hanging origin cannot fill it all
    /// and keep this worker from claiming past them, to the other origins' images behind.
    pub(super) fn park(&mut self, origin: String, image: ClaimedImage) -> Result<(), ClaimedImage> {
        let parked = self.parked.entry(origin).or_default();
        if parked.len >= self.park_cap / 2 {
            return Err(image);
        }
        parked.push(image);
        self.parked_count += 1;
        Ok(())
    }

    /// Every image waiting here, ready or parked, by id (for handing them back).
    pub(super) fn into_ids(self) -> Vec<i64> {
        let parked = self
            .parked
            .into_values()
            .flat_map(|p| p.by_job.into_values().flatten());
        self.ready.into_iter().chain(parked).map(|i| i.id).collect()
    }

    pub(super) fn unpark(&mut self, origin: &str) -> Option<ClaimedImage> {
        let parked = self.parked.get_mut(origin)?;
        let image = parked.pop();
        if parked.is_empty() {
            self.parked.remove(origin);
        }
        if image.is_some() {
            self.parked_count -= 1;
        }
        image
    }
}

/// The wait before claiming again after `n` claims in a row of which nothing could start
/// (everything waits for a busy origin): doubling from 50 ms to 1 s, so images of other
/// origins further down the queue are reached soon, without claiming in a tight loop.
pub(super) fn fruitless_pause(n: u32) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(2u32.saturating_pow(n.clamp(1, 16) - 1))
        .min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_origins_parked_images_start_round_robin_over_their_jobs() {
        let image = |id: i64, job_id: i64| ClaimedImage {
            id,
            job_id,
            seq: id,
            store_id: "S".into(),
            url: "u".into(),
            attempts: 1,
            expiries: 0,
            crashes: 0,
        };
        let mut parked = Parked::default();
        for id in 1..=5 {
            parked.push(image(id, 7));
        }
        parked.push(image(6, 9));
        parked.push(image(7, 9));
        let order: Vec<i64> = std::iter::from_fn(|| parked.pop()).map(|i| i.id).collect();
        assert_eq!(order, [1, 6, 2, 7, 3, 4, 5]);
        assert!(parked.is_empty());
    }
}
