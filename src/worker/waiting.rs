//! The images a worker has claimed but not started: in claim order (`ready`), and parked per
//! busy origin, where they start round robin over their jobs once the origin has room.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::queue::ClaimedImage;

/// Parked images per slot past which a worker claims no more until some start: parked images
/// are leased and heartbeated like running ones.
const PARK_PER_SLOT: usize = 4;

/// How much of an origin's work a worker keeps parked: past one round of slots of its images,
/// an image whose origin would take longer than this to start the ones parked before it goes
/// back to the queue for a while instead.
const PARK_HORIZON: Duration = Duration::from_secs(2);

/// How long an origin's images are parked before their pace is judged.
const PARK_PATIENCE: Duration = Duration::from_secs(1);

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
pub(super) struct Parked {
    len: usize,
    by_job: HashMap<i64, VecDeque<ClaimedImage>>,
    /// Jobs with parked images, the next to start first.
    turns: VecDeque<i64>,
    /// Since when this origin has had images parked here.
    since: Instant,
    /// How many of them have started since.
    starts: u32,
}

impl Default for Parked {
    fn default() -> Self {
        Parked {
            len: 0,
            by_job: HashMap::new(),
            turns: VecDeque::new(),
            since: Instant::now(),
            starts: 0,
        }
    }
}

impl Parked {
    /// How long the parked images would take to start at the pace they have been starting
    /// since this origin had some parked (a host that hangs starts none: the wait so far
    /// counts). Zero for the first [`PARK_PATIENCE`]: a burst of claims is not a pace.
    fn drain_estimate(&self, now: Instant) -> Duration {
        let busy = now - self.since;
        if busy < PARK_PATIENCE {
            return Duration::ZERO;
        }
        busy / (self.starts + 1) * self.len as u32
    }

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
        if image.is_some() {
            self.len -= 1;
            self.starts = self.starts.saturating_add(1);
        }
        if queue.is_empty() {
            self.by_job.remove(&job);
        } else {
            self.turns.push_back(job);
        }
        image
    }

    /// The image claimed last of the job with the most parked (giving back the tail).
    fn pop_latest(&mut self) -> Option<ClaimedImage> {
        let (&job, _) = self.by_job.iter().max_by_key(|(_, q)| q.len())?;
        let queue = self.by_job.get_mut(&job)?;
        let image = queue.pop_back();
        if queue.is_empty() {
            self.by_job.remove(&job);
            self.turns.retain(|&j| j != job);
        }
        self.len -= usize::from(image.is_some());
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

    /// The parked images to give back: of each origin with more than a round of slots parked
    /// that would take longer than [`PARK_HORIZON`] to start them, those past the round (the
    /// ones claimed last). Parked before their origin's pace was known, they would otherwise
    /// fill the parking and stop the claims.
    pub(super) fn overstayed(&mut self) -> Vec<ClaimedImage> {
        let round = self.park_cap / PARK_PER_SLOT;
        if self.parked_count <= round {
            return Vec::new();
        }
        let now = Instant::now();
        let mut out = Vec::new();
        for parked in self.parked.values_mut() {
            if parked.len > round && parked.drain_estimate(now) > PARK_HORIZON {
                while parked.len > round {
                    match parked.pop_latest() {
                        Some(image) => out.push(image),
                        None => break,
                    }
                }
            }
        }
        self.parked_count -= out.len();
        out
    }

    /// Parks `image` until its origin has room, or gives it back when a round of slots of
    /// its origin's images is parked already and would take more than [`PARK_HORIZON`] to
    /// start: so the images of a slow or hanging origin cannot fill the parking and keep
    /// this worker from claiming past them, to the other origins' images behind.
    pub(super) fn park(&mut self, origin: String, image: ClaimedImage) -> Result<(), ClaimedImage> {
        let parked = self.parked.entry(origin).or_default();
        if parked.len >= self.park_cap / PARK_PER_SLOT
            && parked.drain_estimate(Instant::now()) > PARK_HORIZON
        {
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

    fn image(id: i64, job_id: i64) -> ClaimedImage {
        ClaimedImage {
            id,
            job_id,
            seq: id,
            store_id: "S".into(),
            url: "u".into(),
            attempts: 1,
            expiries: 0,
            crashes: 0,
        }
    }

    #[test]
    fn an_origin_that_starts_nothing_gets_no_more_than_a_round_of_slots_parked() {
        let slots = 4;
        let mut waiting = Waiting::new(slots, slots);
        let park = |w: &mut Waiting, origin: &str, id| w.park(origin.to_string(), image(id, 1));
        // A burst: a round of slots and more is parked, the pace not judged yet.
        for id in 0..6 {
            assert!(park(&mut waiting, "hangs", id).is_ok());
            assert!(park(&mut waiting, "fast", 100 + id).is_ok());
        }
        // A while later: the hanging origin has started none, the fast one nearly all.
        for parked in waiting.parked.values_mut() {
            parked.since -= PARK_PATIENCE * 2;
        }
        for _ in 0..5 {
            waiting.unpark("fast").unwrap();
        }
        for id in 0..40 {
            assert!(park(&mut waiting, "fast", 200 + id).is_ok(), "image {id}");
            waiting.unpark("fast").unwrap();
        }
        // Past a round of slots, the fast origin still parks (its images start soon) ...
        for id in 0..6 {
            assert!(park(&mut waiting, "fast", 300 + id).is_ok(), "image {id}");
        }
        assert_eq!(waiting.parked["fast"].len, 7);
        // ... the hanging one's next image goes back to the queue, and so do those parked
        // past a round of slots, the last claimed first.
        assert!(park(&mut waiting, "hangs", 6).is_err());
        let back: Vec<i64> = waiting.overstayed().iter().map(|i| i.id).collect();
        assert_eq!(back, [5, 4]);
        assert_eq!(waiting.parked["hangs"].len, 4);
        assert_eq!(waiting.parked_count, 4 + 7);
        let order: Vec<i64> = std::iter::from_fn(|| waiting.unpark("hangs"))
            .map(|i| i.id)
            .collect();
        assert_eq!(order, [0, 1, 2, 3]);
    }

    #[test]
    fn a_busy_origins_parked_images_start_round_robin_over_their_jobs() {
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
