//! Parameter initialisation, as PyTorch names it. Initialisation is part of the recipe: each
//! model file states its family's official rule (from the file it cites) and builds every conv,
//! linear and BatchNorm layer through the constructors here, which take that rule explicitly.
//! tch's own defaults differ from PyTorch's (`nn::linear`'s weight is Kaiming-uniform with the
//! ReLU gain, √6 wider than `nn.Linear`'s; `nn::conv2d` zeroes its bias), so model files never
//! call `nn::linear`/`nn::conv2d`/`nn::batch_norm2d` themselves (tests/init.rs enforces both).

use tch::nn;

/// How a conv or linear weight is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Weight {
    /// `nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`, which is also the
    /// official files' `normal_(0, sqrt(2 / n))` with n = kh·kw·out_channels: N(0, √(2/fan_out)),
    /// fan_out = out·kh·kw (a depthwise conv counts its own channels).
    KaimingNormalFanOut,
    /// What `nn.Conv2d`/`nn.Linear` do when no init loop touches them (`reset_parameters`:
    /// `kaiming_uniform_(a=√5)`): U(±1/√fan_in), fan_in = in/groups·kh·kw (Linear: in_features).
    PytorchDefault,
    /// `normal_(0, std)` (VGG's and MobileNetV2's classifiers: 0.01).
    Normal(f64),
}

/// How a conv or linear bias is set, or that the layer has none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bias {
    /// `bias=False`.
    None,
    /// `bias.data.zero_()`.
    Zeros,
    /// PyTorch's `reset_parameters`: U(±1/√fan_in), the same fan_in as the weight's default.
    PytorchDefault,
}

/// The rule of one conv or linear layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    pub weight: Weight,
    pub bias: Bias,
}

/// Kaiming-normal fan-out weight, no bias: the convs of the ResNets, WRN and MobileNetV2.
pub const KAIMING_NO_BIAS: Rule = Rule { weight: Weight::KaimingNormalFanOut, bias: Bias::None };
/// `nn.Linear` / biased `nn.Conv2d` left to PyTorch's defaults.
pub const PYTORCH_DEFAULT: Rule = Rule { weight: Weight::PytorchDefault, bias: Bias::PytorchDefault };
/// `nn.Conv2d(..., bias=False)` left to PyTorch's default (ShuffleNets, MobileNetV1).
pub const PYTORCH_DEFAULT_NO_BIAS: Rule = Rule { weight: Weight::PytorchDefault, bias: Bias::None };

/// Kernel, stride, padding and groups of a 2-D convolution.
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub k: i64,
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
}

impl Geom {
    /// A k×k convolution with one group.
    pub const fn new(k: i64, stride: i64, padding: i64) -> Geom {
        Geom { k, stride, padding, groups: 1 }
    }

    pub const fn groups(self, groups: i64) -> Geom {
        Geom { groups, ..self }
    }
}

/// U(±1/√fan_in): PyTorch's default for conv/linear weights (kaiming_uniform, a=√5) and biases.
pub fn pytorch_default(fan_in: i64) -> nn::Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -b, up: b }
}

/// N(0, √(2/fan_out)): `kaiming_normal_(mode="fan_out", nonlinearity="relu")`.
pub fn kaiming_normal_fan_out(fan_out: i64) -> nn::Init {
    normal((2.0 / fan_out as f64).sqrt())
}

/// N(0, std).
pub fn normal(std: f64) -> nn::Init {
    nn::Init::Randn { mean: 0.0, stdev: std }
}

pub fn zeros() -> nn::Init {
    nn::Init::Const(0.0)
}

pub fn ones() -> nn::Init {
    nn::Init::Const(1.0)
}

fn weight_init(w: Weight, fan_in: i64, fan_out: i64) -> nn::Init {
    match w {
        Weight::KaimingNormalFanOut => kaiming_normal_fan_out(fan_out),
        Weight::PytorchDefault => pytorch_default(fan_in),
        Weight::Normal(std) => normal(std),
    }
}

/// The bias's init, or `None` for a layer without one.
fn bias_init(b: Bias, fan_in: i64) -> Option<nn::Init> {
    match b {
        Bias::None => None,
        Bias::Zeros => Some(zeros()),
        Bias::PytorchDefault => Some(pytorch_default(fan_in)),
    }
}

/// `nn.Conv2d(cin, cout, g.k, g.stride, g.padding, groups=g.groups, bias=...)` initialised by `rule`.
pub fn conv(p: nn::Path, cin: i64, cout: i64, g: Geom, rule: Rule) -> nn::Conv2D {
    let fan_in = cin / g.groups * g.k * g.k;
    let fan_out = cout * g.k * g.k;
    let bias = bias_init(rule.bias, fan_in);
    let cfg = nn::ConvConfig {
        stride: g.stride,
        padding: g.padding,
        groups: g.groups,
        bias: bias.is_some(),
        ws_init: weight_init(rule.weight, fan_in, fan_out),
        bs_init: bias.unwrap_or_else(zeros),
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, g.k, cfg)
}

/// A bias-free conv with Kaiming-normal fan-out weights ([`KAIMING_NO_BIAS`]): the convs of the
/// ResNets and WRNs.
pub fn kaiming_conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    conv(p, cin, cout, Geom::new(k, stride, padding), KAIMING_NO_BIAS)
}

/// `nn.Linear(din, dout, bias=...)` initialised by `rule`.
pub fn linear(p: nn::Path, din: i64, dout: i64, rule: Rule) -> nn::Linear {
    let bias = bias_init(rule.bias, din);
    nn::linear(p, din, dout, nn::LinearConfig { ws_init: weight_init(rule.weight, din, dout), bs_init: bias, bias: bias.is_some() })
}

/// `nn.BatchNorm2d(c)`: weight 1, bias 0 (PyTorch's default and every official init loop's).
pub fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, nn::BatchNormConfig { ws_init: ones(), bs_init: zeros(), ..Default::default() })
}
