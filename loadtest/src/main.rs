//! `pingwheel-loadtest` (being written; see issue 6).
fn main() {}
