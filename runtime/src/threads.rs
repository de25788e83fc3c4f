//! A small persistent thread pool for the generated code's kernels.
//!
//! `parallel_for(tasks, f)` runs `f(0..tasks)` on the calling thread and the workers, each
//! task exactly once, and returns when all are done. Which thread runs a task never changes
//! what the task computes, so results are identical for every thread count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

type Job = &'static (dyn Fn(usize) + Sync);

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
}

struct State {
    /// Bumped for every job so sleeping workers know a new one arrived.
    generation: u64,
    job: Option<Job>,
    tasks: usize,
    /// Workers still inside the current job.
    busy: usize,
}

pub struct Pool {
    shared: Arc<Shared>,
    next: Arc<AtomicUsize>,
    workers: usize,
    /// One job at a time: callers from several threads queue here.
    gate: Mutex<()>,
}

static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<Pool> = OnceLock::new();

/// Sets how many threads kernels use (before the first parallel call; later calls change
/// how many tasks are handed out but not how many threads exist).
pub fn set_threads(n: usize) {
    THREADS.store(n.max(1), Ordering::Relaxed);
}

/// Threads kernels use: `set_threads`, else every core.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| Pool::new(threads().saturating_sub(1)))
}

impl Pool {
    fn new(workers: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                tasks: 0,
                busy: 0,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let next = Arc::new(AtomicUsize::new(0));
        for i in 0..workers {
            let (shared, next) = (shared.clone(), next.clone());
            std::thread::Builder::new()
                .name(format!("cranformer-{i}"))
                .spawn(move || worker(shared, next))
                .expect("spawn a worker thread");
        }
        Pool {
            shared,
            next,
            workers,
            gate: Mutex::new(()),
        }
    }
}

fn run_tasks(job: &(dyn Fn(usize) + Sync), next: &AtomicUsize, tasks: usize) {
    loop {
        let t = next.fetch_add(1, Ordering::Relaxed);
        if t >= tasks {
            break;
        }
        job(t);
    }
}

fn worker(shared: Arc<Shared>, next: Arc<AtomicUsize>) {
    let mut seen = 0u64;
    loop {
        let (job, tasks) = {
            let mut s = shared.state.lock().unwrap();
            while s.generation == seen {
                s = shared.wake.wait(s).unwrap();
            }
            seen = s.generation;
            // A worker that wakes after the caller finished the job alone finds none.
            let Some(job) = s.job else { continue };
            s.busy += 1;
            (job, s.tasks)
        };
        run_tasks(job, &next, tasks);
        let mut s = shared.state.lock().unwrap();
        s.busy -= 1;
        if s.busy == 0 {
            shared.done.notify_all();
        }
    }
}

/// Runs `f(i)` for every `i` in `0..tasks` on up to [`threads`] threads.
pub fn parallel_for(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    if tasks == 0 {
        return;
    }
    if tasks == 1 || threads() == 1 || pool().workers == 0 {
        (0..tasks).for_each(f);
        return;
    }
    let p = pool();
    let _one_job_at_a_time = p.gate.lock().unwrap();
    // SAFETY: the job reference is only used until every worker has left it: we wait for
    // `busy == 0` below before returning, so `f` outlives all uses.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
    p.next.store(0, Ordering::Relaxed);
    {
        let mut s = p.shared.state.lock().unwrap();
        s.job = Some(job);
        s.tasks = tasks;
        s.generation += 1;
        p.shared.wake.notify_all();
    }
    run_tasks(f, &p.next, tasks);
    let mut s = p.shared.state.lock().unwrap();
    // Workers that woke late find no task left; wait for all that entered to leave.
    while s.busy > 0 {
        s = p.shared.done.wait(s).unwrap();
    }
    s.job = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for tasks in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..20 {
                parallel_for(tasks, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 20));
        }
    }
}
