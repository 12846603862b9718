//! Long DLQ operations started from the console (a redrive of many records), running in the
//! background with their progress, so the page that started one can show it.
//!
//! Jobs live in the process that serves the console: behind a load balancer, the job page is
//! found on the instance that started it (the redrive itself goes to the broker, for all).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Jobs kept once finished, the newest.
const KEPT: usize = 50;

/// One job: what it does, how far it is, how it ended.
pub(crate) struct Job {
    /// What it does, in words: `redrive 120 records of orders / charge`.
    pub(crate) label: String,
    /// Where to go when it is done.
    pub(crate) back: String,
    done: AtomicU64,
    total: AtomicU64,
    outcome: Mutex<Option<Result<u64, String>>>,
}

impl Job {
    /// Done so far, of how many.
    pub(crate) fn progress(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Acquire),
            self.total.load(Ordering::Acquire),
        )
    }

    /// Tells how far it is.
    pub(crate) fn advance(&self, done: u64, total: u64) {
        self.total.store(total, Ordering::Release);
        self.done.store(done, Ordering::Release);
    }

    /// Its outcome, once it ended: how many records it changed, or its error.
    pub(crate) fn outcome(&self) -> Option<Result<u64, String>> {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn finish(&self, outcome: Result<u64, String>) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }
}

/// The jobs of this console.
#[derive(Default)]
pub(crate) struct Jobs {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
}

impl Jobs {
    /// Starts `work` as a job; returns its id. `work` reports progress to the job it is given.
    pub(crate) fn start<F, Fut>(&self, label: String, back: String, work: F) -> u64
    where
        F: FnOnce(Arc<Job>) -> Fut,
        Fut: Future<Output = Result<u64, String>> + Send + 'static,
    {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Arc::new(Job {
            label,
            back,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            outcome: Mutex::new(None),
        });
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            jobs.insert(id, job.clone());
            while jobs.len() > KEPT {
                let Some(oldest) = jobs.keys().next().copied() else {
                    break;
                };
                jobs.remove(&oldest);
            }
        }
        let running = work(job.clone());
        tokio::spawn(async move {
            let outcome = running.await;
            if let Ok(changed) = &outcome {
                let (_, total) = job.progress();
                job.advance(*changed, total.max(*changed));
            }
            job.finish(outcome);
        });
        id
    }

    /// Job `id`, if this console has it.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_reports_progress_then_its_outcome() {
        let jobs = Jobs::default();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let id = jobs.start("redrive".into(), "/console/dlq".into(), |job| async move {
            job.advance(4, 10);
            let _ = wait.await;
            Ok(10)
        });
        let job = jobs.get(id).expect("the job");
        tokio::task::yield_now().await;
        assert_eq!(job.progress(), (4, 10));
        assert_eq!(job.outcome(), None);
        go.send(()).unwrap();
        for _ in 0..100 {
            if job.outcome().is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(job.outcome(), Some(Ok(10)));
        assert_eq!(job.progress(), (10, 10));
        assert!(jobs.get(id + 1).is_none());
    }
}
