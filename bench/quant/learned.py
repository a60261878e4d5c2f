"""Learnable fake quantizers for quantization-aware training: LSQ step sizes, PACT clipping
levels and Q-SAM2's LSC clipping factors on EMA statistics.

Each is a `FakeQuantizer` subclass, so the existing machinery works unchanged: `observing`
records statistics during `calibrate_activations`, whose final `calibrate_from_observed` call
initializes the learned parameters; weight quantizers are initialized from the weight by
`init_weight`. After training, `freeze_quantizers` replaces each one by a plain
`FakeQuantizer` with the same forward (fixed scale, zero point 0), the prepare -> train ->
convert pattern: evaluation, packing and the `size` task see ordinary quantizers.

Conventions shared by the three (the papers quantize post-ReLU activations, SAM2's are
signed): a tensor whose calibration minimum is >= 0 (e.g. softmax probabilities) is unsigned,
levels [0, 2^b - 1]; otherwise signed around zero. The zero point is 0 (except PACT's two-sided
ablation, on RTN's asymmetric grid). Activation quantizers are per tensor, weight quantizers
per output channel or per tensor.

Two helpers without learned parameters keep RTN's quantizers fast and correct during QAT:
`RTNWeightQuantizer` (min/max range of the current weight at every step) and
`FixedQuantizer` (calibrated activation range), both asymmetric as the harness default.
The custom autograd functions use float arithmetic for their masks: on CPU, comparisons into
bool tensors and masked ops are several times slower than plain float passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace

import torch
from torch import nn

from bench import BenchError
from bench.quant.attention import QuantAttentionMixin
from bench.quant.fake import FakeQuantizer, QuantSpec, fake_quant, tensor_version
from bench.quant.modules import QuantLayer
from bench.quant.observers import lp_errors
from bench.quant.recompute import running_statistic


def _dot(a: torch.Tensor, b: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """sum(a * b) reduced to `shape` (one value of contiguous tensors: a BLAS dot)."""
    if math.prod(shape) == 1:
        if a.is_contiguous() and b.is_contiguous():
            return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(shape)
        return (a * b).sum().reshape(shape)
    return (a * b).sum(dim=[d for d in range(a.dim()) if shape[d] == 1], keepdim=True)


def _step(t: torch.Tensor) -> torch.Tensor:
    """In place: 1.0 where t >= 0, else 0.0 (sign arithmetic, no bool tensor)."""
    return t.sign_().add_(1).sign_()


class _LSQFunction(torch.autograd.Function):
    """v_hat = round(clip(x / s, q_min, q_max)) * s, s = p * factor, with LSQ's gradients: with
    v = x / s, d v_hat / d x = 1 inside the range, else 0; d v_hat / d s = round(v) - v inside,
    q_min or q_max outside (the range test is on v before rounding, as in the paper; a value
    exactly on a bound counts as inside, as torch.clamp's gradient does). The gradient of the
    learned `p` is that of s summed over the values it covers, times `factor` (d s / d p) and
    `g`. One function instead of autograd's chain: with `out` = 1 outside the range and
    e = round(v) - v inside, clamp(v) outside, grad_x = grad * (1 - out) and grad_s = <grad, e>.
    It keeps only x for backward (4 bytes a value, often shared with the caller) and makes
    `out` and `e` again there, with the same arithmetic as the forward pass."""

    @staticmethod
    def _parts(x: torch.Tensor, p: torch.Tensor, factor, qmin: int, qmax: int):
        s = p * factor
        v = x / s
        q = v.clamp(qmin, qmax)
        out = torch.sub(v, q).abs_().sign_()
        q.round_()
        return s, q, out, v

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: torch.Tensor, factor, qmin: int, qmax: int, g: float) -> torch.Tensor:
        s, q, _, _ = _LSQFunction._parts(x, p, factor, qmin, qmax)
        ctx.save_for_backward(x, p)
        ctx.args = factor, qmin, qmax, g
        return q.mul_(s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, p = ctx.saved_tensors
        factor, qmin, qmax, g = ctx.args
        _, q, out, v = _LSQFunction._parts(x, p, factor, qmin, qmax)
        e = q.sub_(v).addcmul_(v, out)
        gx = torch.addcmul(grad, grad, out, value=-1.0)
        gp = _dot(grad, e, p.shape) * (factor * g)
        return gx, gp, None, None, None, None


def lsq_quant(x: torch.Tensor, p: torch.Tensor, qmin: int, qmax: int, g: float = 1.0,
              factor: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Fake quantization with step size s = p * factor (`factor` a constant), zero point 0 and
    LSQ's straight-through gradients (that of p scaled by `g`), computed in float32 and
    returned in x's dtype."""
    if x.dtype == torch.float32:
        return _LSQFunction.apply(x, p, factor, qmin, qmax, g)
    return _LSQFunction.apply(x.float(), p.float(), factor, qmin, qmax, g).to(x.dtype)


class _PACTFunction(torch.autograd.Function):
    """y_q = round(clip(x, lo, alpha) / s) * s, s = alpha / n, lo = -alpha (signed) or 0, with
    PACT's gradients: d y_q / d x = 1 where lo < x < alpha, else 0 (straight-through rounding);
    d y_q / d alpha = 1 where x >= alpha, -1 where x <= -alpha (signed), else 0. Keeps only x
    for backward and makes the masks again there."""

    @staticmethod
    def _bounds(x: torch.Tensor, alpha: torch.Tensor, signed: bool):
        a = float(alpha.detach()) if x.device.type == "cpu" else alpha  # scalar bounds: the fast CPU kernel
        return a, (-a if signed else 0.0)

    @staticmethod
    def _masks(x: torch.Tensor, alpha: torch.Tensor, signed: bool):
        a, lo = _PACTFunction._bounds(x, alpha, signed)
        hi_mask = _step(x - a)  # x >= alpha
        lo_mask = _step(torch.neg(x).sub_(-lo if signed else 0.0))  # x <= lo
        inside = torch.sub(1.0, hi_mask).sub_(lo_mask)
        ind = hi_mask.sub_(lo_mask) if signed else hi_mask
        return inside, ind

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, n: int, signed: bool) -> torch.Tensor:
        a, lo = _PACTFunction._bounds(x, alpha, signed)
        ctx.save_for_backward(x, alpha)
        ctx.signed = signed
        s = alpha / n
        y = x.clamp(lo, a) if x.device.type == "cpu" else torch.clamp(x, torch.zeros_like(alpha) + lo, alpha)
        return y.div_(s).round_().mul_(s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, alpha = ctx.saved_tensors
        inside, ind = _PACTFunction._masks(x, alpha, ctx.signed)
        return grad * inside, torch.dot(grad.reshape(-1), ind.reshape(-1)), None, None


def _reduce_dims(x: torch.Tensor, spec: QuantSpec) -> list[int]:
    """The dimensions one step size covers: all (per tensor) or all but the channel axis."""
    if spec.granularity == "tensor":
        return list(range(x.dim()))
    return [d for d in range(x.dim()) if d != spec.ch_axis % x.dim()]


class LearnedQuantizer(FakeQuantizer):
    """Common part: extra calibration statistics (sum |x|, sum x, sum x^2, count; per tensor),
    signedness from the observed minimum, and `freeze`."""

    kind = "learned"

    def __init__(self, spec: QuantSpec) -> None:
        if spec.granularity == "group":
            raise BenchError(f"{type(self).__name__}: group granularity is not supported (tensor or channel)")
        super().__init__(spec)
        self.stats = torch.zeros(4, dtype=torch.float64)  # sum|x|, sum x, sum x^2, count

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        x = x.detach().double()
        self.stats = self.stats.to(x.device) + torch.stack(
            [x.abs().sum(), x.sum(), x.square().sum(), x.new_tensor(float(x.numel()))]
        )

    def observed(self) -> tuple[float, float, float]:
        """(mean |x|, std x, max |x|) over everything observed."""
        s_abs, s, s2, n = (float(v) for v in self.stats)
        if n == 0:
            raise RuntimeError("quantizer observed no data")
        mean = s / n
        std = math.sqrt(max(s2 / n - mean * mean, 0.0))
        amax = max(abs(float(self.min_val)), abs(float(self.max_val)))
        return s_abs / n, std, amax

    def _set_signed(self, signed: bool, narrow: bool = False) -> None:
        self.spec = replace(self.spec, symmetric=signed, narrow=narrow and signed)

    @property
    def q_p(self) -> int:
        """Q_P, the largest level: 2^(b-1) - 1 signed, 2^b - 1 unsigned."""
        return self.spec.qmax

    def effective_scale(self) -> torch.Tensor:
        """The step size the forward pass uses (detached)."""
        raise NotImplementedError

    @torch.no_grad()
    def post_step(self) -> None:
        """After an optimizer step: keep the learned step size / clipping level positive."""
        for p in self.parameters(recurse=False):
            p.clamp_(min=1e-6)

    def freeze(self) -> FakeQuantizer:
        """A plain quantizer with the same forward pass (fixed step size, zero point 0)."""
        q = FakeQuantizer(self.spec)
        scale = self.effective_scale().detach().float().clone()
        q.scale, q.zero_point = scale, torch.zeros_like(scale)
        q.enabled = self.enabled
        return q

    def _float_quant(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Uniform fake quantization with zero point 0, computed in float32 (bf16 autocast
        tensors too: rounding decisions in bf16 would be noisy), returned in x's dtype."""
        xf = x.float()
        y = fake_quant(xf, scale, torch.zeros((), device=x.device), self.spec.qmin, self.spec.qmax)
        return y.to(x.dtype)


class LSQQuantizer(LearnedQuantizer):
    """LSQ (Esser et al., ICLR 2020): a learned step size `s` (nn.Parameter).

    v_hat = round(clip(v / s, -Q_N, Q_P)) * s; the gradient of `s` is the paper's straight-
    through one, -v/s + round(v/s) where -Q_N < v/s < Q_P, else -Q_N or Q_P (`lsq_quant`),
    multiplied by g = 1 / sqrt(N * Q_P) with N the number of values one step size covers in
    the call: the weights of a layer (per tensor) or of an output channel (per channel), the
    elements of the activation tensor (features of the call's batch). Init
    s = 2 * mean(|v|) / sqrt(Q_P) (`init="lsq"`, the paper's: over the calibration data for
    activations, per channel for per-channel weights) or max|v| / Q_P (`init="minmax"`).
    Weights are signed with the full range [-2^(b-1), 2^(b-1) - 1] as in the paper.
    """

    kind = "lsq"

    def __init__(self, spec: QuantSpec, init: str = "lsq") -> None:
        super().__init__(spec)
        self.init = init

    def _set_scale(self, s: torch.Tensor) -> None:
        s = s.float().clamp_min(torch.finfo(torch.float32).eps)
        self.scale = nn.Parameter(s)
        self.zero_point = torch.zeros_like(s)

    def calibrate_from_observed(self) -> None:
        if self.min_val.numel() == 0:
            raise RuntimeError("quantizer observed no data")
        self._set_signed(bool(self.min_val.min() < 0))
        mean_abs, _, amax = self.observed()
        s = 2 * mean_abs / math.sqrt(self.q_p) if self.init == "lsq" else amax / self.q_p
        self._set_scale(torch.tensor(s, device=self.min_val.device))

    def init_weight(self, w: torch.Tensor) -> None:
        self._set_signed(True)
        w = w.detach().float()
        dims = _reduce_dims(w, self.spec)
        if self.init == "lsq":
            s = 2 * w.abs().mean(dim=dims, keepdim=True) / math.sqrt(self.q_p)
        else:
            s = w.abs().amax(dim=dims, keepdim=True) / self.q_p
        self._set_scale(s if self.spec.granularity == "channel" else s.reshape(()))

    def effective_scale(self) -> torch.Tensor:
        return self.scale

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._float_quant(x, self.scale.detach())
        n = (self.covers or x.numel()) // (self.scale.numel() or 1)
        return lsq_quant(x, self.scale, self.spec.qmin, self.spec.qmax, 1.0 / math.sqrt(n * self.q_p))


class PACTQuantizer(LearnedQuantizer):
    """PACT (Choi et al., 2018): a learned clipping level `alpha` (nn.Parameter, per tensor).

    y = clip(x, 0, alpha) for unsigned tensors, clip(x, -alpha, alpha) for signed ones (SAM2's
    activations are signed; the paper's form is for post-ReLU ones); y is quantized uniformly on
    [0, alpha] with 2^b - 1 steps, or on [-alpha, alpha] with the narrow symmetric levels
    [-(2^(b-1) - 1), 2^(b-1) - 1] (so the grid is symmetric and ends exactly at +-alpha).
    Gradients as in the paper: the rounding is straight-through (d y_q / d y = 1), so
    d y_q / d alpha = 1 where x >= alpha, -1 where x <= -alpha (signed), 0 elsewhere; the step
    size alpha / (levels) gets no gradient of its own. Init (`alpha_init`): None, alpha =
    max|x| over the calibration data (the RTN range); a number, that alpha; "mse", the alpha
    of least mean squared quantization error on the calibration data, among MSE_GRID
    candidates i / MSE_GRID * max|x| (the error estimated on MSE_SAMPLE values drawn
    uniformly, with a fixed seed, from each calibration call, so every call weighs the same).

    `two_sided=True` (an ablation switch, not the paper's form): a signed
    tensor gets a second learned level `beta` > 0 for its negative side, y = clip(x, -beta,
    alpha) quantized with the asymmetric levels [0, 2^b - 1] (step s = (alpha + beta) /
    (2^b - 1), zero point round(beta / s), as RTN's activations); d y_q / d alpha = 1 where
    x >= alpha, d y_q / d beta = -1 where x <= -beta, else 0. Init: alpha = max(x), beta =
    -min(x) over the calibration data (the RTN range), or both a numeric `alpha_init`
    ("mse" is for the one-level clip: two-sided signed tensors keep the RTN range). Unsigned
    tensors are unchanged.
    """

    kind = "pact"
    MSE_SAMPLE = 4096
    MSE_GRID = 100

    def __init__(self, spec: QuantSpec, alpha_init: float | str | None = None, two_sided: bool = False) -> None:
        super().__init__(spec)
        self.alpha_init = alpha_init
        self.two_sided = two_sided
        self.alpha = nn.Parameter(torch.empty(0))
        self.beta = nn.Parameter(torch.empty(0))  # two-sided signed tensors only
        self.sample: list[torch.Tensor] = []  # alpha_init "mse": values drawn from each calibration call

    @property
    def calibrated(self) -> bool:
        return self.alpha.numel() > 0

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        if self.alpha_init == "mse":
            flat = x.detach().reshape(-1)
            if flat.numel() > self.MSE_SAMPLE:
                g = torch.Generator(device=flat.device).manual_seed(len(self.sample))
                flat = flat[torch.randint(flat.numel(), (self.MSE_SAMPLE,), generator=g, device=flat.device)]
            self.sample.append(flat.float())

    def _mse_alpha(self, amax: float) -> float:
        """The candidate clipping level of least mean squared error on the sampled values,
        for the grid this quantizer uses (spec already set: symmetric narrow or unsigned)."""
        x = torch.cat(self.sample)[None]
        self.sample = []
        t = amax * torch.arange(1, self.MSE_GRID + 1, device=x.device, dtype=torch.float32)[:, None] / self.MSE_GRID
        lo = -t if self.spec.symmetric else torch.zeros_like(t)
        err = lp_errors(x, lo, t, self.spec, 2.0)[:, 0]
        return float(t[int(err.argmin())])

    def calibrate_from_observed(self) -> None:
        if self.min_val.numel() == 0:
            raise RuntimeError("quantizer observed no data")
        signed = bool(self.min_val.min() < 0)
        dev = self.min_val.device
        if self.two_sided and signed:
            self._set_signed(False)  # asymmetric levels on [-beta, alpha]
            hi, lo = float(self.max_val.max()), -float(self.min_val.min())
            self.sample = []
            if isinstance(self.alpha_init, (int, float)):
                hi = lo = self.alpha_init
            self.alpha = nn.Parameter(torch.tensor(max(hi, 1e-6), device=dev))
            self.beta = nn.Parameter(torch.tensor(max(lo, 1e-6), device=dev))
            return
        self._set_signed(signed, narrow=True)
        amax = max(self.observed()[2], 1e-8)
        if self.alpha_init == "mse":
            a = self._mse_alpha(amax)
        else:
            a = amax if self.alpha_init is None else self.alpha_init
        self.alpha = nn.Parameter(torch.tensor(float(a), device=dev))

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-sided: (step size, zero point) of the asymmetric grid on [-beta, alpha]."""
        s = (self.alpha.detach() + self.beta.detach()).abs() / self.q_p
        return s, torch.round(self.beta.detach().abs() / s)

    def effective_scale(self) -> torch.Tensor:
        if self.beta.numel():
            return self._grid()[0]
        return self.alpha.detach().abs() / self.q_p

    def freeze(self) -> FakeQuantizer:
        if not self.beta.numel():
            return super().freeze()
        q = FakeQuantizer(self.spec)
        q.scale, q.zero_point = (t.float().clone() for t in self._grid())
        q.enabled = self.enabled
        return q

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.beta.numel():
            s, z = self._grid()
            xf = x.float()
            if not torch.is_grad_enabled():
                return fake_quant(xf, s, z, self.spec.qmin, self.spec.qmax).to(x.dtype)
            a, b = self.alpha.float(), self.beta.float()
            with torch.no_grad():  # PACT's masks: x >= alpha, x <= -beta
                hi, lo = (xf >= a).float(), (xf <= -b).float()
                inside = 1.0 - hi - lo
            y = xf * inside + a * hi - b * lo  # clip(x, -beta, alpha) with the paper's gradients
            with torch.no_grad():
                err = fake_quant(y, s, z, self.spec.qmin, self.spec.qmax) - y
            return (y + err).to(x.dtype)  # straight-through rounding
        if not torch.is_grad_enabled():
            return self._float_quant(x, self.effective_scale())
        return _PACTFunction.apply(x.float(), self.alpha.float(), self.q_p, self.spec.symmetric).to(x.dtype)


class LSCQuantizer(LearnedQuantizer):
    """Q-SAM2's Learnable Statistical Clipping (our reading of arXiv 2506.09782; the paper's
    exact form is unpublished): clip threshold c = alpha * sigma_ema, quantize [-c, c] uniformly
    ([0, c] for unsigned tensors).

    sigma_ema is an exponential moving average of the tensor's standard deviation (population
    std; per tensor for activations, per output channel for weights), updated at every forward
    call in training mode with gradients on: sigma <- m * sigma + (1 - m) * std(x), starting
    from the std over the calibration data (activations) or of the initial weight. `alpha` is
    learned (per tensor / per channel) through the straight-through estimator: the step size
    s = c / Q_P enters `lsq_quant` (LSQ's gradient for s, no gradient scale), which reaches
    alpha as d s / d alpha = sigma / Q_P (sigma is a statistic: no gradient). Signed levels:
    the full range [-Q_P - 1, Q_P] (default) or narrow [-Q_P, Q_P] (`narrow=True`, the grid
    ends exactly at +-c). Init alpha = max|x| / sigma (the RTN range, so LSC starts where RTN is)
    or `alpha_init`.
    """

    kind = "lsc"
    elementwise = False  # sigma_ema moves with std(x) over the whole tensor in training

    def __init__(self, spec: QuantSpec, momentum: float = 0.9, narrow: bool = False,
                 alpha_init: float | None = None) -> None:
        super().__init__(spec)
        self.momentum = momentum
        self.narrow = narrow
        self.alpha_init = alpha_init
        self.alpha = nn.Parameter(torch.empty(0))
        self.register_buffer("sigma", torch.empty(0))

    @property
    def calibrated(self) -> bool:
        return self.alpha.numel() > 0

    def _init(self, sigma: torch.Tensor, amax: torch.Tensor, signed: bool) -> None:
        self._set_signed(signed, narrow=self.narrow)
        sigma = sigma.float().clamp_min(1e-8)
        alpha = torch.full_like(sigma, self.alpha_init) if self.alpha_init is not None else amax.float() / sigma
        self.sigma = sigma
        self.alpha = nn.Parameter(alpha.clamp_min(1e-4))

    def calibrate_from_observed(self) -> None:
        if self.min_val.numel() == 0:
            raise RuntimeError("quantizer observed no data")
        _, std, amax = self.observed()
        dev = self.min_val.device
        self._init(torch.tensor(std, device=dev), torch.tensor(amax, device=dev), bool(self.min_val.min() < 0))

    def init_weight(self, w: torch.Tensor) -> None:
        w = w.detach().float()
        dims = _reduce_dims(w, self.spec)
        std = w.std(dim=dims, keepdim=True, correction=0)
        amax = w.abs().amax(dim=dims, keepdim=True)
        if self.spec.granularity == "tensor":
            std, amax = std.reshape(()), amax.reshape(())
        self._init(std, amax, True)

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        """Population std(x) at this quantizer's granularity (shaped like `sigma`), from the
        sums of x and x^2 (one BLAS dot per tensor: torch.std is ~10x slower on CPU). A
        weight's is cached until the weight changes (a layer runs once per frame)."""
        key = (id(x), tensor_version(x))
        if self.spec.granularity == "channel" and getattr(self, "_stat_key", None) == key:
            return self._stat
        xd = x.detach().float()
        if self.spec.granularity == "tensor":
            flat, n = xd.reshape(-1), xd.numel()
            s1 = flat.sum()
            std = torch.addcmul(torch.dot(flat, flat), s1, s1, value=-1.0 / n).div_(n).clamp_min_(0).sqrt_()
        else:
            dims = _reduce_dims(xd, self.spec)
            mean = xd.mean(dim=dims, keepdim=True)
            std = xd.square().mean(dim=dims, keepdim=True).sub_(mean * mean).clamp_min_(0).sqrt_()
            self._stat, self._stat_key = std, key
        return std.reshape(self.sigma.shape)

    @property
    def whole_statistic(self) -> Callable[[Callable[[], Iterable[torch.Tensor]]], torch.Tensor] | None:
        """In training: the function that moves sigma once by the std of a tensor given as
        blocks (`blocks()` yields them: per tensor, the population std from float64 sums over
        all of them; per channel, one block, the whole weight) and returns the value of this
        call, for the caller to set as `given` while it quantizes the blocks one by one."""
        return self._whole_statistic if self.training else None

    def _whole_statistic(self, blocks: Callable[[], Iterable[torch.Tensor]]) -> torch.Tensor:
        def update() -> torch.Tensor:
            if self.spec.granularity != "tensor":
                (w,) = blocks()
                return self.sigma.lerp_(self.statistic(w), 1 - self.momentum).clone()
            n, s1, s2 = 0, 0.0, 0.0
            for b in blocks():
                flat = b.detach().reshape(-1).double()
                n, s1, s2 = n + flat.numel(), s1 + flat.sum(), s2 + torch.dot(flat, flat)
            std = ((s2 - s1 * s1 / n) / n).clamp_min(0).sqrt().float().reshape(self.sigma.shape)
            return self.sigma.lerp_(std, 1 - self.momentum).clone()

        return running_statistic(self, update)

    def effective_scale(self) -> torch.Tensor:
        return self.alpha.detach() * self.sigma / self.q_p

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._float_quant(x, self.effective_scale())
        sigma = self.sigma
        if self.training:  # sigma <- m * sigma + (1 - m) * std(x), in place (no graph holds it);
            # a recomputation in backward gets the value this call used (bench.quant.recompute)
            given = self.given
            update = (lambda: given) if given is not None else (
                lambda: self.sigma.lerp_(self.statistic(x), 1 - self.momentum).clone())
            sigma = running_statistic(self, update)
        return lsq_quant(x, self.alpha, self.spec.qmin, self.spec.qmax, factor=sigma / self.q_p)


class _FixedFunction(torch.autograd.Function):
    """`fake_quant` with a constant scale and zero point, with its straight-through gradient
    (1 where the rounded code is inside [q_min, q_max], else 0), in float passes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
        q = (x / s).round_().add_(z)
        c = q.clamp(qmin, qmax)
        ctx.save_for_backward(q != c)  # outside the range (one byte a value)
        return c.sub_(z).mul_(s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        return torch.addcmul(grad, grad, out.to(grad.dtype), value=-1.0), None, None, None, None


class _PlainRange(LearnedQuantizer):
    """A QAT quantizer with no learned parameter: a plain scale and zero point, kept on freeze."""

    def effective_scale(self) -> torch.Tensor:
        return self.scale

    def freeze(self) -> FakeQuantizer:
        q = FakeQuantizer(self.spec)
        q.scale, q.zero_point = self.scale.detach().clone(), self.zero_point.detach().clone()
        q.enabled = self.enabled
        return q


class FixedQuantizer(_PlainRange):
    """RTN activations during QAT (no learned parameter): min/max range from calibration, as
    `FakeQuantizer`, with the same straight-through gradient computed by `_FixedFunction`."""

    kind = "fixed"

    def calibrate_from_observed(self) -> None:
        FakeQuantizer.calibrate_from_observed(self)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or self.spec.granularity == "group":
            return FakeQuantizer.quantize(self, x.float()).to(x.dtype)  # rounding in float32, as in training
        xf = x.float()
        return _FixedFunction.apply(xf, self.scale, self.zero_point, self.spec.qmin, self.spec.qmax).to(x.dtype)


class RTNWeightQuantizer(_PlainRange):
    """Round-to-nearest weights during QAT (no learned parameter): the min/max range of the
    current weight (the plan's spec: per output channel, asymmetric by default) is recomputed
    at every forward pass, and the weight gradient is straight-through (the range covers every
    weight). Frozen: the plain quantizer with the min/max range of the final weight, which is
    what `calibrate_weights` gives."""

    kind = "rtn"

    def init_weight(self, w: torch.Tensor) -> None:
        self.set_range(*self._reduce(w))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """The weight's own range, then w + (Q(w) - w) with the difference a constant; the
        difference is cached until the weight changes (it is used once per frame of a clip)."""
        key = (id(w), tensor_version(w), w.dtype)
        if getattr(self, "_delta_key", None) != key:
            with torch.no_grad():
                self.init_weight(w)
                z = self.zero_point
                qw = (w / self.scale).round_().add_(z).clamp_(self.spec.qmin, self.spec.qmax).sub_(z).mul_(self.scale)
                self._delta = qw.sub_(w)
            self._delta_key = key
        if not torch.is_grad_enabled() or not w.requires_grad:
            return w.detach() + self._delta
        return w + self._delta


# -- swapping quantizers in a wrapped model ------------------------------------------------------
QuantizerFactory = Callable[[str, FakeQuantizer, str], FakeQuantizer]


def quantizer_slots(model: nn.Module):
    """(owner module, attribute, full name, kind) of every quantizer slot with a spec: the
    weight (`wq`, kind "weight") and input (`aq`) quantizers of quantized layers, and the
    q/k/v/probability quantizers of quantized attention (kind "act")."""
    for name, m in model.named_modules():
        if isinstance(m, QuantLayer):
            slots = (("wq", "weight"), ("aq", "act"))
        elif isinstance(m, QuantAttentionMixin):
            slots = tuple((s, "act") for s in QuantAttentionMixin.SLOTS)
        else:
            continue
        for attr, kind in slots:
            q = getattr(m, attr)
            if q.spec is not None:
                yield m, attr, f"{name}.{attr}", kind


def replace_quantizers(model: nn.Module, make: QuantizerFactory) -> int:
    """Replace every quantizer slot with a spec by `make(name, old, kind)`; weight
    quantizers that are learned get `init_weight(layer.weight)`. Returns how many."""
    n = 0
    for owner, attr, name, kind in list(quantizer_slots(model)):
        new = make(name, getattr(owner, attr), kind)
        new = new.to(owner.weight.device if isinstance(owner, QuantLayer) else next(model.parameters()).device)
        setattr(owner, attr, new)
        if kind == "weight" and isinstance(new, LearnedQuantizer):
            new.init_weight(owner.weight)
        n += 1
    return n


def learned_quantizers(model: nn.Module) -> dict[str, LearnedQuantizer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LearnedQuantizer)}


def freeze_quantizers(model: nn.Module) -> int:
    """Replace every learned quantizer by its plain equivalent (`LearnedQuantizer.freeze`)."""
    n = 0
    for owner, attr, _, _ in list(quantizer_slots(model)):
        q = getattr(owner, attr)
        if isinstance(q, LearnedQuantizer):
            if isinstance(q, RTNWeightQuantizer):
                q.init_weight(owner.weight)  # the range of the final weight
            setattr(owner, attr, q.freeze())
            n += 1
    return n
