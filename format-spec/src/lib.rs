//! The packed layer format.
