"""DRAW, the Deep Recurrent Attentive Writer (Gregor, Danihelka, Graves, Rezende and Wierstra 2015), in the paper's notation.

A variational auto-encoder (Kingma and Welling 2014) that writes its image in T steps on
a canvas c_t, reading the input and writing the canvas through a differentiable grid of
Gaussian filters. With x an image of A columns (width) and B rows (height):

    x^_t = x - sigmoid(c_{t-1})                       the error image
    r_t = read(x, x^_t, h^dec_{t-1})                   gamma [F_Y x F_X^T, F_Y x^_t F_X^T]
    h^enc_t = RNN^enc(h^enc_{t-1}, [r_t, h^dec_{t-1}])
    z_t ~ Q(Z_t | h^enc_t) = N(mu_t, sigma_t^2)        mu_t = W(h^enc_t), sigma_t = exp(W(h^enc_t))
    h^dec_t = RNN^dec(h^dec_{t-1}, z_t)
    c_t = c_{t-1} + write(h^dec_t)                     (1 / gamma^) F^_Y^T w_t F^_X,  w_t = W(h^dec_t)

and the loss is the negative evidence lower bound L = L^x + L^z, with
L^x = -log D(x | c_T) (Bernoulli with means sigmoid(c_T)) and
L^z = sum_t KL(Q(Z_t | h^enc_t) || N(0, I)) = 1/2 sum_t (mu_t^2 + sigma_t^2 - log sigma_t^2) - T/2
(equations (2.1)-(2.11) of chapter 2).

The filterbank: for an N x N grid centred at (g_X, g_Y) with stride delta,
mu_X^i = g_X + (i - N/2 - 0.5) delta (i = 1..N), mu_Y^j likewise, and
F_X[i, a] = exp(-(a - mu_X^i)^2 / (2 sigma^2)) / Z_X (a = 1..A), each row normalised to sum 1;
F_Y[j, b] likewise (b = 1..B). Pixel coordinates a and b count from 1, as in the paper,
so that g~_X = 0 puts the grid at the centre (A + 1) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn



@dataclass(frozen=True)
class DRAWConfig:
    """The model's sizes. The defaults are the paper's binarised-MNIST configuration (Gregor et al. 2015, Table 3)."""

    A: int = 28  # image width (columns)
    B: int = 28  # image height (rows)
    T: int = 64  # glimpses: steps of reading and writing
    read_N: int = 2  # N of the read grid (N x N)
    write_N: int = 5  # N of the write grid
    enc_size: int = 256  # LSTM units of RNN^enc
    dec_size: int = 256  # LSTM units of RNN^dec
    z_size: int = 100  # dimensions of each z_t
    attention: bool = True  # False: read the whole image [x, x^], write the whole canvas

    def __post_init__(self):
        for name in ("A", "B", "T", "enc_size", "dec_size", "z_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"DRAWConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("read_N", "write_N"):
            if getattr(self, name) < 2:
                raise ValueError(f"DRAWConfig.{name} must be at least 2 (delta divides by N - 1), "
                                 f"got {getattr(self, name)}")

    def without_attention(self) -> DRAWConfig:
        """The same network reading and writing the whole image."""
        return replace(self, attention=False)


PAPER_CONFIG = DRAWConfig()  # T = 64, read 2 x 2, write 5 x 5, LSTMs of 256, z of 100: for a GPU
CPU_CONFIG = DRAWConfig(T=16)  # the same network, 16 steps: trains on one CPU core in about an hour
QUICK_CONFIG = DRAWConfig(T=8, enc_size=128, dec_size=128, z_size=20)  # the notebook's short run
# The write's starting intensity 1/gamma^ = e^4.5 = 90. Rows of F that each sum to 1 spread
# a written value thinly: with sigma = 1.7 pixels, a unit of w adds about 0.06 to the logit
# at a grid point, so with gamma^ = 1 the canvas can hardly leave its starting value. At
# 1/gamma^ = 90 a unit of w adds about 5 (book/measurements.md has the runs behind the choice).
WRITE_LOG_GAMMA_INIT = -4.5


# --------------------------------------------------------------------------- A. the filterbank


class Window(NamedTuple):
    """The attention parameters of one read or write, each of shape (batch,): equation (2.9)."""

    g_X: torch.Tensor
    g_Y: torch.Tensor
    delta: torch.Tensor
    sigma2: torch.Tensor
    gamma: torch.Tensor


WINDOW_FIELDS = Window._fields


def grid_centres(g: torch.Tensor, delta: torch.Tensor, N: int) -> torch.Tensor:
    """mu^i = g + (i - N/2 - 0.5) delta for i = 1..N (equation (2.7)); ``g``, ``delta`` (batch,) -> (batch, N)."""
    if N < 2:
        raise ValueError(f"the grid needs N >= 2, got N = {N}")
    if g.dim() != 1 or delta.shape != g.shape:
        raise ValueError(f"expected g and delta of shape (batch,), got {tuple(g.shape)} and {tuple(delta.shape)}")
    i = torch.arange(1, N + 1, dtype=g.dtype, device=g.device)
    return g[:, None] + (i - N / 2 - 0.5) * delta[:, None]


def filterbank(g_X: torch.Tensor, g_Y: torch.Tensor, delta: torch.Tensor, sigma2: torch.Tensor, N: int, A: int,
               B: int, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """F_X (batch, N, A) and F_Y (batch, N, B): Gaussian rows, each normalised to sum 1 (equation (2.8)).

    All parameters have shape (batch,), in pixel units with pixels counted from 1; ``delta``
    and ``sigma2`` must be positive, all of them finite.
    ``eps`` keeps a row that lies entirely off the image (all its weights underflow to 0)
    at zero instead of dividing by zero.
    """
    for name, value in (("g_X", g_X), ("g_Y", g_Y), ("delta", delta), ("sigma2", sigma2)):
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.shape != g_X.shape:
            raise ValueError(f"expected {name} as a tensor of shape (batch,) like g_X {tuple(g_X.shape)}, got "
                             f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} must be finite, got {value.tolist()}")
    for name, value in (("delta", delta), ("sigma2", sigma2)):
        if not (value > 0).all():
            raise ValueError(f"{name} must be positive, got {value.tolist()}")
    if N < 2:
        raise ValueError(f"the filterbank needs N >= 2, got N = {N}")
    _check_image_size(A, B)
    return _filterbank(g_X, g_Y, delta, sigma2, N, A, B, eps)


def _check_image_size(A: int, B: int) -> None:
    for name, value in (("A", A), ("B", B)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} (image {'width' if name == 'A' else 'height'} in pixels) must be a positive "
                             f"int, got {value!r}")


def _filterbank(g_X: torch.Tensor, g_Y: torch.Tensor, delta: torch.Tensor, sigma2: torch.Tensor, N: int, A: int,
                B: int, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`filterbank` without the checks (the model's windows are valid by construction: exp(...) > 0)."""
    mu_X, mu_Y = grid_centres(g_X, delta, N), grid_centres(g_Y, delta, N)  # (batch, N)
    a = torch.arange(1, A + 1, dtype=g_X.dtype, device=g_X.device)
    b = torch.arange(1, B + 1, dtype=g_X.dtype, device=g_X.device)
    two_sigma2 = 2 * sigma2[:, None, None]
    F_X = torch.exp(-(a - mu_X[..., None]) ** 2 / two_sigma2)  # (batch, N, A)
    F_Y = torch.exp(-(b - mu_Y[..., None]) ** 2 / two_sigma2)  # (batch, N, B)
    return F_X / (F_X.sum(-1, keepdim=True) + eps), F_Y / (F_Y.sum(-1, keepdim=True) + eps)


def attention_window(params: torch.Tensor, N: int, A: int, B: int) -> Window:
    """Equation (2.9): (g~_X, g~_Y, log sigma^2, log delta~, log gamma) = W(h^dec), ``params`` (batch, 5), to a Window.

    g_X = (A + 1)/2 (g~_X + 1), g_Y = (B + 1)/2 (g~_Y + 1), delta = (max(A, B) - 1)/(N - 1) delta~.
    """
    if params.dim() != 2 or params.shape[1] != 5:
        raise ValueError(f"expected attention parameters of shape (batch, 5), got {tuple(params.shape)}")
    if N < 2:
        raise ValueError(f"the attention window needs N >= 2, got N = {N}")
    _check_image_size(A, B)
    g_X_tilde, g_Y_tilde, log_sigma2, log_delta_tilde, log_gamma = params.unbind(-1)
    return Window(
        g_X=(A + 1) / 2 * (g_X_tilde + 1),
        g_Y=(B + 1) / 2 * (g_Y_tilde + 1),
        delta=(max(A, B) - 1) / (N - 1) * torch.exp(log_delta_tilde),
        sigma2=torch.exp(log_sigma2),
        gamma=torch.exp(log_gamma),
    )


def _check_image(x: torch.Tensor, name: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected {name} of shape (batch, B, A) (rows, then columns), got {tuple(x.shape)}")


def read(x: torch.Tensor, x_hat: torch.Tensor, F_X: torch.Tensor, F_Y: torch.Tensor,
         gamma: torch.Tensor) -> torch.Tensor:
    """read with attention, gamma [F_Y x F_X^T, F_Y x^ F_X^T] (equation (2.10)): two N x N patches per image.

    ``x``, ``x_hat`` (batch, B, A); ``F_X`` (batch, N, A); ``F_Y`` (batch, N, B); ``gamma``
    (batch,), positive. Returns (batch, 2, N, N), by batched matrix products.
    """
    _check_image(x, "x")
    if x_hat.shape != x.shape:
        raise ValueError(f"expected x_hat of the shape of x {tuple(x.shape)}, got {tuple(x_hat.shape)}")
    batch, B, A = x.shape
    N = F_X.shape[1] if F_X.dim() == 3 else -1
    if F_X.shape != (batch, N, A) or F_Y.shape != (batch, N, B):
        raise ValueError(f"expected F_X of shape ({batch}, N, {A}) and F_Y ({batch}, N, {B}) for images (B, A) = "
                         f"({B}, {A}), got {tuple(F_X.shape)} and {tuple(F_Y.shape)}")
    _check_gamma(gamma, batch)
    return _read(x, x_hat, F_X, F_Y, gamma)


def _check_gamma(gamma: torch.Tensor, batch: int) -> None:
    if not isinstance(gamma, torch.Tensor) or gamma.shape != (batch,):
        raise ValueError(f"expected gamma as a tensor of shape ({batch},), got "
                         f"{tuple(gamma.shape) if isinstance(gamma, torch.Tensor) else type(gamma).__name__}")
    if not (torch.isfinite(gamma) & (gamma > 0)).all():
        raise ValueError(f"gamma must be positive and finite, got {gamma.tolist()}")


def _read(x: torch.Tensor, x_hat: torch.Tensor, F_X: torch.Tensor, F_Y: torch.Tensor,
          gamma: torch.Tensor) -> torch.Tensor:
    """:func:`read` without the checks."""
    both = torch.stack([x, x_hat], 1)  # (batch, 2, B, A)
    patches = F_Y[:, None] @ both @ F_X[:, None].transpose(-1, -2)  # (batch, 2, N, N)
    return gamma[:, None, None, None] * patches


def write(w: torch.Tensor, F_X: torch.Tensor, F_Y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """write with attention, (1 / gamma^) F^_Y^T w_t F^_X (equation (2.11)): an N x N patch onto a (B, A) canvas.

    ``w`` (batch, N, N); ``F_X`` (batch, N, A); ``F_Y`` (batch, N, B); ``gamma`` (batch,).
    Returns (batch, B, A).
    """
    if w.dim() != 3 or w.shape[1] != w.shape[2]:
        raise ValueError(f"expected a write patch w of shape (batch, N, N), got {tuple(w.shape)}")
    batch, N = w.shape[:2]
    if F_X.dim() != 3 or F_Y.dim() != 3 or F_X.shape[:2] != (batch, N) or F_Y.shape[:2] != (batch, N):
        raise ValueError(f"expected F_X (batch, {N}, A) and F_Y (batch, {N}, B) for a {N} x {N} patch, got "
                         f"{tuple(F_X.shape)} and {tuple(F_Y.shape)}")
    _check_gamma(gamma, batch)
    return _write(w, F_X, F_Y, gamma)


def _write(w: torch.Tensor, F_X: torch.Tensor, F_Y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """:func:`write` without the checks."""
    return F_Y.transpose(-1, -2) @ w @ F_X / gamma[:, None, None]


def read_no_attention(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """read without attention: [x, x^], the whole image and the whole error image, (batch, 2, B, A)."""
    _check_image(x, "x")
    if x_hat.shape != x.shape:
        raise ValueError(f"expected x_hat of the shape of x {tuple(x.shape)}, got {tuple(x_hat.shape)}")
    return torch.stack([x, x_hat], 1)


def read_loop(x: torch.Tensor, x_hat: torch.Tensor, window: Window, N: int) -> torch.Tensor:
    """The same as :func:`read` after :func:`filterbank`, one image at a time with Python loops: for tests and benchmarks."""
    _check_image(x, "x")
    if x_hat.shape != x.shape:
        raise ValueError(f"expected x_hat of the shape of x {tuple(x.shape)}, got {tuple(x_hat.shape)}")
    if N < 2:
        raise ValueError(f"the filterbank needs N >= 2, got N = {N}")
    batch, B, A = x.shape
    out = x.new_zeros(batch, 2, N, N)
    for n in range(batch):
        a = torch.arange(1, A + 1, dtype=x.dtype)
        b = torch.arange(1, B + 1, dtype=x.dtype)
        g_X, g_Y, delta, sigma2, gamma = (float(v[n]) for v in window)
        rows_X, rows_Y = [], []
        for i in range(1, N + 1):
            f = torch.exp(-(a - (g_X + (i - N / 2 - 0.5) * delta)) ** 2 / (2 * sigma2))
            rows_X.append(f / (f.sum() + 1e-8))
            f = torch.exp(-(b - (g_Y + (i - N / 2 - 0.5) * delta)) ** 2 / (2 * sigma2))
            rows_Y.append(f / (f.sum() + 1e-8))
        F_X, F_Y = torch.stack(rows_X), torch.stack(rows_Y)
        out[n, 0] = gamma * F_Y @ x[n] @ F_X.T
        out[n, 1] = gamma * F_Y @ x_hat[n] @ F_X.T
    return out


# --------------------------------------------------------------------------- B. the model


class DRAW(nn.Module):
    """DRAW: read, RNN^enc, Q(Z_t | h^enc_t), RNN^dec, write, for T steps on a canvas c_t (equation (2.4)).

    Images are (batch, 1, B, A) tensors of 0s and 1s (or values in [0, 1]). The states
    h^enc_0 and h^dec_0 start at zero; the canvas c_0 is a learned bias image (zero before
    training), so that the background can be set once instead of being written by every
    sample's first steps.
    """

    def __init__(self, config: DRAWConfig = CPU_CONFIG):
        super().__init__()
        if not isinstance(config, DRAWConfig):
            raise TypeError(f"config must be a DRAWConfig, got {type(config).__name__}")
        self.config = c = config
        read_size = 2 * c.read_N ** 2 if c.attention else 2 * c.A * c.B
        write_size = c.write_N ** 2 if c.attention else c.A * c.B
        self.encoder = nn.LSTMCell(read_size + c.dec_size, c.enc_size)  # RNN^enc
        self.Q = nn.Linear(c.enc_size, 2 * c.z_size)  # (mu_t, log sigma_t) = W(h^enc_t)
        self.decoder = nn.LSTMCell(c.z_size, c.dec_size)  # RNN^dec
        self.write_patch = nn.Linear(c.dec_size, write_size)  # w_t = W(h^dec_t)
        self.c_0 = nn.Parameter(torch.zeros(c.B, c.A))  # the initial canvas, a learned bias image
        if c.attention:
            self.read_attention = nn.Linear(c.dec_size, 5)  # (g~_X, g~_Y, log sigma^2, log delta~, log gamma)
            self.write_attention = nn.Linear(c.dec_size, 5)  # the same for the write window
            self._centre_window(self.read_attention, c.read_N)
            self._centre_window(self.write_attention, c.write_N, log_gamma=WRITE_LOG_GAMMA_INIT)

    def _centre_window(self, layer: nn.Linear, N: int, log_gamma: float = 0.0) -> None:
        """Start a window over the middle of the image: delta~ = 1/2 (the grid spans half the image), sigma = delta/2.

        With a zero bias, delta~ = 1 puts a 2 x 2 read grid on the image's border, which is
        empty on MNIST: the encoder then sees nothing, and training stalls at the
        pixel-marginal solution (about 208 nats, L^z near 0) for hundreds of steps.
        ``log_gamma`` sets the starting intensity (the write divides by gamma^).
        """
        c = self.config
        delta = (max(c.A, c.B) - 1) / (N - 1) * 0.5
        with torch.no_grad():
            layer.bias.copy_(torch.tensor([0.0, 0.0, 2 * math.log(delta / 2), math.log(0.5), log_gamma]))

    # the two halves of one step -------------------------------------------------------------------------

    def read_step(self, x: torch.Tensor, x_hat: torch.Tensor, h_dec: torch.Tensor) -> tuple[torch.Tensor, Window | None]:
        """r_t = read(x, x^_t, h^dec_{t-1}), flattened to (batch, read size), and its window (None without attention)."""
        c = self.config
        if not c.attention:
            return read_no_attention(x, x_hat).flatten(1), None
        window = attention_window(self.read_attention(h_dec), c.read_N, c.A, c.B)
        F_X, F_Y = _filterbank(window.g_X, window.g_Y, window.delta, window.sigma2, c.read_N, c.A, c.B)
        return _read(x, x_hat, F_X, F_Y, window.gamma).flatten(1), window

    def write_step(self, h_dec: torch.Tensor) -> tuple[torch.Tensor, Window | None]:
        """write(h^dec_t), (batch, B, A), and its window (None without attention)."""
        c = self.config
        w = self.write_patch(h_dec)
        if not c.attention:
            return w.view(-1, c.B, c.A), None
        window = attention_window(self.write_attention(h_dec), c.write_N, c.A, c.B)
        F_X, F_Y = _filterbank(window.g_X, window.g_Y, window.delta, window.sigma2, c.write_N, c.A, c.B)
        return _write(w.view(-1, c.write_N, c.write_N), F_X, F_Y, window.gamma), window

    def _zeros(self, batch: int, size: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = like.new_zeros(batch, size)
        return zeros, zeros.clone()

    def check_images(self, images: torch.Tensor) -> None:
        c = self.config
        if images.dim() != 4 or tuple(images.shape[1:]) != (1, c.B, c.A):
            raise ValueError(f"expected images of shape (batch, 1, B, A) = (batch, 1, {c.B}, {c.A}), "
                             f"got {tuple(images.shape)}")

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                record: bool = False) -> dict[str, torch.Tensor]:
        """Encode and reconstruct ``images`` (batch, 1, B, A) in T steps, sampling z_t by reparameterisation.

        z_t = mu_t + sigma_t eps_t with eps_t ~ N(0, I) drawn with ``generator`` (on its own
        device, then moved; default: the global generator). Returns ``logits`` c_T
        (batch, 1, B, A), and ``mu``, ``log_sigma``, ``z`` (T, batch, z_size). With
        ``record``: also ``canvases`` sigmoid(c_t) (T, batch, B, A) and, with attention,
        ``read_windows`` and ``write_windows`` (T, batch, 5) in the order of :data:`WINDOW_FIELDS`.
        """
        self.check_images(images)
        c = self.config
        batch = images.shape[0]
        x = images[:, 0].to(self.Q.weight.dtype)
        where = generator.device if generator is not None else x.device
        eps = torch.randn(c.T, batch, c.z_size, generator=generator, device=where).to(x.device, x.dtype)
        canvas = self.c_0.expand(batch, c.B, c.A)
        h_enc, s_enc = self._zeros(batch, c.enc_size, x)
        h_dec, s_dec = self._zeros(batch, c.dec_size, x)
        mus, log_sigmas, zs, canvases, read_windows, write_windows = [], [], [], [], [], []
        for t in range(c.T):
            x_hat = x - torch.sigmoid(canvas)
            r, read_window = self.read_step(x, x_hat, h_dec)
            h_enc, s_enc = self.encoder(torch.cat([r, h_dec], 1), (h_enc, s_enc))
            mu, log_sigma = self.Q(h_enc).chunk(2, dim=-1)
            z = mu + torch.exp(log_sigma) * eps[t]  # reparameterised sample of Q(Z_t | h^enc_t)
            h_dec, s_dec = self.decoder(z, (h_dec, s_dec))
            painted, write_window = self.write_step(h_dec)
            canvas = canvas + painted
            mus.append(mu)
            log_sigmas.append(log_sigma)
            zs.append(z)
            if record:
                canvases.append(torch.sigmoid(canvas).detach())
                if c.attention:
                    read_windows.append(torch.stack(read_window, -1).detach())
                    write_windows.append(torch.stack(write_window, -1).detach())
        out = {"logits": canvas[:, None], "mu": torch.stack(mus), "log_sigma": torch.stack(log_sigmas),
               "z": torch.stack(zs)}
        if record:
            out["canvases"] = torch.stack(canvases)
            if c.attention:
                out["read_windows"], out["write_windows"] = torch.stack(read_windows), torch.stack(write_windows)
        return out

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Draw ``n`` images from the prior: z_t ~ N(0, I), h^dec_t = RNN^dec(h^dec_{t-1}, z_t), c_t = c_{t-1} + write.

        Returns ``canvases`` sigmoid(c_t) for every step (T, n, B, A) (the last one is the
        Bernoulli mean of the image), and with attention ``write_windows`` (T, n, 5).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"generate needs n >= 1 (an int), got {n!r}")
        c = self.config
        like = self.Q.weight
        where = generator.device if generator is not None else like.device
        z = torch.randn(c.T, n, c.z_size, generator=generator, device=where).to(like.device, like.dtype)
        canvas = self.c_0.expand(n, c.B, c.A)
        h_dec, s_dec = self._zeros(n, c.dec_size, like)
        canvases, windows = [], []
        for t in range(c.T):
            h_dec, s_dec = self.decoder(z[t], (h_dec, s_dec))
            painted, window = self.write_step(h_dec)
            canvas = canvas + painted
            canvases.append(torch.sigmoid(canvas))
            if window is not None:
                windows.append(torch.stack(window, -1))
        out = {"canvases": torch.stack(canvases)}
        if windows:
            out["write_windows"] = torch.stack(windows)
        return out


# --------------------------------------------------------------------------- C. the loss: the evidence lower bound


def gaussian_kl(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - log sigma^2 - 1), elementwise (equation (2.2))."""
    if mu.shape != log_sigma.shape:
        raise ValueError(f"expected mu and log_sigma of one shape, got {tuple(mu.shape)} and {tuple(log_sigma.shape)}")
    return 0.5 * (mu ** 2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1)


def negative_elbo(out: Mapping[str, torch.Tensor], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L^x, L^z) per image, in nats (equation (2.5)), each of shape (batch,).

    L^x = -log D(x | c_T), the Bernoulli negative log-likelihood of x under sigmoid(c_T),
    summed over pixels; L^z = 1/2 sum_t (mu_t^2 + sigma_t^2 - log sigma_t^2) - T/2,
    summed over the latent dimensions.
    """
    logits = out["logits"]
    if images.shape != logits.shape:
        raise ValueError(f"expected images of shape {tuple(logits.shape)} like the canvas, got {tuple(images.shape)}")
    L_x = F.binary_cross_entropy_with_logits(logits, images.to(logits.dtype), reduction="none").flatten(1).sum(1)
    L_z = gaussian_kl(out["mu"], out["log_sigma"]).sum(dim=(0, 2))
    return L_x, L_z


def draw_loss(model: DRAW, batch: Mapping[str, torch.Tensor]):
    """L = L^x + L^z averaged over the batch, in nats per image; the two terms as metrics."""
    images = batch["images"]
    L_x, L_z = negative_elbo(model(images), images)
    return (L_x + L_z).mean(), {"L_x": L_x.mean().detach(), "L_z": L_z.mean().detach()}


@torch.no_grad()
def importance_sampled_log_likelihood(model: DRAW, images: torch.Tensor, K: int,
                                      generator: torch.Generator | None = None) -> torch.Tensor:
    """log p(x) ~= log (1/K) sum_k p(x | z^k) p(z^k) / Q(z^k | x) with z^k ~ Q (equation (2.6)); (batch,).

    Its expectation lies above the bound -L for every K and tends to log p(x) as K grows.
    """
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K (importance samples) must be an int >= 1, got {K!r}")
    batch = images.shape[0]
    repeated = images.repeat_interleave(K, 0)
    out = model(repeated, generator=generator)
    log_px_given_z = -F.binary_cross_entropy_with_logits(out["logits"], repeated, reduction="none").flatten(1).sum(1)
    mu, log_sigma, z = out["mu"], out["log_sigma"], out["z"]
    eps = (z - mu) / torch.exp(log_sigma)
    log_p_over_q = (-0.5 * z ** 2 + 0.5 * eps ** 2 + log_sigma).sum(dim=(0, 2))  # log N(z; 0, I) - log N(z; mu, sigma^2)
    log_w = (log_px_given_z + log_p_over_q).view(batch, K)
    return torch.logsumexp(log_w, 1) - math.log(K)


# --------------------------------------------------------------------------- D. the window as a box and a grid, for figures


def window_box(window: torch.Tensor | Window, N: int) -> torch.Tensor:
    """The square an N x N grid covers, as pixel-edge boxes (x0, y0, x1, y1) for ``viz.draw_box``.

    ``window`` is a Window or a (..., 5) tensor in the order of :data:`WINDOW_FIELDS`. The box
    reaches half a stride beyond the outer grid centres: centre (g_X, g_Y), side N delta.
    Pixel a (counted from 1) is centred at edge coordinate a - 0.5.
    """
    if N < 1:
        raise ValueError(f"N must be positive, got {N}")
    if isinstance(window, torch.Tensor) and (window.dim() == 0 or window.shape[-1] != 5):
        raise ValueError(f"expected a window of shape (..., 5) (g_X, g_Y, delta, sigma2, gamma), got "
                         f"{tuple(window.shape)}")
    g_X, g_Y, delta = (window[..., k] for k in range(3)) if isinstance(window, torch.Tensor) else window[:3]
    half = N * delta / 2
    return torch.stack([g_X - 0.5 - half, g_Y - 0.5 - half, g_X - 0.5 + half, g_Y - 0.5 + half], -1)


def grid_points(window: torch.Tensor | Window, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid centres (mu_X^i, mu_Y^j) of one window, as imshow coordinates (pixels counted from 0): (N,), (N,)."""
    if not isinstance(window, Window) and torch.as_tensor(window).shape != (5,):
        raise ValueError(f"expected one window of shape (5,) (g_X, g_Y, delta, sigma2, gamma), got "
                         f"{tuple(torch.as_tensor(window).shape)}")
    values = window if isinstance(window, Window) else Window(*(torch.as_tensor(window)[..., k].reshape(1)
                                                               for k in range(5)))
    g_X, g_Y, delta = (v.reshape(1) for v in values[:3])
    return grid_centres(g_X, delta, N)[0] - 1, grid_centres(g_Y, delta, N)[0] - 1
