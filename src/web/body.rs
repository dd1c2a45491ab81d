//! Reading a request's body: within a size limit and a deadline, with one error per way it
//! can go wrong (over the limit, past the deadline, the connection broke), which the API and
//! the dashboard answer 413, 408 and 400.
//!
//! The deadline is set per request by [`super::serve`], which wraps every body in a
//! [`DeadlineBody`]: a client has that long from the end of its headers to the end of its
//! body, however it spaces its bytes (a per-read timeout would let one byte every few seconds
//! hold a connection forever).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

/// A request body that fails with [`TimedOut`] once its deadline has passed.
pub struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    after: Duration,
}

impl DeadlineBody {
    pub fn new(inner: Body, after: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(after)),
            after,
        }
    }
}

/// The body was not all there before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("not received within {} s", .0.as_secs_f64())]
pub struct TimedOut(pub Duration);

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(TimedOut(self.after)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a body could not be read; each message names the body (`body`, `form`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Over the limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Not all there before its deadline (408).
    #[error("{0}")]
    TimedOut(String),
    /// The connection broke or the framing was bad (400).
    #[error("{0}")]
    Broken(String),
}

/// The error of a body (`what`: "body", "form") over `limit` bytes.
pub fn too_large(what: &str, limit: usize) -> BodyError {
    BodyError::TooLarge(format!("{what}: larger than the limit of {limit} bytes"))
}

/// Reads a whole request body of at most `limit` bytes. `what` names it in the errors
/// ("body", "form").
pub async fn read(body: Body, limit: usize, what: &str) -> Result<Bytes, BodyError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if e.is::<http_body_util::LengthLimitError>() {
                return too_large(what, limit);
            }
            if let Some(timed_out) = e.downcast_ref::<TimedOut>() {
                return BodyError::TimedOut(format!("{what}: {timed_out}"));
            }
            source = e.source();
        }
        BodyError::Broken(format!("{what}: could not be read: {error}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_that_stops_coming_times_out_at_its_deadline() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"{\"visits\""))))
            .await
            .unwrap();
        let stalled = Body::new(http_body_util::StreamBody::new(tokio_stream_from(rx)));
        let body = Body::new(DeadlineBody::new(stalled, Duration::from_millis(100)));
        let started = std::time::Instant::now();
        let err = read(body, 1024, "body").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            err,
            BodyError::TimedOut("body: not received within 0.1 s".into())
        );
        drop(tx);
    }

    #[tokio::test]
    async fn a_body_within_its_deadline_and_limit_is_read_whole() {
        let body = Body::new(DeadlineBody::new(
            Body::from("hello"),
            Duration::from_secs(5),
        ));
        assert_eq!(read(body, 5, "body").await.unwrap(), "hello");
        let body = Body::new(DeadlineBody::new(
            Body::from("hello!"),
            Duration::from_secs(5),
        ));
        assert_eq!(
            read(body, 5, "form").await.unwrap_err(),
            BodyError::TooLarge("form: larger than the limit of 5 bytes".into())
        );
    }

    /// A stream of the frames sent on `rx`.
    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
