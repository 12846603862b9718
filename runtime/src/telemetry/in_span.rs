//! A future that runs inside a messaging span, like `tracing`'s `Instrumented`, but drops
//! what it ran inside the span's last entry (`Instrumented` enters its span once more to drop
//! a future that has finished), and with the recorded span as OpenTelemetry's current
//! context while it is polled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::MessagingSpan;
use pin_project_lite::pin_project;

pin_project! {
    /// `future` polled inside `span`; once it is ready, `then` turns its output (with the
    /// span, to record on it) into this future's.
    pub(crate) struct InSpan<F, Then> {
        span: MessagingSpan,
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
pub(crate) fn in_span<F, Then, T>(span: MessagingSpan, future: F, then: Then) -> InSpan<F, Then>
where
    F: Future,
    Then: FnOnce(&MessagingSpan, F::Output) -> T,
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
    Then: FnOnce(&MessagingSpan, F::Output) -> T,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use tracing::Span;
    use tracing::span::Id;

    use super::*;

    /// The span current where something happened, by what happened.
    type Seen = Arc<Mutex<Vec<(&'static str, Option<Id>)>>>;

    /// Notes the current span when dropped.
    struct Noted(&'static str, Seen);

    impl Drop for Noted {
        fn drop(&mut self) {
            self.1.lock().unwrap().push((self.0, Span::current().id()));
        }
    }

    /// A messaging span with no recorded span.
    fn traced(span: Span) -> MessagingSpan {
        MessagingSpan {
            span,
            recorded: None,
        }
    }

    fn in_a_registry(test: impl FnOnce()) {
        tracing::subscriber::with_default(tracing_subscriber::registry(), test);
    }

    #[test]
    fn the_future_is_dropped_and_then_runs_inside_the_span_once_it_is_ready() {
        in_a_registry(|| {
            let seen = Seen::default();
            let span = tracing::info_span!("process");
            let id = span.id();
            let noted = Noted("future dropped", Arc::clone(&seen));
            let future = async move {
                let _noted = noted;
            };
            let sink = Arc::clone(&seen);
            let then = move |span: &MessagingSpan, ()| {
                sink.lock().unwrap().push(("then", Span::current().id()));
                span.span.id()
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let returned = runtime.block_on(in_span(traced(span), future, then));
            assert_eq!(returned, id);
            let seen = seen.lock().unwrap();
            assert_eq!(
                *seen,
                vec![("future dropped", id.clone()), ("then", id.clone())]
            );
        });
    }

    #[test]
    fn a_future_dropped_before_it_finished_is_dropped_inside_its_span() {
        in_a_registry(|| {
            let seen = Seen::default();
            let span = tracing::info_span!("process");
            let id = span.id();
            let noted = Noted("future dropped", Arc::clone(&seen));
            let never = async move {
                let _noted = noted;
                std::future::pending::<()>().await;
            };
            let mut running = Box::pin(in_span(traced(span), never, |_: &MessagingSpan, ()| ()));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(running.as_mut().poll(&mut cx).is_pending());
            drop(running);
            assert_eq!(*seen.lock().unwrap(), vec![("future dropped", id)]);
            assert_eq!(Span::current().id(), None, "the span is left once dropped");
        });
    }
}
