//! The Hugging Face transformers layout of GPT-2 (`GPT2LMHeadModel`): `config.json` and `model.safetensors`,
//! written for any model of this crate and read back from any GPT-2-family checkpoint in that layout.
//!
//! transformers keeps GPT-2's original `Conv1D` layers, whose weights are stored `[in, out]`: the transpose
//! of the `[out, in]` of a Linear, which nanoGPT and this crate use. The `c_attn`, `c_proj` and `c_fc`
//! weights are therefore transposed on the way out and back on the way in. A square `c_proj` would load
//! without a shape error if one were missed, and compute the wrong function: the tests compare logits.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::{parameter_specs, serialize_safetensors, LN_EPS};
use crate::{Error, Gpt, GptConfig, Result};

/// The layers that transformers' GPT-2 implements as `Conv1D` (weight `[in, out]`).
pub const CONV1D_LAYERS: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

/// Whether a parameter name is the weight of a `Conv1D` layer in transformers' layout.
pub fn is_conv1d_weight(name: &str) -> bool {
    CONV1D_LAYERS
        .iter()
        .any(|l| name.ends_with(&format!("{l}.weight")))
}

/// The fields of transformers' `GPT2Config` that decide the function a checkpoint computes; the rest take
/// transformers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfGpt2Config {
    #[serde(default = "gpt2_arch")]
    pub architectures: Vec<String>,
    pub model_type: String,
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "gelu_new")]
    pub activation_function: String,
    #[serde(default = "ln_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub resid_pdrop: f64,
    #[serde(default)]
    pub embd_pdrop: f64,
    #[serde(default)]
    pub attn_pdrop: f64,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<u32>,
    #[serde(default = "float32")]
    pub torch_dtype: String,
}

fn gpt2_arch() -> Vec<String> {
    vec!["GPT2LMHeadModel".into()]
}
fn gelu_new() -> String {
    "gelu_new".into()
}
fn ln_eps() -> f64 {
    LN_EPS
}
fn yes() -> bool {
    true
}
fn float32() -> String {
    "float32".into()
}

impl HfGpt2Config {
    pub fn of(cfg: &GptConfig, eot: Option<u32>) -> Self {
        Self {
            architectures: gpt2_arch(),
            model_type: "gpt2".into(),
            vocab_size: cfg.vocab_size,
            n_positions: cfg.block_size,
            n_embd: cfg.n_embd,
            n_layer: cfg.n_layer,
            n_head: cfg.n_head,
            n_inner: None,
            activation_function: gelu_new(),
            layer_norm_epsilon: LN_EPS,
            tie_word_embeddings: true,
            resid_pdrop: cfg.dropout,
            embd_pdrop: cfg.dropout,
            attn_pdrop: cfg.dropout,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            bos_token_id: eot,
            eos_token_id: eot,
            torch_dtype: float32(),
        }
    }

    /// The model this crate builds for a transformers config, or why it cannot compute the same function.
    pub fn to_gpt(&self) -> Result<GptConfig> {
        let refuse = |what: String| {
            Err(Error::Config(format!(
                "this GPT-2 checkpoint has {what}, which collapse-lab's model does not implement"
            )))
        };
        if self.model_type != "gpt2" {
            return refuse(format!("model_type {:?} (not \"gpt2\")", self.model_type));
        }
        if !matches!(
            self.activation_function.as_str(),
            "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return refuse(format!(
                "activation_function {:?} (only GPT-2's tanh GELU, \"gelu_new\")",
                self.activation_function
            ));
        }
        if self.n_inner.is_some_and(|n| n != 4 * self.n_embd) {
            return refuse(format!("n_inner {:?} (only 4 n_embd)", self.n_inner));
        }
        if (self.layer_norm_epsilon - LN_EPS).abs() > 1e-12 {
            return refuse(format!(
                "layer_norm_epsilon {} (only {LN_EPS})",
                self.layer_norm_epsilon
            ));
        }
        if !self.tie_word_embeddings {
            return refuse("an untied lm_head".into());
        }
        if !self.scale_attn_weights || self.scale_attn_by_inverse_layer_idx {
            return refuse("non-standard attention scaling".into());
        }
        let cfg = GptConfig {
            vocab_size: self.vocab_size,
            block_size: self.n_positions,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            dropout: self.resid_pdrop,
            bias: true,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl Gpt {
    /// The model in transformers' layout: `config.json` text and `model.safetensors` bytes (tensor names as
    /// `GPT2LMHeadModel.save_pretrained` writes them, the tied `lm_head` left out, `Conv1D` weights
    /// transposed, zero biases where the model has none). `eot` becomes the BOS and EOS token id.
    pub fn to_hf(&self, eot: Option<u32>) -> Result<(String, Vec<u8>)> {
        let cfg = HfGpt2Config::of(self.config(), eot);
        let config = serde_json::to_string_pretty(&cfg).expect("config serialises");
        let params: HashMap<&str, Tensor> = self
            .params()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_tensor().clone()))
            .collect();
        let full = GptConfig {
            bias: true,
            ..self.config().clone()
        };
        let mut tensors = Vec::new();
        for (name, shape, _) in parameter_specs(&full) {
            let t = match params.get(name.as_str()) {
                Some(t) if is_conv1d_weight(&name) => t.t()?.contiguous()?,
                Some(t) => t.clone(),
                None => Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
            };
            tensors.push((name, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?));
        }
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        Ok((config, serialize_safetensors(&tensors, meta)?))
    }

    /// Reads a GPT-2-family checkpoint in transformers' layout (a directory with `config.json` and
    /// `model.safetensors`, tensor names with or without the `transformer.` prefix; extra buffers such as
    /// old checkpoints' `attn.bias` are ignored) through candle-nn's `VarBuilder`, which checks every
    /// shape by name.
    pub fn from_hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| Error::Io { path: p, source }
        };
        let ck = |msg: String| Error::Checkpoint {
            path: dir.display().to_string(),
            msg,
        };
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
        let hf: HfGpt2Config = serde_json::from_str(&text)
            .map_err(|e| ck(format!("config.json is not a GPT-2 config ({e})")))?;
        let cfg = hf.to_gpt().map_err(|e| ck(e.to_string()))?;
        let weights = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights).map_err(io(&weights))?;
        let vb = candle_nn::VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)?;
        let prefixed = vb.contains_tensor("transformer.wte.weight");
        let mut tensors = HashMap::new();
        for (name, shape, _) in parameter_specs(&cfg) {
            let key = if prefixed {
                name.clone()
            } else {
                name.trim_start_matches("transformer.").to_string()
            };
            let t = if is_conv1d_weight(&name) {
                vb.get((shape[1], shape[0]), &key)
                    .map_err(|e| ck(e.to_string()))?
                    .t()?
                    .contiguous()?
            } else {
                vb.get(shape.as_slice(), &key)
                    .map_err(|e| ck(e.to_string()))?
            };
            tensors.insert(name, t.to_dtype(dtype)?.to_device(device)?);
        }
        Self::from_tensors(&cfg, tensors).map_err(|e| ck(e.to_string()))
    }
}

/// Whether `path` is a directory in transformers' layout.
pub fn is_hf_dir(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").exists()
}
