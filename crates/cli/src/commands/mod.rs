pub mod bench;
pub mod demo;
pub mod eval;
pub mod inspect;
pub mod quantize;
pub mod compare;
pub mod report;
pub mod sensitivity;
