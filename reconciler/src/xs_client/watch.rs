//! Watches: xenstored sends a connection an event naming each node changed
//! under a path it watches. Events arrive between answers; the client
//! keeps them as it reads, and [`XsClient::sync`] makes sure every change
//! made before it was called has been told.

use super::{XsClient, XsError};
use crate::xs_wire::{MessageType, nul_terminated};

/// A watch fired: `path` changed (was written, made or removed), under
/// the watch that `token` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

impl WatchEvent {
    /// A WATCH_EVENT payload: the path, then the token, each ended by NUL.
    pub(super) fn parse(payload: &[u8]) -> Option<WatchEvent> {
        let mut parts = payload.split(|b| *b == 0);
        let path = parts.next().filter(|p| !p.is_empty())?;
        let token = parts.next().unwrap_or_default();
        Some(WatchEvent {
            path: String::from_utf8_lossy(path).into_owned(),
            token: String::from_utf8_lossy(token).into_owned(),
        })
    }
}

impl XsClient {
    /// Watches `path` and everything under it. xenstored fires the watch
    /// once at once, naming `path` itself.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let payload = nul_terminated([path.as_bytes(), token.as_bytes()]);
        self.request(MessageType::Watch, 0, payload, path)
            .map(|_| ())
    }

    /// One round trip, after which every event for a change made before
    /// this call is among [`XsClient::take_events`]: xenstored queues a
    /// connection's events and answers in one order, so an event queued
    /// before the request was handled is read before its answer.
    pub fn sync(&mut self) -> Result<(), XsError> {
        // Any request will do; its answer, even ENOENT, is the mark.
        match self.read(0, "/local/domain/0/name") {
            Ok(_) => Ok(()),
            Err(error @ XsError::Io { .. }) => Err(error),
            Err(_) => Ok(()),
        }
    }

    /// The events read so far, oldest first, and forgets them.
    pub fn take_events(&mut self) -> Vec<WatchEvent> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_payload_is_a_path_then_a_token() {
        let event = WatchEvent::parse(b"/local/domain/0/backend/vbd/3/51712/state\0look\0");
        assert_eq!(
            event,
            Some(WatchEvent {
                path: "/local/domain/0/backend/vbd/3/51712/state".to_owned(),
                token: "look".to_owned(),
            })
        );
        assert_eq!(WatchEvent::parse(b"\0token\0"), None);
        assert_eq!(WatchEvent::parse(b""), None);
    }
}
