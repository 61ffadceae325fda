pub mod demo;
pub mod eval;
pub mod inspect;
