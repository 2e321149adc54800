//! State shared by the connection tasks of one executor thread.
//!
//! Everything here lives on one thread, so tasks share it through `Rc` and
//! `Cell`/`RefCell` without locks; a `RefCell` is never held across an await.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::sync::Semaphore;
use hdrhistogram::Histogram;

use crate::error::BenchError;
use crate::run::{Control, ExecutorOutput, RunConfig, Timeline};
use crate::stats::{new_histogram, Counters};

/// Errors kept per executor for the report; later ones are only counted.
const MAX_REPORTED_ERRORS: usize = 10;

/// How often the executor checks the main thread's stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// State shared by the tasks of one executor.
pub struct Local {
    pub config: Arc<RunConfig>,
    pub control: Arc<Control>,
    pub executor: usize,
    /// Latencies measured by this executor's tasks, in nanoseconds.
    pub latency: RefCell<Histogram<u64>>,
    /// Publish to PUBACK (QoS 1) or PUBREC (QoS 2) of this executor's
    /// publishers, in nanoseconds.
    pub ack_latency: RefCell<Histogram<u64>>,
    /// Publish to PUBCOMP of this executor's QoS 2 publishers, in nanoseconds.
    pub complete_latency: RefCell<Histogram<u64>>,
    errors: RefCell<Vec<String>>,
    /// Bounds the connections opened at the same time during setup.
    pub setup_slots: Semaphore,
    /// Closed when the run starts, which wakes every task waiting on it.
    start_gate: Semaphore,
    /// Closed when the run stops, which wakes every task waiting on it.
    stop_gate: Semaphore,
    ready: Cell<u64>,
    failed: Cell<u64>,
    timeline: Cell<Timeline>,
}

impl Local {
    /// Creates the state of executor `executor`, opening at most
    /// `setup_concurrency` connections at a time.
    pub fn new(
        executor: usize,
        control: Arc<Control>,
        config: Arc<RunConfig>,
        setup_concurrency: u64,
    ) -> Rc<Local> {
        Rc::new(Local {
            config,
            control,
            executor,
            latency: RefCell::new(new_histogram()),
            ack_latency: RefCell::new(new_histogram()),
            complete_latency: RefCell::new(new_histogram()),
            errors: RefCell::new(Vec::new()),
            setup_slots: Semaphore::new(setup_concurrency.max(1)),
            start_gate: Semaphore::new(0),
            stop_gate: Semaphore::new(0),
            ready: Cell::new(0),
            failed: Cell::new(0),
            timeline: Cell::new(Timeline::default()),
        })
    }

    /// Counters of this executor.
    pub fn counters(&self) -> &Counters {
        &self.control.counters[self.executor]
    }

    /// Counts an error and keeps its message for the report.
    pub fn record_error(&self, context: &str, err: &BenchError) {
        Counters::add(&self.counters().errors, 1);
        let mut errors = self.errors.borrow_mut();
        if errors.len() < MAX_REPORTED_ERRORS {
            tracing::warn!(executor = self.executor, "{context}: {err}");
            errors.push(format!("{context}: {err}"));
        }
    }

    /// Records that a task finished its setup, successfully or not.
    pub fn task_ready(&self, ok: bool) {
        if ok {
            self.ready.set(self.ready.get() + 1);
        } else {
            self.failed.set(self.failed.get() + 1);
        }
    }

    /// Waits until `tasks` tasks have finished setup, reports this executor
    /// ready, waits for the run's start and wakes the tasks.
    pub async fn start_when_ready(&self, tasks: u64) -> Timeline {
        while self.ready.get() + self.failed.get() < tasks && !self.control.aborted() {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        self.control.mark_ready(self.failed.get());
        let timeline = self.control.wait_start().await;
        self.timeline.set(timeline);
        self.start_gate.close();
        timeline
    }

    /// Returns the run's timeline once the start gate has opened.
    pub async fn wait_start(&self) -> Timeline {
        // The gate never grants a permit: closing it is the start signal.
        let _ = self.start_gate.acquire(1).await;
        self.timeline.get()
    }

    /// Polls the main thread's stop flag and wakes the tasks waiting in
    /// [`Local::wait_stop`] once it is set.
    pub async fn relay_stop(&self) {
        while !self.control.stopping() {
            glommio::timer::sleep(STOP_POLL).await;
        }
        self.stop_gate.close();
    }

    /// Waits until the run stops; needs [`Local::relay_stop`] running.
    pub async fn wait_stop(&self) {
        // The gate never grants a permit: closing it is the stop signal.
        let _ = self.stop_gate.acquire(1).await;
    }

    /// Moves the latency histograms and kept errors into `output`.
    pub fn finish(&self, mut output: ExecutorOutput) -> ExecutorOutput {
        output.latency = self.latency.replace(new_histogram());
        output.ack_latency = self.ack_latency.replace(new_histogram());
        output.complete_latency = self.complete_latency.replace(new_histogram());
        output.errors = self.errors.take();
        output
    }
}
