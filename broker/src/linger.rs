//! The shard's flush clock, which batches writes to busy sockets.
//!
//! A writer that wrote to its socket moments ago waits for the next tick
//! before it writes again, so that deliveries arriving meanwhile leave in
//! one write. All writers of a shard share one timer: a timer per socket
//! would cost about as much as the writes it saves.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// One shard's flush clock. It ticks every `period` while writers wait for
/// it and stops when none does.
pub struct FlushClock {
    period: Duration,
    /// Number of ticks so far. A waiter is done once it changes.
    ticks: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
    running: Cell<bool>,
}

impl FlushClock {
    pub fn new(period: Duration) -> Rc<FlushClock> {
        Rc::new(FlushClock {
            period,
            ticks: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
            running: Cell::new(false),
        })
    }

    /// Time between ticks, or zero when batching is off.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Waits for the next tick.
    pub fn next_tick(self: &Rc<Self>) -> NextTick {
        NextTick {
            clock: self.clone(),
            after: self.ticks.get(),
        }
    }

    fn start(self: &Rc<Self>) {
        if self.running.replace(true) {
            return;
        }
        let clock = self.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(clock.period).await;
                clock.ticks.set(clock.ticks.get() + 1);
                let waiters = std::mem::take(&mut *clock.waiters.borrow_mut());
                if waiters.is_empty() {
                    break;
                }
                for waker in waiters {
                    waker.wake();
                }
            }
            clock.running.set(false);
        })
        .detach();
    }
}

/// Future returned by [`FlushClock::next_tick`].
pub struct NextTick {
    clock: Rc<FlushClock>,
    after: u64,
}

impl Future for NextTick {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.ticks.get() != self.after {
            return Poll::Ready(());
        }
        self.clock.waiters.borrow_mut().push(cx.waker().clone());
        self.clock.start();
        Poll::Pending
    }
}
