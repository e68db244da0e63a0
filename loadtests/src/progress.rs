//! The progress bar on stderr: done / errors / in flight. Hidden with `quiet` or when stderr
//! is not a terminal.

use std::{cell::Cell, io::IsTerminal as _, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
    started: Cell<u64>,
    ok: Cell<u64>,
    failed: Cell<u64>,
}

impl Progress {
    /// `total` is the number of requests planned, when known.
    pub(crate) fn new(quiet: bool, total: Option<u64>) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let (bar, template) = match total {
                Some(n) => (
                    ProgressBar::new(n),
                    "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{spinner} {elapsed_precise} {pos} done {msg}",
                ),
            };
            let style = ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        };
        Progress {
            bar,
            started: Cell::new(0),
            ok: Cell::new(0),
            failed: Cell::new(0),
        }
    }

    pub(crate) fn started(&self) {
        self.started.set(self.started.get() + 1);
        self.refresh();
    }

    pub(crate) fn finished(&self, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.set(counter.get() + 1);
        self.bar.inc(1);
        self.refresh();
    }

    fn refresh(&self) {
        if self.bar.is_hidden() {
            return;
        }
        let (ok, failed) = (self.ok.get(), self.failed.get());
        let in_flight = self.started.get().saturating_sub(ok + failed);
        self.bar
            .set_message(format!("ok {ok}  errors {failed}  in flight {in_flight}"));
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
