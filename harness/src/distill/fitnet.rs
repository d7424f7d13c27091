//! `fitnet`: FitNets hints, Romero et al. ICLR 2015, RepDistiller variant (methods-feature-online.md
//! §3.1): a trainable regressor r (ConvReg: conv chosen from the two maps' sizes, then BN and ReLU)
//! maps the student's hint-layer map onto the teacher's; `L = mean (r(f_s) − f_t)²`, β = 100,
//! trained jointly from epoch 1 (RepDistiller's schedule, not the paper's two stages).

use tch::{Tensor, nn, nn::Module};

use super::{Distiller, FEAT_CE, FEAT_KD, FEAT_TAU, MethodInfo, ParamDef, ParamKind, Params, Step, Teachers, feature_logit_terms, float, fparam};
use crate::models::Output;
use super::ParamValue;

pub static INFO: MethodInfo = MethodInfo {
    name: "fitnet",
    paper: "Romero et al. ICLR 2015, FitNets: Hints for Thin Deep Nets",
    teachers: Teachers::One,
    inputs: "hint-layer feature maps of student and teacher; a trainable regressor",
    params: &[
        fparam("beta", 100.0, 0.0, 1e9, "weight β of the hint loss"),
        ParamDef {
            name: "hint_layer",
            kind: ParamKind::Int { min: 0, max: 8 },
            default: ParamValue::Int(2),
            doc: "index of the stage map used as the hint (2 = output of stage 2)",
        },
        ParamDef {
            name: "regressor",
            kind: ParamKind::Bool,
            default: ParamValue::Bool(true),
            doc: "learn a ConvReg regressor (false: maps must already match)",
        },
        FEAT_CE,
        FEAT_KD,
        FEAT_TAU,
    ],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    let hint = match p.get("hint_layer") {
        Some(ParamValue::Int(i)) => *i as usize,
        _ => anyhow::bail!("parameter hint_layer missing"),
    };
    Ok(Box::new(FitNet { beta: float(p, "beta")?, hint, use_reg: super::boolean(p, "regressor")?, reg: None, p: p.clone() }))
}

/// ConvReg: the conv that maps the student's (C_s, H_s, W_s) onto the teacher's (C_t, H_t, W_t).
enum Conv {
    Down(nn::Conv2D),
    Up(nn::ConvTranspose2D),
    Same(nn::Conv2D),
}

struct Regressor {
    conv: Conv,
    bn: nn::BatchNorm,
}

impl Regressor {
    fn new(p: &nn::Path, s: &[i64], t: &[i64]) -> anyhow::Result<Regressor> {
        let (cs, hs, ws) = (s[1], s[2], s[3]);
        let (ct, ht, wt) = (t[1], t[2], t[3]);
        // RepDistiller's `ConvReg` (models/util.py) leaves its convs to PyTorch's default init:
        // weight and bias U(±1/√fan_in), fan_in = weight.size(1)·kh·kw (for a transposed conv
        // that is its output channels).
        use crate::models::init::pytorch_default as default;
        let conv = if hs == 2 * ht {
            let (ws_init, bs_init) = (default(cs * 9), default(cs * 9));
            Conv::Down(nn::conv2d(p / "conv", cs, ct, 3, nn::ConvConfig { stride: 2, padding: 1, ws_init, bs_init, ..Default::default() }))
        } else if 2 * hs == ht {
            let (ws_init, bs_init) = (default(ct * 16), default(ct * 16));
            Conv::Up(nn::conv_transpose2d(p / "conv", cs, ct, 4, nn::ConvTransposeConfig { stride: 2, padding: 1, ws_init, bs_init, ..Default::default() }))
        } else if hs >= ht {
            let (kh, kw) = (1 + hs - ht, 1 + ws - wt);
            let (ws_init, bs_init) = (default(cs * kh * kw), default(cs * kh * kw));
            Conv::Same(nn::conv(p / "conv", cs, ct, [kh, kw], nn::ConvConfigND { ws_init, bs_init, ..Default::default() }))
        } else {
            crate::input_bail!(
                "method `fitnet`: the student's hint map ({hs}x{ws}) is smaller than the teacher's ({ht}x{wt}) and not half of it, so no regressor maps one onto the other; choose another `fitnet.hint_layer` or teacher/student pair"
            );
        };
        let bn = crate::models::bn(p / "bn", ct);
        Ok(Regressor { conv, bn })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let y = match &self.conv {
            Conv::Down(c) | Conv::Same(c) => c.forward(x),
            Conv::Up(c) => c.forward(x),
        };
        y.apply_t(&self.bn, true).relu()
    }
}

struct FitNet {
    beta: f64,
    hint: usize,
    use_reg: bool,
    reg: Option<Regressor>,
    p: Params,
}

/// The hint loss on already-projected student features.
pub fn hint_loss(proj: &Tensor, ft: &Tensor) -> Tensor {
    (proj - ft.detach()).square().mean(proj.kind())
}

fn hint_map(o: &Output, i: usize) -> anyhow::Result<&Tensor> {
    o.feats.get(i).ok_or_else(|| {
        anyhow::Error::new(crate::error::InputError::new(format!(
            "method `fitnet`: `hint_layer = {i}` but the model has {} stage maps (0..{}); lower `fitnet.hint_layer` in the suite",
            o.feats.len(),
            o.feats.len().saturating_sub(1)
        )))
    })
}

impl Distiller for FitNet {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let fs = hint_map(step.student, self.hint)?;
        let proj = match &self.reg {
            Some(reg) => reg.forward(fs),
            None if !self.use_reg => fs.shallow_clone(),
            None => anyhow::bail!("fitnet: regressor not initialised"),
        };
        let ft = hint_map(t, self.hint)?;
        if proj.size() != ft.size() {
            crate::input_bail!(
                "method `fitnet`: the student's hint {:?} and the teacher's {:?} differ; set `fitnet.regressor = true` in the suite or pick matching models",
                proj.size(),
                ft.size()
            );
        }
        let mut terms = feature_logit_terms(step, &self.p)?;
        terms.push(("hint", hint_loss(&proj, ft) * self.beta));
        Ok(terms)
    }

    fn init_modules(&mut self, vs: &nn::Path, student: &Output, teachers: &[Output]) -> anyhow::Result<()> {
        if !self.use_reg {
            return Ok(());
        }
        let t = teachers.first().ok_or_else(|| anyhow::anyhow!("fitnet needs a teacher"))?;
        let (s, t) = (hint_map(student, self.hint)?.size(), hint_map(t, self.hint)?.size());
        self.reg = Some(Regressor::new(&(vs / "regressor"), &s, &t)?);
        Ok(())
    }
}
