//! Model configuration and the named presets.

use super::ImageSize;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How the token sequence becomes one vector per image (timm's `global_pool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// A learnable class token is prepended; the head reads token 0 after `norm`.
    Cls,
    /// No class token; tokens are averaged, then `fc_norm` (timm `global_pool='avg'`).
    Mean,
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pool::Cls => "cls",
            Pool::Mean => "mean",
        })
    }
}

impl std::str::FromStr for Pool {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cls" | "token" => Ok(Pool::Cls),
            "mean" | "avg" => Ok(Pool::Mean),
            _ => Err(ConfigError(format!("pool '{s}' is not one of: cls, mean"))),
        }
    }
}

/// An invalid configuration, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid model configuration: {0}")]
pub struct ConfigError(pub String);

/// The shape of a ViT. Letters used in comments: S image_size (S_h x S_w when not square),
/// P patch_size, C in_chans, K num_classes, D embed_dim, L depth, H num_heads, M mlp_dim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub image_size: ImageSize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub num_classes: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub pool: Pool,
}

/// Named presets: (name, D, L, H, M); all use 32x32x3 input, patch 4, 10 classes, cls pooling.
pub const PRESETS: &[(&str, usize, usize, usize, usize)] = &[
    ("micro", 64, 4, 4, 128),
    ("seed", 256, 6, 8, 1024),
    ("lite", 256, 7, 4, 512),
    ("tiny", 192, 9, 12, 384),
    ("small", 384, 7, 12, 384),
];

/// The largest value of each dimension: far above any ViT trained in practice, and small
/// enough that no buffer length computed from them overflows (`patch_size` is at most
/// `image_size`, `num_heads` at most `embed_dim`). Memory is checked separately.
pub struct Limits {
    pub image_size: usize,
    pub in_chans: usize,
    pub num_classes: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub mlp_dim: usize,
}

pub const LIMITS: Limits = Limits {
    image_size: 4096,
    in_chans: 64,
    // labels are u16
    num_classes: 65536,
    embed_dim: 16384,
    depth: 1024,
    mlp_dim: 65536,
};

/// How errors name each dimension.
pub struct DimNames {
    pub image_size: &'static str,
    pub patch_size: &'static str,
    pub in_chans: &'static str,
    pub num_classes: &'static str,
    pub embed_dim: &'static str,
    pub depth: &'static str,
    pub num_heads: &'static str,
    pub mlp_dim: &'static str,
}

/// The field names, for configs read from files.
pub const FIELD_NAMES: DimNames = DimNames {
    image_size: "image_size",
    patch_size: "patch_size",
    in_chans: "in_chans",
    num_classes: "num_classes",
    embed_dim: "embed_dim",
    depth: "depth",
    num_heads: "num_heads",
    mlp_dim: "mlp_dim",
};

impl ModelConfig {
    /// The preset called `name`.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let &(_, embed_dim, depth, num_heads, mlp_dim) =
            PRESETS.iter().find(|p| p.0 == name).ok_or_else(|| {
                let names: Vec<_> = PRESETS.iter().map(|p| p.0).collect();
                ConfigError(format!(
                    "unknown preset '{name}', expected one of: {}",
                    names.join(", ")
                ))
            })?;
        Ok(Self {
            image_size: ImageSize::square(32),
            patch_size: 4,
            in_chans: 3,
            num_classes: 10,
            embed_dim,
            depth,
            num_heads,
            mlp_dim,
            pool: Pool::Cls,
        })
    }

    /// Checks that the shapes fit together and lie within [`LIMITS`]; errors use the field
    /// names (a checkpoint's or a test's config).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check(&FIELD_NAMES)
    }

    /// [`Self::validate`] with errors naming each dimension as `names` does (e.g. the flags
    /// of `vitk train`).
    pub fn check(&self, names: &DimNames) -> Result<(), ConfigError> {
        let ImageSize { height, width } = self.image_size;
        // (name, value, largest, the dimension that bounds it)
        let dims = [
            (names.image_size, height, LIMITS.image_size, None),
            (names.image_size, width, LIMITS.image_size, None),
            (
                names.patch_size,
                self.patch_size,
                height.min(width),
                Some(names.image_size),
            ),
            (names.in_chans, self.in_chans, LIMITS.in_chans, None),
            (
                names.num_classes,
                self.num_classes,
                LIMITS.num_classes,
                None,
            ),
            (names.embed_dim, self.embed_dim, LIMITS.embed_dim, None),
            (names.depth, self.depth, LIMITS.depth, None),
            (
                names.num_heads,
                self.num_heads,
                self.embed_dim,
                Some(names.embed_dim),
            ),
            (names.mlp_dim, self.mlp_dim, LIMITS.mlp_dim, None),
        ];
        for (name, v, max, bound) in dims {
            if !(1..=max).contains(&v) {
                let by = bound.map_or(String::new(), |b| format!(" (at most {b} {max})"));
                return Err(ConfigError(format!(
                    "{name} {v} is out of range: expected 1..={max}{by}"
                )));
            }
        }
        if !height.is_multiple_of(self.patch_size) || !width.is_multiple_of(self.patch_size) {
            return Err(ConfigError(format!(
                "{} {} is not a multiple of {} {}",
                names.image_size, self.image_size, names.patch_size, self.patch_size
            )));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(ConfigError(format!(
                "{} {} is not a multiple of {} {}",
                names.embed_dim, self.embed_dim, names.num_heads, self.num_heads
            )));
        }
        Ok(())
    }

    /// The patch grid (rows, columns): (S_h / P, S_w / P).
    pub fn grid(&self) -> (usize, usize) {
        self.image_size.grid(self.patch_size)
    }

    /// N = (S_h / P)·(S_w / P).
    pub fn num_patches(&self) -> usize {
        let (gh, gw) = self.grid();
        gh * gw
    }

    /// C · S_h · S_w, the values of one input image.
    pub fn image_len(&self) -> usize {
        self.in_chans * self.image_size.pixels()
    }

    /// T = N + 1 with a class token, N without.
    pub fn num_tokens(&self) -> usize {
        self.num_patches() + usize::from(self.pool == Pool::Cls)
    }

    /// hd = D / H.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// C · P · P, the length of one im2col patch vector.
    pub fn patch_dim(&self) -> usize {
        self.in_chans * self.patch_size * self.patch_size
    }

    /// A one-line description, e.g. for logs.
    pub fn summary(&self) -> String {
        format!(
            "D{} L{} H{} M{} P{} S{} C{} K{} pool={}",
            self.embed_dim,
            self.depth,
            self.num_heads,
            self.mlp_dim,
            self.patch_size,
            self.image_size,
            self.in_chans,
            self.num_classes,
            self.pool
        )
    }
}
