//! Waiting for one of a limited number of slots (running commands, transfers): a burst queues
//! for a while before it is refused.

use crate::core::error::{Code, Error, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a command or a transfer waits for a free slot before `busy`.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// A permit of `slots`: at once if one is free, else the first freed within `wait`, else
/// `busy` with `message`.
pub async fn wait_for_slot(
    slots: &Arc<Semaphore>,
    wait: Duration,
    message: impl FnOnce() -> String,
) -> Result<OwnedSemaphorePermit> {
    if let Ok(free) = slots.clone().try_acquire_owned() {
        return Ok(free);
    }
    tokio::time::timeout(wait, slots.clone().acquire_owned())
        .await
        .map_err(|_| Error::new(Code::Busy, message()))?
        .map_err(Error::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With every slot taken, a request waits: it gets the first slot freed within the wait,
    /// and `busy` once the wait has passed (paused time: the wait passes without sleeping).
    #[tokio::test(start_paused = true)]
    async fn waits_for_a_slot_then_is_busy() {
        let slots = Arc::new(Semaphore::new(2));
        let wait = Duration::from_secs(10);
        let busy = || "full".to_string();
        let first = wait_for_slot(&slots, wait, busy).await.unwrap();
        let _second = wait_for_slot(&slots, wait, busy).await.unwrap();
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { wait_for_slot(&slots, wait, busy).await }
        });
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!waiting.is_finished(), "a slot came before one was freed");
        drop(first);
        let third = waiting.await.unwrap().unwrap();
        let started = tokio::time::Instant::now();
        let refused = wait_for_slot(&slots, wait, busy).await.unwrap_err();
        assert_eq!(
            (refused.code, refused.message.as_str()),
            (Code::Busy, "full")
        );
        assert_eq!(started.elapsed(), wait);
        drop(third);
        assert!(wait_for_slot(&slots, wait, busy).await.is_ok());
    }
}
