//! A small persistent thread pool for the runtime's matmuls and the generated code's kernels.
//!
//! `parallel_for(tasks, f)` runs `f(0..tasks)` on the calling thread and the workers, each
//! task exactly once, and returns when all are done. Which thread runs a task never changes
//! what the task computes, so results are identical for every thread count.
//!
//! A decode step makes about five parallel calls per layer with a few microseconds of serial
//! work between them; a worker that slept in each gap would cost a futex wake-up (10-50 µs)
//! per call, as much as a small matmul's share: workers spin for [`SPIN`] after each job before they sleep (`CRANFORMER_SPIN_US`
//! overrides it, 0 to sleep at once: on a machine shared with other busy processes a spinning
//! worker takes a core they could use), and the caller spins, not sleeps, while the last tasks
//! finish.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

type Job = &'static (dyn Fn(usize) + Sync);

/// How long an idle worker polls for the next job before it blocks: enough for the serial
/// gaps of a decode step; longer spins cost more than they save when other processes want the
/// cores (BERT-base seq 128 on 2 threads with one core busy elsewhere: 161 ms at 300 µs,
/// 149 ms at 50 µs, 147 ms at 0).
const SPIN: Duration = Duration::from_micros(50);

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Mirrors `State::generation` so spinning workers poll without the lock.
    generation: AtomicU64,
    /// Workers still inside the current job (entered under the lock, left without it).
    busy: AtomicUsize,
}

struct State {
    /// Bumped for every job so sleeping workers know a new one arrived.
    generation: u64,
    job: Option<Job>,
    tasks: usize,
    /// Threads that take part, the caller included: workers numbered at or past it sit out.
    threads: usize,
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

thread_local! {
    /// Set while this thread runs a task: a nested `parallel_for` runs inline (the gate is
    /// held by the outer call, so queueing would deadlock).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Sets how many threads kernels use (`--threads`; before the first parallel call, later
/// calls change how many tasks are handed out but not how many threads exist); 0 goes back
/// to every core.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// Threads kernels use: `set_threads` up to the cores this process may run on (more would
/// only take turns on them), else every such core.
pub fn threads() -> usize {
    let cores = crate::machine::host_cores();
    match THREADS.load(Ordering::Relaxed) {
        0 => cores,
        n => n.min(cores),
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
                threads: 0,
            }),
            wake: Condvar::new(),
            generation: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        });
        let next = Arc::new(AtomicUsize::new(0));
        for i in 0..workers {
            let (shared, next) = (shared.clone(), next.clone());
            std::thread::Builder::new()
                .name(format!("cranformer-{i}"))
                .spawn(move || worker(i + 1, shared, next))
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
    IN_TASK.with(|f| f.set(true));
    loop {
        let t = next.fetch_add(1, Ordering::Relaxed);
        if t >= tasks {
            break;
        }
        job(t);
    }
    IN_TASK.with(|f| f.set(false));
}

/// [`SPIN`], or `CRANFORMER_SPIN_US` read once.
fn spin() -> Duration {
    static US: OnceLock<u64> = OnceLock::new();
    Duration::from_micros(*US.get_or_init(|| {
        std::env::var("CRANFORMER_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SPIN.as_micros() as u64)
    }))
}

/// Worker number `me` (the caller of a job is 0).
fn worker(me: usize, shared: Arc<Shared>, next: Arc<AtomicUsize>) {
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut polls = 0u32;
        let spin = spin();
        while shared.generation.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            polls += 1;
            if polls.is_multiple_of(256) && start.elapsed() > spin {
                break;
            }
        }
        let (job, tasks) = {
            let mut s = shared.state.lock().unwrap();
            while s.generation == seen {
                s = shared.wake.wait(s).unwrap();
            }
            seen = s.generation;
            // A worker that arrives after the caller finished the job alone finds none.
            let Some(job) = s.job else { continue };
            if me >= s.threads {
                continue;
            }
            shared.busy.fetch_add(1, Ordering::Relaxed);
            (job, s.tasks)
        };
        run_tasks(job, &next, tasks);
        shared.busy.fetch_sub(1, Ordering::Release);
    }
}

/// Runs `f(i)` for every `i` in `0..tasks` on up to [`threads`] threads.
pub fn parallel_for(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    parallel_for_on(usize::MAX, tasks, f)
}

/// Runs `f(i)` for every `i` in `0..tasks` on at most `threads` threads (and [`threads`]):
/// more tasks than threads balance the load, as each thread takes the next task when done.
pub fn parallel_for_on(threads: usize, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    if tasks == 0 {
        return;
    }
    let threads = threads.min(self::threads()).min(tasks);
    if threads <= 1 || IN_TASK.with(|t| t.get()) || pool().workers == 0 {
        (0..tasks).for_each(f);
        return;
    }
    let p = pool();
    let _one_job_at_a_time = p.gate.lock().unwrap();
    // SAFETY: the job reference is only used until every worker has left it: below, we
    // clear it under the lock once no worker is inside, before returning, so `f` outlives
    // all uses.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
    p.next.store(0, Ordering::Relaxed);
    {
        let mut s = p.shared.state.lock().unwrap();
        s.job = Some(job);
        s.tasks = tasks;
        s.threads = threads;
        s.generation += 1;
        p.shared.generation.store(s.generation, Ordering::Release);
        p.shared.wake.notify_all();
    }
    run_tasks(f, &p.next, tasks);
    // Workers enter under the lock, so once we hold it and none is inside, none can enter
    // this job any more: clearing it there ends the job. A worker still inside may have been
    // preempted (more runnable threads than cores): after a short spin, yield so it can run.
    let mut polls = 0u32;
    loop {
        if p.shared.busy.load(Ordering::Acquire) == 0 {
            let mut s = p.shared.state.lock().unwrap();
            if p.shared.busy.load(Ordering::Acquire) == 0 {
                s.job = None;
                return;
            }
        }
        polls += 1;
        if polls < 256 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// The pool for generated code: a C-ABI `task(ctx, i)` for every `i` in `0..tasks`
/// (`RuntimeFns::parallel_for`).
pub type TaskFn = unsafe extern "C" fn(ctx: *const u8, task: usize);

/// # Safety
/// `task` must be safe to call with `ctx` and every index below `tasks`, concurrently.
pub unsafe extern "C" fn cranformer_parallel_for(task: TaskFn, ctx: *const u8, tasks: usize) {
    let ctx = ctx as usize;
    // SAFETY: as the caller promised.
    parallel_for(tasks, &|i| unsafe { task(ctx as *const u8, i) });
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

    #[test]
    fn fewer_threads_than_tasks() {
        let hits: Vec<AtomicUsize> = (0..50).map(|_| AtomicUsize::new(0)).collect();
        for threads in [1, 2, 3] {
            parallel_for_on(threads, 50, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 3));
    }

    #[test]
    fn nested_calls_run_inline() {
        let hits = AtomicUsize::new(0);
        parallel_for(4, &|_| {
            parallel_for(3, &|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(hits.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn c_entry_runs_every_task() {
        unsafe extern "C" fn bump(ctx: *const u8, i: usize) {
            let hits = &*(ctx as *const [AtomicUsize; 9]);
            hits[i].fetch_add(1, Ordering::Relaxed);
        }
        let hits: [AtomicUsize; 9] = Default::default();
        unsafe { cranformer_parallel_for(bump, &hits as *const _ as *const u8, 9) };
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }
}
