//! `pingwheel-baseline`: placeholder, written below.
fn main() {}
