//! The model: a nanoGPT-size GPT-2 on candle.
//!
//! Owns the configuration, GPT-2 initialisation from a seeded RNG, the forward pass and its loss, KV-cache
//! batched sampling, and safetensors IO with GPT-2 tensor names, in its own format and in Hugging Face
//! transformers' layout. It knows nothing of corpora, schedules, optimizers or run directories: it maps
//! token ids to logits, losses and new token ids.

mod config;
mod cpu_ops;
mod fused;
mod hf;
mod model;
mod sample;

pub use config::GptConfig;
pub use fused::{fast_exp_slice, linear_cross_entropy_sum};
pub use hf::{is_conv1d_weight, is_hf_dir, HfGpt2Config, CONV1D_LAYERS};
pub use model::{
    atomic_write, deserialize_safetensors, load_safetensors, save_safetensors,
    serialize_safetensors, Chunking, Gpt, KvCache,
};
pub use sample::{
    device_sampler_chi_square, filter_on_device, generate, generate_on_device, gumbel_argmax,
    ChiSquare, Decoder, GenerateConfig, Sampler, GUMBEL_ROWS, GUMBEL_U_MAX, GUMBEL_U_MIN,
};

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("invalid generation settings: {0}")]
    Generate(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
