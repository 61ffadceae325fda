pub mod bench;
pub mod compare;
pub mod demo;
pub mod eval;
pub mod inspect;
pub mod quantize;
pub mod report;
pub mod sensitivity;
