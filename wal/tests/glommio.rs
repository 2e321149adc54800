//! Runs `StoreHandle` futures on a glommio executor, the way a shard does,
//! and checks that wake-ups from the handle's threads reach it.

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use coremq_wal::{HandleConfig, MemoryStore, Message, StoreHandle};
use glommio::LocalExecutorBuilder;

fn message(payload: &'static str) -> Message {
    Message {
        topic: "t".to_owned(),
        payload: Bytes::from_static(payload.as_bytes()),
        ..Message::default()
    }
}

#[test]
fn glommio_reader_wakes_on_append() {
    let handle = StoreHandle::spawn(Arc::new(MemoryStore::new()), HandleConfig::default())
        .expect("start store handle");

    // Another thread appends after the shard's reader is already waiting.
    let appender = {
        let handle = handle.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            futures_lite::future::block_on(handle.append("q", vec![message("late")]))
                .expect("append from another thread")
        })
    };

    let shard_handle = handle.clone();
    let executor = LocalExecutorBuilder::default()
        .name("wal-test-shard")
        .spawn(move || async move {
            let first = shard_handle
                .append("q", vec![message("early")])
                .await
                .expect("append on the shard");
            assert_eq!(first, 1..2);

            let mut reader = shard_handle.reader("q", 1, 10);
            let batch = reader.next_batch().await.expect("next_batch on the shard");
            batch
        })
        .expect("start glommio executor; it needs io_uring and a locked-memory limit of at least 512 KiB");

    // A lost wake-up would block join() forever, so it runs on a helper
    // thread and the test fails after a bound instead.
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(executor.join());
    });
    let batch = receiver
        .recv_timeout(Duration::from_secs(10))
        .expect("the reader on the glommio executor did not wake after the append")
        .expect("glommio executor panicked");
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].offset, 2);
    assert_eq!(batch[0].payload, Bytes::from_static(b"late"));
    assert_eq!(appender.join().expect("appender panicked"), 2..3);
}
