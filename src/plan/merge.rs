//! The k-way merge: a pass's sorted change streams (from the workers, or merges on the run's
//! connection) merged by entity, each entity's changes handed together to the emitter
//! (`emit.rs`) until the chunk is full (`fill`); the chunker (`chunk.rs`) then commits it.

use std::time::Instant;

use super::chunk::Chunking;
use super::emit::Emitter;
use super::workers::Stream;
use crate::store::state::ChangeRow;

/// Sorted change streams merged k-way by entity: each entity's changes together, in stream
/// order (computations in run order, the membership last). No sort and no temp table: each
/// stream is already in entity order, and a stream without a change for a while costs nothing
/// but its cursor.
pub(super) struct Merger<'s> {
    streams: Vec<Stream<'s>>,
    heads: Vec<Option<ChangeRow>>,
    /// The entity being gathered (reused: this runs once per entity of the run).
    entity: String,
}

impl<'s> Merger<'s> {
    pub(super) fn new(mut streams: Vec<Stream<'s>>) -> anyhow::Result<Self> {
        let mut heads = Vec::with_capacity(streams.len());
        for stream in streams.iter_mut() {
            heads.push(stream.next_change()?);
        }
        Ok(Merger {
            streams,
            heads,
            entity: String::new(),
        })
    }

    /// The next entity's changes into `batch`; `false` at the end.
    pub(super) fn next_entity(&mut self, batch: &mut Vec<ChangeRow>) -> anyhow::Result<bool> {
        batch.clear();
        // SQLite's BINARY collation orders like Rust's byte-wise str order.
        let Some(min) = self
            .heads
            .iter()
            .flatten()
            .map(|h| h.entity_id.as_str())
            .min()
        else {
            return Ok(false);
        };
        self.entity.clear();
        self.entity.push_str(min);
        for (head, stream) in self.heads.iter_mut().zip(self.streams.iter_mut()) {
            while head.as_ref().is_some_and(|h| h.entity_id == self.entity) {
                batch.push(head.take().expect("checked"));
                *head = stream.next_change()?;
            }
        }
        Ok(true)
    }
}

/// Emit entities until the chunk is full (`limits`) or the streams end. Returns whether they
/// ended, and the last entity emitted.
pub(super) fn fill(
    merger: &mut Merger<'_>,
    emitter: &mut Emitter<'_, '_>,
    limits: Option<Chunking>,
) -> anyhow::Result<(bool, Option<String>)> {
    let began = Instant::now();
    let mut batch = Vec::new();
    let mut last: Option<String> = None;
    let mut entities = 0u32;
    loop {
        if !merger.next_entity(&mut batch)? {
            return Ok((true, last));
        }
        emitter.entity(&mut batch)?;
        match last.as_mut() {
            Some(l) => {
                l.clear();
                l.push_str(&batch[0].entity_id);
            }
            None => last = Some(batch[0].entity_id.clone()),
        }
        entities = entities.wrapping_add(1);
        if let Some(limits) = limits
            && (emitter.staged >= limits.rows
                || (entities.is_multiple_of(256) && began.elapsed() >= limits.read_for))
        {
            return Ok((false, last));
        }
    }
}
