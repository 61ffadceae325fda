//! Calibration and evaluation data for subq: image folders ([`dataset`]),
//! ImageNet-style synset labels ([`labels`]) and Pillow-compatible image
//! preprocessing into normalized f32 CHW tensors ([`preprocess`]).

pub mod dataset;
pub mod error;
pub mod labels;
pub mod observer;
pub mod preprocess;

pub use dataset::{label_of, list_images, ImageItem};
pub use error::CalibError;
pub use labels::Synsets;
pub use preprocess::{ChannelOrder, Preprocess, ResizeMode};
