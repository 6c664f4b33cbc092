//! A hashed timer wheel with an explicit clock (being written; see issue 3).
