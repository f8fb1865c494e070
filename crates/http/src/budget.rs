//! The global byte budget of webhook bodies being buffered
//! (`server.max_buffered_bytes`), and reading a body under it.
//!
//! A body with a `Content-Length` takes its whole size from the budget
//! before the first byte is read; a body without one (chunked) takes the
//! buffer's capacity as it grows. Whatever does not fit is answered at once
//! with 503 and `Retry-After` ([`ApiError::Busy`]): nothing waits for budget,
//! so a flood of large bodies costs at most the budget in memory and never
//! queues the deliveries behind it. The bytes go back to the budget when the
//! request is done with the body.
//!
//! Bodies of [`MAP_FROM`] bytes or more are buffered in an anonymous memory
//! map of their own, which goes back to the operating system the moment it
//! is dropped. On the heap they would not: glibc serves a large allocation
//! from its arenas once one of that size was freed, and keeps the freed
//! memory resident, so under a flood of 25 MiB bodies the process grew to
//! about twice the budget (measured: 259 MiB for a 128 MiB budget; 141 MiB
//! with maps).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Chunked bodies start with this much capacity (or less, under the limit).
const FIRST_CHUNKED_CAPACITY: usize = 64 * 1024;

/// Buffers at least this large are memory maps of their own.
pub(crate) const MAP_FROM: usize = 1024 * 1024;

/// A warning about a full budget is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Bytes that bodies being received may hold together.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    rejected: AtomicU64,
    last_warning: std::sync::Mutex<Option<Instant>>,
}

/// A body read in full, holding its share of the budget until dropped.
#[derive(Debug)]
pub(crate) struct Buffered {
    pub(crate) bytes: Bytes,
    _held: Option<OwnedSemaphorePermit>,
}

impl Buffered {
    /// Takes the bytes out; the share of the budget stays held until `self` drops.
    pub(crate) fn take_bytes(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }
}

impl BodyBudget {
    pub(crate) fn new(total: usize) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
            rejected: AtomicU64::new(0),
            last_warning: std::sync::Mutex::new(None),
        }
    }

    /// Bytes currently free.
    pub(crate) fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Takes `n` bytes, or fails at once with [`ApiError::Busy`].
    fn take(&self, n: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let taken = u32::try_from(n)
            .ok()
            .and_then(|n| Arc::clone(&self.bytes).try_acquire_many_owned(n).ok());
        taken.ok_or_else(|| {
            self.note_rejection(n);
            ApiError::Busy
        })
    }

    fn note_rejection(&self, wanted: usize) {
        let rejected = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(
            wanted_bytes = wanted,
            available_bytes = self.available(),
            "body budget exhausted; answered 503"
        );
        let now = Instant::now();
        let Ok(mut last) = self.last_warning.lock() else {
            return;
        };
        if last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *last = Some(now);
            drop(last);
            tracing::warn!(
                max_buffered_bytes = self.total,
                rejected_total = rejected,
                "webhook bodies being received fill server.max_buffered_bytes; answering 503 with Retry-After"
            );
        }
    }

    /// Reads `body` in full: at most `limit` bytes (413 beyond), within the
    /// budget (503 beyond). `declared` is the parsed `Content-Length`.
    pub(crate) async fn read<B>(
        &self,
        declared: Option<u64>,
        limit: usize,
        body: B,
    ) -> Result<Buffered, ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let declared = match declared {
            Some(n) if n > limit as u64 => return Err(ApiError::PayloadTooLarge { limit }),
            // Fits in usize: it is at most `limit`.
            Some(n) => Some(usize::try_from(n).unwrap_or(limit)),
            None => None,
        };
        let (mut buf, mut held) = match declared {
            Some(n) => {
                let held = self.take(n)?;
                (Buf::with_capacity(n)?, Some(held))
            }
            None => (Buf::Heap(Vec::new()), None),
        };
        let mut body = std::pin::pin!(body);
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::BadRequest(format!("Could not read request body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            let needed = buf.len() + data.len();
            if needed > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            if declared.is_some_and(|n| needed > n) {
                // hyper enforces Content-Length; another body type might not.
                return Err(ApiError::BadRequest(
                    "Request body is longer than its Content-Length".to_owned(),
                ));
            }
            if needed > buf.capacity() {
                // Only bodies without Content-Length grow: double, within the limit,
                // and take the growth from the budget first.
                let grown = needed
                    .max(buf.capacity().saturating_mul(2))
                    .max(FIRST_CHUNKED_CAPACITY)
                    .min(limit);
                let more = self.take(grown - buf.capacity())?;
                match held.as_mut() {
                    Some(h) => h.merge(more),
                    None => held = Some(more),
                }
                buf.grow_to(grown)?;
            }
            buf.extend_from_slice(&data);
        }
        Ok(Buffered {
            bytes: buf.freeze(),
            _held: held,
        })
    }
}

/// A body buffer: on the heap when small, its own memory map when large.
enum Buf {
    Heap(Vec<u8>),
    Mapped { map: memmap2::MmapMut, len: usize },
}

/// The bytes of a mapped body, owned by the [`Bytes`] made from them.
struct MappedBody {
    map: memmap2::MmapMut,
    len: usize,
}

impl AsRef<[u8]> for MappedBody {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

fn map(capacity: usize) -> Result<memmap2::MmapMut, ApiError> {
    memmap2::MmapMut::map_anon(capacity).map_err(|e| {
        tracing::warn!(capacity, error = %e, "could not map memory for a request body; answering 503");
        ApiError::Busy
    })
}

impl Buf {
    fn with_capacity(capacity: usize) -> Result<Self, ApiError> {
        Ok(if capacity >= MAP_FROM {
            Self::Mapped {
                map: map(capacity)?,
                len: 0,
            }
        } else {
            Self::Heap(Vec::with_capacity(capacity))
        })
    }

    fn len(&self) -> usize {
        match self {
            Self::Heap(v) => v.len(),
            Self::Mapped { len, .. } => *len,
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Self::Heap(v) => v.capacity(),
            Self::Mapped { map, .. } => map.len(),
        }
    }

    /// Makes room for `capacity` bytes in all, keeping the content.
    fn grow_to(&mut self, capacity: usize) -> Result<(), ApiError> {
        if capacity <= self.capacity() {
            return Ok(());
        }
        match self {
            Self::Heap(v) if capacity < MAP_FROM => v.reserve_exact(capacity - v.len()),
            _ => {
                let mut grown = map(capacity)?;
                let len = self.len();
                grown[..len].copy_from_slice(self.filled());
                *self = Self::Mapped { map: grown, len };
            }
        }
        Ok(())
    }

    fn filled(&self) -> &[u8] {
        match self {
            Self::Heap(v) => v,
            Self::Mapped { map, len } => &map[..*len],
        }
    }

    /// Appends `data`; the caller made room for it.
    fn extend_from_slice(&mut self, data: &[u8]) {
        match self {
            Self::Heap(v) => v.extend_from_slice(data),
            Self::Mapped { map, len } => {
                map[*len..*len + data.len()].copy_from_slice(data);
                *len += data.len();
            }
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Self::Heap(v) => Bytes::from(v),
            Self::Mapped { map, len } => Bytes::from_owner(MappedBody { map, len }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body_util::Full;
    use hyper::body::Frame;

    use super::*;

    /// A body of data frames without a known length (like a chunked upload).
    struct Chunks(VecDeque<Bytes>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(sizes: &[usize]) -> Chunks {
        Chunks(sizes.iter().map(|n| Bytes::from(vec![b'x'; *n])).collect())
    }

    #[tokio::test]
    async fn declared_length_is_taken_up_front_and_returned_on_drop() {
        let budget = BodyBudget::new(100);
        let body = budget
            .read(Some(60), 1000, Full::new(Bytes::from(vec![b'x'; 60])))
            .await
            .unwrap();
        assert_eq!(body.bytes.len(), 60);
        assert_eq!(budget.available(), 40);
        let refused = budget
            .read(Some(41), 1000, Full::new(Bytes::from(vec![b'x'; 41])))
            .await;
        assert!(matches!(refused, Err(ApiError::Busy)), "{refused:?}");
        drop(body);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn chunked_bodies_take_their_buffer_as_it_grows() {
        let budget = BodyBudget::new(1 << 20);
        let body = budget
            .read(None, 1 << 20, chunks(&[1000, 70_000, 10]))
            .await
            .unwrap();
        assert_eq!(body.bytes.len(), 71_010);
        // 64 KiB first, then doubled to 128 KiB.
        assert_eq!(budget.available(), (1 << 20) - 128 * 1024);
        drop(body);
        assert_eq!(budget.available(), 1 << 20);

        // Growth beyond the budget is refused mid-body, and what was taken is returned.
        let small = BodyBudget::new(100 * 1024);
        let refused = small.read(None, 1 << 20, chunks(&[1000, 70_000])).await;
        assert!(matches!(refused, Err(ApiError::Busy)), "{refused:?}");
        assert_eq!(small.available(), 100 * 1024);
    }

    #[tokio::test]
    async fn large_bodies_are_mapped_and_kept_byte_for_byte() {
        let budget = BodyBudget::new(8 << 20);
        let data: Vec<u8> = (0..3 * MAP_FROM).map(|i| (i % 251) as u8).collect();
        let declared = budget
            .read(
                Some(data.len() as u64),
                4 << 20,
                Full::new(Bytes::from(data.clone())),
            )
            .await
            .unwrap();
        assert_eq!(&declared.bytes[..], &data[..]);
        // Chunked: grows from the heap into a map, keeping what it had.
        let mut chunks = Chunks(VecDeque::new());
        for piece in data.chunks(100_000) {
            chunks.0.push_back(Bytes::copy_from_slice(piece));
        }
        let streamed = budget.read(None, 4 << 20, chunks).await.unwrap();
        assert_eq!(&streamed.bytes[..], &data[..]);
        drop((declared, streamed));
        assert_eq!(budget.available(), 8 << 20);
    }

    #[tokio::test]
    async fn the_limit_holds_with_and_without_content_length() {
        let budget = BodyBudget::new(1 << 20);
        let declared = budget
            .read(Some(5000), 4096, Full::new(Bytes::from(vec![b'x'; 5000])))
            .await;
        assert!(matches!(
            declared,
            Err(ApiError::PayloadTooLarge { limit: 4096 })
        ));
        let streamed = budget.read(None, 4096, chunks(&[4000, 97])).await;
        assert!(matches!(
            streamed,
            Err(ApiError::PayloadTooLarge { limit: 4096 })
        ));
        let exact = budget.read(None, 4096, chunks(&[4000, 96])).await.unwrap();
        assert_eq!(exact.bytes.len(), 4096);
        drop(exact);
        assert_eq!(budget.available(), 1 << 20);
    }
}
