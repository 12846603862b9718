//! A future that runs inside a span, like `tracing`'s `Instrumented`, but drops what it ran
//! inside the span's last entry: `Instrumented` enters its span once more to drop a future
//! that has finished, and with OpenTelemetry recording every entry costs hundreds of
//! instructions (two spans a message).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tracing::Span;

pin_project! {
    /// `future` polled inside `span`; once it is ready, `then` turns its output (with the
    /// span, to record on it) into this future's.
    pub(crate) struct InSpan<F, Then> {
        span: Span,
        #[pin]
        future: Option<F>,
        then: Option<Then>,
    }

    impl<F, Then> PinnedDrop for InSpan<F, Then> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.future.is_some() {
                // Dropped before it finished: whatever it drops still happens in its span.
                let _entered = this.span.enter();
                this.future.set(None);
            }
        }
    }
}

/// Runs `future` inside `span`, then `then(&span, output)`.
pub(crate) fn in_span<F, Then, T>(span: Span, future: F, then: Then) -> InSpan<F, Then>
where
    F: Future,
    Then: FnOnce(&Span, F::Output) -> T,
{
    InSpan {
        span,
        future: Some(future),
        then: Some(then),
    }
}

impl<F, Then, T> Future for InSpan<F, Then>
where
    F: Future,
    Then: FnOnce(&Span, F::Output) -> T,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            panic!("InSpan polled after it was ready");
        };
        let output = ready!(future.poll(cx));
        this.future.set(None);
        let then = this.then.take();
        match then {
            Some(then) => Poll::Ready(then(this.span, output)),
            None => panic!("InSpan polled after it was ready"),
        }
    }
}
