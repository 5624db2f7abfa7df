//! `vitk train --recipe NAME`: a named set of training flags. A recipe is nothing but flags: each
//! one the user did not give is added to the command line before it is parsed, so every flag
//! of a recipe can be overridden one by one, `--help` documents them all, and config.json
//! records the values the run used (and, under `recipe`, which flags the recipe filled).

use anyhow::{bail, Result};
use std::ffi::OsString;

/// A named recipe.
#[derive(Debug)]
pub struct Recipe {
    pub name: &'static str,
    /// What it is and where its numbers come from.
    pub about: &'static str,
    /// The flags it sets, as on the command line.
    pub flags: &'static [(&'static str, &'static str)],
}

/// The recipes `--recipe` takes.
pub const RECIPES: &[Recipe] = &[
    Recipe {
        name: "cifar-best",
        about: "the plain-ViT configuration of Lee et al. 2021 (Vision Transformer for Small-Size Datasets), reported at 93.6% on CIFAR-10 from scratch: D192 L9 H12 M384, patch 4, 100 epochs, batch 128, AdamW 1e-3 / wd 0.05, 10 warm-up epochs, cosine, AutoAugment, Mixup 0.8 + CutMix 1.0, repeated augmentation x3, random erasing 0.25, stochastic depth 0.1, label smoothing 0.1",
        flags: &[
            ("--model", "tiny"),
            ("--patch-size", "4"),
            ("--epochs", "100"),
            ("--batch-size", "128"),
            ("--lr", "1e-3"),
            ("--min-lr", "1e-5"),
            ("--weight-decay", "0.05"),
            ("--warmup-epochs", "10"),
            ("--schedule", "cosine"),
            ("--auto-augment", "cifar10"),
            ("--mixup", "0.8"),
            ("--cutmix", "1.0"),
            ("--mixup-switch-prob", "0.5"),
            ("--aug-repeats", "3"),
            ("--reprob", "0.25"),
            ("--drop-path", "0.1"),
            ("--label-smoothing", "0.1"),
        ],
    },
    Recipe {
        name: "cifar-fast",
        about: "a short schedule for a small budget: the same `tiny` model for 30 epochs at batch 256, 3 warm-up epochs, RandAugment (rand-m9-mstd0.5-inc1), random erasing 0.25, stochastic depth 0.05, label smoothing 0.1 and an EMA of the weights (no mixing and no repeats, which pay off only over long schedules)",
        flags: &[
            ("--model", "tiny"),
            ("--patch-size", "4"),
            ("--epochs", "30"),
            ("--batch-size", "256"),
            ("--lr", "2e-3"),
            ("--min-lr", "1e-5"),
            ("--weight-decay", "0.05"),
            ("--warmup-epochs", "3"),
            ("--schedule", "cosine"),
            ("--auto-augment", "rand-m9-mstd0.5-inc1"),
            ("--reprob", "0.25"),
            ("--drop-path", "0.05"),
            ("--label-smoothing", "0.1"),
            ("--ema-decay", "0.999"),
        ],
    },
];

/// The recipe called `name`, or an error listing the names.
pub fn find(name: &str) -> Result<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name).ok_or_else(|| {
        let names: Vec<&str> = RECIPES.iter().map(|r| r.name).collect();
        anyhow::anyhow!(
            "--recipe {name}: unknown recipe (expected one of: {})",
            names.join(", ")
        )
    })
}

/// The recipe's flags that the command line does not give, as "--flag value" strings.
pub fn missing_flags(recipe: &Recipe, args: &[OsString]) -> Vec<(&'static str, &'static str)> {
    let given = |flag: &str| {
        args.iter().any(|a| {
            a.to_str().is_some_and(|a| {
                a == flag
                    || a.strip_prefix(flag)
                        .is_some_and(|rest| rest.starts_with('='))
            })
        })
    };
    recipe
        .flags
        .iter()
        .copied()
        .filter(|(flag, _)| !given(flag))
        .collect()
}

/// The command line `args` (program name first) with `--recipe NAME` of `vitk train`
/// expanded: the recipe's flags the user did not give are appended. Returns the new
/// arguments and the recipe with the flags it filled (None without `--recipe`).
#[allow(clippy::type_complexity)]
pub fn expand(
    args: Vec<OsString>,
) -> Result<(Vec<OsString>, Option<(&'static Recipe, Vec<String>)>)> {
    if args.get(1).and_then(|a| a.to_str()) != Some("train") {
        return Ok((args, None));
    }
    let mut name = None;
    for (i, a) in args.iter().enumerate() {
        let Some(a) = a.to_str() else { continue };
        if a == "--recipe" {
            match args.get(i + 1).and_then(|v| v.to_str()) {
                Some(v) => name = Some(v.to_string()),
                None => bail!("--recipe: expected a recipe name (cifar-best or cifar-fast)"),
            }
        } else if let Some(v) = a.strip_prefix("--recipe=") {
            name = Some(v.to_string());
        }
    }
    let Some(name) = name else {
        return Ok((args, None));
    };
    let recipe = find(&name)?;
    if args.iter().any(|a| a.to_str() == Some("--resume")) {
        bail!("--recipe cannot be combined with --resume: a resumed run keeps the config it started with");
    }
    let epochs = given_value(&args, "--epochs").and_then(|e| e.parse::<f64>().ok());
    let missing: Vec<(&str, String)> = missing_flags(recipe, &args)
        .into_iter()
        .map(|(flag, value)| (flag, scaled_warmup(recipe, flag, value, epochs)))
        .collect();
    let filled: Vec<String> = missing.iter().map(|(f, v)| format!("{f} {v}")).collect();
    let mut out = args;
    for (flag, value) in missing {
        out.push(flag.into());
        out.push(value.into());
    }
    Ok((out, Some((recipe, filled))))
}

/// The value of `flag` on the command line (`--flag V` or `--flag=V`), if given.
fn given_value(args: &[OsString], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        let a = a.to_str()?;
        if a == flag {
            args.get(i + 1)?.to_str().map(str::to_string)
        } else {
            let rest = a.strip_prefix(flag)?.strip_prefix('=')?;
            Some(rest.to_string())
        }
    })
}

/// A recipe's `value` of `flag`, except its warm-up when the command line gives its own
/// number of epochs: the same fraction of the schedule (cifar-best's 10 of 100 epochs is 3
/// of 30), so that a shortened recipe keeps its shape instead of warming up for all of it.
fn scaled_warmup(recipe: &Recipe, flag: &str, value: &str, epochs: Option<f64>) -> String {
    let recipe_epochs = recipe
        .flags
        .iter()
        .find(|(f, _)| *f == "--epochs")
        .and_then(|(_, e)| e.parse::<f64>().ok());
    match (flag, value.parse::<f64>(), epochs, recipe_epochs) {
        ("--warmup-epochs", Ok(w), Some(e), Some(r)) if e.is_finite() && e > 0.0 && r > 0.0 => {
            // to 2 decimals: the printed and recorded value is the one used
            let scaled = (w * e / r * 100.0).round() / 100.0;
            format!("{scaled}")
        }
        _ => value.to_string(),
    }
}

/// What the run prints of its recipe: what it is, the flags it filled and those of its flags
/// the command line gave instead.
pub fn describe(recipe: &Recipe, filled: &[String]) -> String {
    let overridden: Vec<&str> = recipe
        .flags
        .iter()
        .map(|(flag, _)| *flag)
        .filter(|flag| !filled.iter().any(|f| f.split(' ').next() == Some(*flag)))
        .collect();
    let mut text = format!(
        "recipe {}: {}\nrecipe {} sets: {}",
        recipe.name,
        recipe.about,
        recipe.name,
        if filled.is_empty() {
            "nothing (every flag given)".to_string()
        } else {
            filled.join(" ")
        }
    );
    if !overridden.is_empty() {
        text += &format!("; given on the command line: {}", overridden.join(" "));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_warm_up_keeps_its_share_of_given_epochs() {
        let filled = |cmd: &[&str]| expand(args(cmd)).unwrap().1.unwrap().1;
        let base = ["vitk", "train", "--recipe", "cifar-best"];
        let with = |more: &[&str]| filled(&[&base[..], more].concat());
        assert!(filled(&base).contains(&"--warmup-epochs 10".to_string()));
        assert!(with(&["--epochs", "30"]).contains(&"--warmup-epochs 3".to_string()));
        assert!(with(&["--epochs=2"]).contains(&"--warmup-epochs 0.2".to_string()));
        assert!(with(&["--epochs", "7"]).contains(&"--warmup-epochs 0.7".to_string()));
        // a given warm-up is the user's; an unreadable --epochs is left to the parser
        let given = with(&["--epochs", "30", "--warmup-epochs", "5"]);
        assert!(!given.iter().any(|f| f.starts_with("--warmup-epochs")));
        assert!(with(&["--epochs", "many"]).contains(&"--warmup-epochs 10".to_string()));
    }

    #[test]
    fn given_flags_win_and_the_rest_is_filled() {
        let (out, r) = expand(args(&[
            "vitk",
            "train",
            "--recipe",
            "cifar-best",
            "--epochs",
            "3",
            "--model=micro",
        ]))
        .unwrap();
        let (recipe, filled) = r.unwrap();
        assert_eq!(recipe.name, "cifar-best");
        assert!(!filled.iter().any(|f| f.starts_with("--epochs ")));
        assert!(!filled.iter().any(|f| f.starts_with("--model ")));
        assert!(filled.contains(&"--drop-path 0.1".to_string()));
        assert_eq!(filled.len(), recipe.flags.len() - 2);
        let text = describe(recipe, &filled);
        assert!(
            text.contains("sets: --patch-size 4 --batch-size 128"),
            "{text}"
        );
        assert!(
            text.ends_with("; given on the command line: --model --epochs"),
            "{text}"
        );
        let text: Vec<&str> = out.iter().filter_map(|a| a.to_str()).collect();
        assert_eq!(text.iter().filter(|a| **a == "--epochs").count(), 1);
        assert!(text.windows(2).any(|w| w == ["--mixup", "0.8"]));
    }

    #[test]
    fn other_commands_and_no_recipe_are_untouched() {
        let a = args(&["vitk", "eval", "--recipe", "x"]);
        assert_eq!(expand(a.clone()).unwrap().0, a);
        let a = args(&["vitk", "train", "--epochs", "2"]);
        let (out, r) = expand(a.clone()).unwrap();
        assert_eq!(out, a);
        assert!(r.is_none());
    }

    #[test]
    fn unknown_names_and_resume_are_refused() {
        let e = expand(args(&["vitk", "train", "--recipe", "fastest"])).unwrap_err();
        assert!(e.to_string().contains("cifar-best, cifar-fast"), "{e}");
        let e = expand(args(&[
            "vitk",
            "train",
            "--recipe",
            "cifar-fast",
            "--resume",
            "r",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("--resume"), "{e}");
    }
}
