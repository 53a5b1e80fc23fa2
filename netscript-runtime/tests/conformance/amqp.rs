//! The conformance suite against RabbitMQ, with the bookkeeping in a `MemoryKv` companion
//! (`amqp`) and in an `EmbeddedKv` one (`amqp_embedded_kv`). Each test gets its own queue
//! name, and its broker queues are deleted when it ends.

use super::*;

use netscript_runtime::kv::memory::MemoryKv;
use netscript_runtime::queue::amqp::{AmqpOptions, AmqpQueue};

pub fn url() -> String {
    std::env::var("NETSCRIPT_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Deletes the test's broker queues, from a connection of its own (the test's runtime is
/// shutting down when this runs).
struct Cleanup {
    queue: Option<Arc<AmqpQueue>>,
    _kv_guard: Guard,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(queue) = self.queue.take() else { return };
        let names = queue.declared_queues();
        // The last handle: dropping it stops the reconnection task, which would otherwise
        // re-declare the queues deleted below.
        drop(queue);
        if names.is_empty() {
            return;
        }
        let url = url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let Ok(conn) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await else {
                    return;
                };
                let Ok(channel) = conn.create_channel().await else { return };
                for name in names {
                    let _ = channel.queue_delete(name.into(), lapin::options::QueueDeleteOptions::default()).await;
                }
                let _ = conn.close(200, "done".into()).await;
            });
        })
        .join();
    }
}

async fn amqp_queue_with(kv: Arc<dyn Kv>, kv_guard: Guard, window: Duration) -> (Arc<dyn Queue>, Guard) {
    let name = format!("conf-{}", uuid::Uuid::now_v7().simple());
    let options = AmqpOptions::new(url()).with_prefix("nstest");
    let queue = Arc::new(AmqpQueue::connect(options, &name, kv).await.unwrap().with_idempotency_window(window));
    let guard = Cleanup { queue: Some(Arc::clone(&queue)), _kv_guard: kv_guard };
    (queue, Some(Box::new(guard)))
}

async fn amqp_queue(window: Duration) -> (Arc<dyn Queue>, Guard) {
    amqp_queue_with(Arc::new(MemoryKv::new()), None, window).await
}

#[cfg(feature = "embedded")]
async fn amqp_queue_embedded_kv(window: Duration) -> (Arc<dyn Queue>, Guard) {
    let (db, guard) = embedded_db();
    let kv = Arc::new(netscript_runtime::kv::embedded::EmbeddedKv::new(db));
    amqp_queue_with(kv, guard, window).await
}

conformance!(amqp, queue: amqp_queue, kv: none, skip: amqp_skips);

#[cfg(feature = "embedded")]
conformance!(amqp_embedded_kv, queue: amqp_queue_embedded_kv, kv: none, skip: amqp_skips);

/// The cases the RabbitMQ queue does not pass, with the reason.
fn amqp_skips(case: &str) -> Option<&'static str> {
    match case {
        "queue_taken_ids_are_duplicates" => Some(
            "an enqueue does not look for a message record under the same id (it would cost a read of the \
             companion store per message); a reused id publishes a second message. Ids from \
             `MessageId::new` are fresh",
        ),
        _ => None,
    }
}
