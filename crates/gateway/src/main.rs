//! The `pingwheel` binary (being written; see issue 4).
fn main() {}
