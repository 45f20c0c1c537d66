//! The requested files waiting for a content worker: filled by the tree thread as verdicts
//! arrive, emptied by the workers.
//!
//! Many small files make a job every few microseconds. A channel of a few places made the tree
//! thread and the workers take turns, a wake-up (and often a context switch) for each file at
//! both ends of the queue. This queue holds up to [`QUEUED`] jobs, and wakes a worker only when
//! one is waiting; a worker that finds jobs takes them without sleeping in between. What a job
//! may hold in memory stays bounded as before: jobs carrying a basis signature (a changed file's
//! blocks, up to megabytes) count against a separate bound of one per worker and one more.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::Job;

/// Most jobs queued at once: enough that the tree thread hands over a batch of verdicts
/// without waiting for the workers, few enough to keep the receiver's bound on files requested
/// and not delivered (`MAX_PENDING`, twice the window) out of reach with one connection.
pub(super) const QUEUED: usize = 256;

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The tree has ended: no more jobs are taken.
    Closed,
    /// Every worker has stopped.
    NoWorkers,
}

/// The queue of jobs between the tree thread and the content workers.
pub(super) struct Jobs {
    state: Mutex<State>,
    /// Workers wait here for a job.
    ready: Condvar,
    /// The tree thread waits here for room.
    room: Condvar,
    /// How many jobs with a basis may be queued.
    with_basis_max: usize,
}

struct State {
    queue: VecDeque<Job>,
    /// Queued jobs that carry a basis.
    with_basis: usize,
    /// Workers waiting in [`Jobs::take`].
    idle: usize,
    /// Workers that have not stopped.
    workers: usize,
    /// The tree thread waits in [`Jobs::push`].
    pusher_waiting: bool,
    closed: bool,
}

impl Jobs {
    pub(super) fn new(workers: usize) -> Jobs {
        Jobs {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                with_basis: 0,
                idle: 0,
                workers,
                pusher_waiting: false,
                closed: false,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            with_basis_max: workers + 1,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("no thread panics holding the job queue")
    }

    /// Queues a job, waiting while the queue is full.
    pub(super) fn push(&self, job: Job) -> Result<(), Refused> {
        let mut state = self.state();
        loop {
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.workers == 0 {
                return Err(Refused::NoWorkers);
            }
            let full = state.queue.len() >= QUEUED || (job.basis.is_some() && state.with_basis >= self.with_basis_max);
            if !full {
                break;
            }
            state.pusher_waiting = true;
            state = self.room.wait(state).expect("no thread panics holding the job queue");
            state.pusher_waiting = false;
        }
        state.with_basis += usize::from(job.basis.is_some());
        state.queue.push_back(job);
        if state.idle > 0 {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// No more jobs: the workers finish what is queued, then stop.
    pub(super) fn close(&self) {
        self.state().closed = true;
        self.ready.notify_all();
    }

    /// The next job, waiting for one; `None` once the queue is closed and empty.
    pub(super) fn take(&self) -> Option<Job> {
        let mut state = self.state();
        loop {
            if let Some(job) = self.pop(&mut state) {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state.idle += 1;
            state = self.ready.wait(state).expect("no thread panics holding the job queue");
            state.idle -= 1;
        }
    }

    /// The next job if one is queued now.
    pub(super) fn try_take(&self) -> Option<Job> {
        self.pop(&mut self.state())
    }

    /// The next job if one is queued now and no other worker is waiting for one (the first
    /// lane, which carries the tree, gets content only when the others are busy).
    pub(super) fn take_if_others_busy(&self) -> Option<Job> {
        let mut state = self.state();
        if state.idle > 0 {
            return None;
        }
        self.pop(&mut state)
    }

    /// Whether no job will come any more.
    pub(super) fn closed_and_empty(&self) -> bool {
        let state = self.state();
        state.closed && state.queue.is_empty()
    }

    /// A worker has stopped: with none left, the tree thread is told instead of waiting.
    pub(super) fn worker_stopped(&self) {
        self.state().workers -= 1;
        self.room.notify_all();
    }

    fn pop(&self, state: &mut State) -> Option<Job> {
        let job = state.queue.pop_front()?;
        state.with_basis -= usize::from(job.basis.is_some());
        if state.pusher_waiting {
            self.room.notify_one();
        }
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::sender::Waiting;
    use crate::wire::Timestamp;

    fn job(id: u64) -> Job {
        Job { id, waiting: Waiting { path: vec![b'f'], size: 1, mtime: Timestamp::default() }, basis: None }
    }

    #[test]
    fn jobs_come_out_in_order_and_the_queue_ends_once_closed_and_empty() {
        let jobs = Jobs::new(1);
        for id in 0..3 {
            jobs.push(job(id)).unwrap();
        }
        jobs.close();
        assert_eq!(jobs.push(job(9)).unwrap_err(), Refused::Closed);
        let taken: Vec<u64> = std::iter::from_fn(|| jobs.take()).map(|job| job.id).collect();
        assert_eq!(taken, [0, 1, 2]);
    }

    /// A queue for `workers` workers, full.
    fn full(workers: usize) -> Jobs {
        let jobs = Jobs::new(workers);
        for id in 0..QUEUED as u64 {
            jobs.push(job(id)).unwrap();
        }
        jobs
    }

    #[test]
    fn a_full_queue_holds_the_tree_until_a_worker_takes_a_job() {
        let jobs = full(1);
        std::thread::scope(|scope| {
            let pusher = scope.spawn(|| jobs.push(job(QUEUED as u64)));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!pusher.is_finished(), "the push waits for room");
            assert_eq!(jobs.take().map(|job| job.id), Some(0));
            pusher.join().unwrap().unwrap();
        });
        assert_eq!(jobs.state().queue.len(), QUEUED);
    }

    #[test]
    fn with_every_worker_stopped_the_tree_is_refused_instead_of_waiting() {
        let jobs = full(2);
        std::thread::scope(|scope| {
            let pusher = scope.spawn(|| jobs.push(job(QUEUED as u64)));
            jobs.worker_stopped();
            jobs.worker_stopped();
            assert_eq!(pusher.join().unwrap().unwrap_err(), Refused::NoWorkers);
        });
    }

    #[test]
    fn the_first_lane_takes_a_job_only_while_no_other_worker_waits() {
        let jobs = Jobs::new(2);
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| jobs.take().map(|job| job.id));
            while jobs.state().idle == 0 {
                std::thread::yield_now();
            }
            assert!(jobs.take_if_others_busy().is_none(), "nothing queued");
            jobs.push(job(1)).unwrap();
            // The waiting worker leaves its wait and takes the job under one lock: the first
            // lane never sees the job while a worker waits.
            assert!(jobs.take_if_others_busy().is_none());
            assert_eq!(waiting.join().unwrap(), Some(1));
        });
        jobs.push(job(2)).unwrap();
        assert_eq!(jobs.take_if_others_busy().map(|job| job.id), Some(2), "every other worker is busy");
    }
}
