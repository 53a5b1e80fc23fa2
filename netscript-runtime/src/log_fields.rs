//! How the log writes the fields of spans and events: `name=value` separated by spaces, the
//! message bare, much as `tracing_subscriber`'s default formatter does, for a fraction of the
//! instructions.
//!
//! Every job runs in a `job` span whose fields the log formats when the span is created, job
//! or no job log line. The default formatter paints each field name (italic on a terminal, an
//! empty style elsewhere) and goes through `core::fmt` for every name, `=` and value: about
//! 1,100 instructions a field, most of the cost tracing added to a no-op job, and grows the
//! span's text a few bytes at a time. Here names and strings are copied, integers go through
//! `itoa`, only other values use `Debug`, and the text is written to the layer in one piece
//! (docs/BENCHMARKS.md, "Tracing overhead").

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};

/// The log's field formatter (see the module documentation).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LogFields;

impl<'w> FormatFields<'w> for LogFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        // Formatted in a scratch string of the thread's and written at once: the fmt layer's
        // text of a new span starts empty, and growing it a few bytes at a time cost more than
        // the formatting. A fresh string only if a value's `Debug` logs in turn.
        thread_local! {
            static SCRATCH: RefCell<String> = RefCell::new(String::with_capacity(256));
        }
        SCRATCH.with(|scratch| {
            let mut fresh = String::new();
            let mut borrowed = scratch.try_borrow_mut();
            let out = match borrowed.as_deref_mut() {
                Ok(scratch) => scratch,
                Err(_) => &mut fresh,
            };
            out.clear();
            let mut visitor = Visitor { out, result: Ok(()) };
            fields.record(&mut visitor);
            visitor.result?;
            writer.write_str(visitor.out)
        })
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &span::Record<'_>) -> fmt::Result {
        // A field recorded later (the outcome, the queue provider) goes straight to the end.
        let mut visitor = Visitor { out: &mut current.fields, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'a> {
    out: &'a mut String,
    result: fmt::Result,
}

impl Visitor<'_> {
    /// Writes the separator and `name=` (nothing for the message), then the value; skips the
    /// `log.*` fields of records bridged from the `log` crate, which the line already shows.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        if !self.out.is_empty() {
            self.out.push(' ');
        }
        if name != "message" {
            self.out.push_str(name.strip_prefix("r#").unwrap_or(name));
            self.out.push('=');
        }
        self.result = value(self.out);
    }
}

/// Whether a string value can be written without quotes and still read back as one value.
fn is_bare(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b > b' ' && b != b'"' && b != b'=' && b != b'\\' && b != 0x7f)
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let message = field.name() == "message";
        self.field(field, |w| {
            if message || is_bare(value) {
                w.push_str(value);
                Ok(())
            } else {
                write!(w, "{value:?}")
            }
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| {
            w.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| {
            w.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| {
            w.push_str(if value { "true" } else { "false" });
            Ok(())
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |w| {
            write!(w, "{value}")?;
            let mut source = value.source();
            while let Some(cause) = source {
                write!(w, ": {cause}")?;
                source = cause.source();
            }
            Ok(())
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| write!(w, "{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// The log lines `body` writes through a fmt layer with [`LogFields`], without time or
    /// level, spans included.
    fn logged(body: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let out = sink.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .fmt_fields(LogFields);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), body);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn writes_names_values_and_the_message_bare() {
        let line = logged(|| {
            let span = tracing::info_span!(
                "job",
                job.id = %"send-email",
                attempt = 2_i64,
                big = u64::MAX,
                ok = true,
                ratio = 0.5,
                outcome = tracing::field::Empty,
            );
            span.record("outcome", "succeeded");
            let _entered = span.enter();
            tracing::info!(user = "bob", note = "two words", empty = "", r#type = "x", span_id_like = ?Some(3), "charged {}", 42);
        });
        assert_eq!(
            line,
            "job{job.id=send-email attempt=2 big=18446744073709551615 ok=true ratio=0.5 outcome=succeeded}: \
             charged 42 user=bob note=\"two words\" empty=\"\" type=x span_id_like=Some(3)\n"
        );
    }

    #[test]
    fn writes_an_error_with_its_causes() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("store refused the batch")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Outer(std::io::Error::other("disk full"));
        let line = logged(|| tracing::warn!(error = &error as &(dyn std::error::Error + 'static), "retrying"));
        assert_eq!(line, "retrying error=store refused the batch: disk full\n");
    }
}
