//! The idempotency window of one topic: key → first message id, forgotten after the window.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;
use topiq_adapter::MessageId;

/// Idempotency keys seen inside the window, oldest first for expiry.
#[derive(Default)]
pub(crate) struct DedupWindow {
    first_ids: HashMap<String, (MessageId, Instant)>,
    expiry_order: VecDeque<(Instant, String)>,
}

impl DedupWindow {
    /// The first message id published with `key`, if it is still inside the window.
    pub(crate) fn lookup(&mut self, key: &str, now: Instant) -> Option<MessageId> {
        self.forget_expired(now);
        self.first_ids.get(key).map(|(id, _)| id.clone())
    }

    /// Remembers `key` → `id` until `expires`.
    pub(crate) fn remember(&mut self, key: String, id: MessageId, expires: Instant) {
        self.expiry_order.push_back((expires, key.clone()));
        self.first_ids.insert(key, (id, expires));
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some((expires, _)) = self.expiry_order.front() {
            if *expires > now {
                break;
            }
            if let Some((expires, key)) = self.expiry_order.pop_front() {
                // A key re-remembered later has a later expiry: keep that entry.
                if self
                    .first_ids
                    .get(&key)
                    .is_some_and(|(_, at)| *at == expires)
                {
                    self.first_ids.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn keys_are_forgotten_after_the_window() {
        let mut window = DedupWindow::default();
        let id = MessageId::generate();
        let now = Instant::now();
        window.remember("k".into(), id.clone(), now + Duration::from_secs(10));
        assert_eq!(window.lookup("k", now + Duration::from_secs(9)), Some(id));
        assert_eq!(window.lookup("k", now + Duration::from_secs(10)), None);
    }
}
