//! OpenCode's event stream (`GET /event`), cut into events. Each event is one `data: {json}` line
//! followed by a blank line (no `event:` or `id:` fields); its JSON names its `type`. Chunks from
//! the network end anywhere, so an unfinished event waits for the next chunk. Pure: the HTTP side
//! is `api::InstanceApi::events`, and what an event means is its reader's business.

use serde::Deserialize;

/// The longest event kept while waiting for its end. A tool's output can make an event of several
/// MiB; beyond this the stream is not one worth following.
const LONGEST_EVENT: usize = 64 * 1024 * 1024;

/// An event longer than [`LONGEST_EVENT`]: the reader should drop the stream.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLong;

/// The bytes of the stream read so far that do not make a whole event yet.
#[derive(Default)]
pub struct EventFrames {
    pending: Vec<u8>,
}

impl EventFrames {
    /// Adds a chunk as read from the stream, and returns the types of the events it completed, in
    /// order. An event whose data is not JSON with a string `type` is returned as an empty type.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, TooLong> {
        // A block end may straddle the previous chunk and this one.
        let resume = self.pending.len().saturating_sub(1);
        self.pending.extend_from_slice(chunk);
        let mut kinds = Vec::new();
        let mut start = 0;
        let mut from = resume;
        while let Some(at) = find_blank_line(&self.pending[from..]) {
            let end = from + at;
            kinds.push(kind_of(&self.pending[start..end]));
            start = end + 2;
            from = start;
        }
        self.pending.drain(..start);
        if self.pending.len() > LONGEST_EVENT {
            return Err(TooLong);
        }
        Ok(kinds)
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\n\n")
}

/// The `type` of one block's `data:` JSON.
fn kind_of(block: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Event<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    block
        .split(|b| *b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .find_map(|data| serde_json::from_slice::<Event>(data.trim_ascii()).ok())
        .map(|event| event.kind.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_whatever_the_chunks() {
        let stream = "data: {\"type\":\"server.connected\",\"properties\":{}}\n\n\
                      data: {\"id\":\"evt_1\",\"type\":\"session.updated\",\"properties\":{\"info\":{\"title\":\"caf\u{e9}\"}}}\n\n\
                      data: not json\n\n\
                      data: {\"type\":\"server.heartbeat\"}\n\n";
        let whole = EventFrames::default().push(stream.as_bytes());
        let expected = [
            "server.connected",
            "session.updated",
            "",
            "server.heartbeat",
        ];
        assert_eq!(whole, Ok(expected.map(String::from).to_vec()));
        // Every split point, including inside the blank line and inside a UTF-8 character.
        for split in 1..stream.len() {
            let mut frames = EventFrames::default();
            let mut kinds = frames.push(&stream.as_bytes()[..split]).expect("short");
            kinds.extend(frames.push(&stream.as_bytes()[split..]).expect("short"));
            assert_eq!(kinds, expected, "split at {split}");
            assert!(frames.pending.is_empty());
        }
    }

    #[test]
    fn an_unfinished_event_waits_and_an_endless_one_is_refused() {
        let mut frames = EventFrames::default();
        assert_eq!(frames.push(b"data: {\"type\":\"sess"), Ok(vec![]));
        assert_eq!(
            frames.push(b"ion.idle\"}\n\n"),
            Ok(vec!["session.idle".to_owned()])
        );
        let mut endless = EventFrames::default();
        let chunk = vec![b'x'; 1024 * 1024];
        let mut outcome = Ok(vec![]);
        for _ in 0..=LONGEST_EVENT / chunk.len() {
            outcome = endless.push(&chunk);
        }
        assert_eq!(outcome, Err(TooLong));
    }
}
