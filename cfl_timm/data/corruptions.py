"""The 15 CIFAR-10-C corruptions at 5 severities, with CIFAR-10-C's published parameters, in numpy / scipy / Pillow.

D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
ICLR 2019, https://arxiv.org/abs/1903.12261. The parameters of :data:`CIFAR10C_PARAMS` are those of the paper's
released CIFAR-10-C generation script (``make_cifar_c.py``), read as facts; every function here is written for this
project without ImageMagick, OpenCV or scikit-image. What differs from that script, and why:

- ``motion_blur`` (and the streaks of ``snow``) used ImageMagick's ``MotionBlurImage`` through Wand. Here its kernel
  is applied directly, as ImageMagick defines it: ``2 * ceil(radius) + 1`` taps i = 0, 1, ... at offsets
  (round(i cos a), round(i sin a)) along the drawn angle a, weighted exp(-i^2 / (2 sigma^2)) and normalised, edge
  pixels repeated outside the image; ImageMagick's quantum arithmetic is not reproduced bit for bit.
- ``frost`` blended crops of six frost photographs that the original code ships and this project does not. Here the
  frost layer is **synthesised** (a plasma-fractal haze plus motion-blurred ice streaks, tinted pale blue-white) and
  blended with CIFAR-10-C's weights; a set generated here says so (:data:`SYNTHETIC_CORRUPTIONS`).
- ``glass_blur``: the published script's pixel "swap" assigns two numpy views in one statement, which copies the
  neighbour into the pixel instead of swapping them; that copy is what the published files contain, and is done
  here.
- ``brightness`` adds c to V of HSV and converts back; since every RGB channel is proportional to V, that is
  RGB * min(V + c, 1) / V (and grey c for black pixels), computed directly.

Outputs are truncated to uint8 as the published script does (``np.uint8`` of a float in [0, 255]). Parameters are
in pixels for 32 x 32 images (CIFAR); on larger images the same numbers give milder corruptions. The
``imagecorruptions`` package and ImageNet-C use stronger parameters (tuned for 224 px): see ``docs/shift.md``.
Every random draw comes from the ``numpy.random.Generator`` passed in, so a corruption is deterministic per seed.
"""
import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = ['CIFAR10C_PARAMS', 'CORRUPTIONS', 'SEVERITIES', 'SYNTHETIC_CORRUPTIONS', 'corrupt', 'corruption_rng']

SEVERITIES = (1, 2, 3, 4, 5)

# Per corruption, the parameter of severity 1..5, as in CIFAR-10-C's generation script.
CIFAR10C_PARAMS: dict[str, tuple] = {
    'gaussian_noise': (0.04, 0.06, 0.08, 0.09, 0.10),  # std of additive noise on [0, 1]
    'shot_noise': (500, 250, 100, 75, 50),  # Poisson rate: x -> Poisson(x c) / c
    'impulse_noise': (0.01, 0.02, 0.03, 0.05, 0.07),  # salt-and-pepper fraction
    'defocus_blur': ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # disk radius, anti-alias sigma
    'glass_blur': ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # sigma, max delta, iters
    'motion_blur': ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # radius, sigma
    'zoom_blur': (1.06, 1.11, 1.16, 1.21, 1.26),  # zoom factors np.arange(1, c, 0.01)
    'snow': ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    # loc, scale, zoom, threshold, streak radius, streak sigma, image weight
    'frost': ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # image weight, frost weight
    'fog': ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # fog strength, fractal wibble decay
    'brightness': (0.05, 0.1, 0.15, 0.2, 0.3),  # added to V of HSV
    'contrast': (0.75, 0.5, 0.4, 0.3, 0.15),  # deviation from the channel means scaled by c
    'elastic_transform': ((0, 0, 0.08 * 32), (0.05 * 32, 0.2 * 32, 0.07 * 32), (0.08 * 32, 0.06 * 32, 0.06 * 32),
                          (0.1 * 32, 0.04 * 32, 0.05 * 32), (0.1 * 32, 0.03 * 32, 0.03 * 32)),
    # displacement alpha, its smoothing sigma, affine jitter (pixels)
    'pixelate': (0.95, 0.9, 0.85, 0.75, 0.65),  # box-downsampling factor
    'jpeg_compression': (80, 65, 58, 50, 40),  # JPEG quality
}
CORRUPTIONS = tuple(CIFAR10C_PARAMS)  # the 15 benchmark corruptions, in the paper's order
SYNTHETIC_CORRUPTIONS = {'frost': 'frost layer synthesised (the six frost photographs of the original code are not '
                                  'shipped); blend weights as in CIFAR-10-C'}


def corruption_rng(seed: int, corruption: str, severity: int, index: int) -> np.random.Generator:
    """The generator of one (image, corruption, severity): independent of the order images are processed in."""
    return np.random.default_rng([seed, CORRUPTIONS.index(corruption), severity, index])


# ------------------------------------------------------------------------------------------------------ helpers

def _ndimage():
    try:
        import scipy.ndimage
    except ImportError as error:
        raise ImportError('generating corruptions needs scipy: pip install scipy (or pip install '
                          '"cfl-timm[shift]").') from error
    return scipy.ndimage


def _gaussian(x: np.ndarray, sigma: float, mode: str = 'nearest', truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur over the two image axes only (channels kept apart)."""
    sigmas = (sigma, sigma) + (0,) * (x.ndim - 2)
    return _ndimage().gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2
    taps = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return taps / taps.sum()


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """An aliased disk of ``radius`` (normalised), smoothed by a small Gaussian to anti-alias it."""
    half, size = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = np.arange(-half, half + 1)
    disk = (grid[:, None] ** 2 + grid[None, :] ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = _gaussian_taps(size, alias_blur)
    ndimage = _ndimage()
    return ndimage.correlate1d(ndimage.correlate1d(disk, taps, axis=0, mode='mirror'), taps, axis=1, mode='mirror')


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by ``factor`` (bilinear) and crop back to the input size."""
    height, width = x.shape[:2]
    crop_h, crop_w = math.ceil(height / factor), math.ceil(width / factor)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    zoomed = _ndimage().zoom(x[top:top + crop_h, left:left + crop_w], (factor, factor) + (1,) * (x.ndim - 2),
                             order=1)
    trim_h, trim_w = (zoomed.shape[0] - height) // 2, (zoomed.shape[1] - width) // 2
    return zoomed[trim_h:trim_h + height, trim_w:trim_w + width]


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """A one-sided Gaussian-weighted line blur at ``angle`` degrees (after ImageMagick's MotionBlurImage)."""
    taps = 2 * math.ceil(radius) + 1
    weights = np.exp(-np.arange(taps) ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    height, width = x.shape[:2]
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    out = np.zeros(x.shape, dtype=np.float64)
    for i, weight in enumerate(weights):
        dy, dx = math.ceil(i * sin - 0.5), math.ceil(i * cos - 0.5)  # ImageMagick's rounding (half down)
        out += weight * x[np.clip(rows + dy, 0, height - 1), np.clip(cols + dx, 0, width - 1)]
    return out


def _plasma_fractal(size: int, wibble_decay: float, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) diamond-square height map scaled to [0, 1]; ``size`` a power of two."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        # squares: the centre of each square is the mean of its four corners plus noise
        square_sum = corners + np.roll(corners, -1, axis=0)
        square_sum = square_sum + np.roll(square_sum, -1, axis=1)
        grid[half:size:step, half:size:step] = square_sum / 4 + wibble * rng.uniform(-wibble, wibble,
                                                                                      square_sum.shape)
        # diamonds: each edge midpoint is the mean of its two corners and two centres plus noise
        centres = grid[half:size:step, half:size:step]
        top = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:size:step, half:size:step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:size:step, 0:size:step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        step //= 2
        wibble /= wibble_decay
    grid -= grid.min()
    return grid / grid.max()


def _fractal_for(shape: tuple[int, ...], wibble_decay: float, rng: np.random.Generator) -> np.ndarray:
    size = 1 << max(5, math.ceil(math.log2(max(shape[:2]))))  # 32 for CIFAR, as published
    return _plasma_fractal(size, wibble_decay, rng)[:shape[0], :shape[1]]


def _luma(x: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 grey (the weights of OpenCV's RGB2GRAY), keeping a channel axis."""
    return (x @ np.array([0.299, 0.587, 0.114]))[..., None]


def _to_pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(x, dtype=np.uint8), mode='RGB')


# ---------------------------------------------------------------------------------------------- the corruptions
# Each takes the image as float64 (H, W, 3) in [0, 1] (or uint8 for the Pillow ones), the severity's parameter and
# the generator, and returns values in [0, 255] (any float) or a uint8 array.

def gaussian_noise(x, c, rng):
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, c, rng):
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x, c, rng):
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out * 255


def defocus_blur(x, c, rng):
    kernel = _disk(*c)
    correlate = _ndimage().correlate
    return np.clip(np.stack([correlate(x[..., d], kernel, mode='mirror') for d in range(x.shape[2])], axis=-1),
                   0, 1) * 255


def glass_blur(x, c, rng):
    sigma, delta, iterations = c
    pixels = (_gaussian(x, sigma) * 255).astype(np.uint8)
    height, width = pixels.shape[:2]
    rows, cols = range(height - delta, delta, -1), range(width - delta, delta, -1)
    for _ in range(iterations):
        shifts = rng.integers(-delta, delta, size=(len(rows), len(cols), 2))
        for i, h in enumerate(rows):
            for j, w in enumerate(cols):
                dx, dy = shifts[i, j]
                pixels[h, w] = pixels[h + dy, w + dx]  # the published "swap" (see the module docstring)
    return np.clip(_gaussian(pixels / 255.0, sigma), 0, 1) * 255


def motion_blur(x, c, rng):
    radius, sigma = c
    return np.clip(np.round(_motion_blur(x * 255, radius, sigma, rng.uniform(-45, 45))), 0, 255)


def zoom_blur(x, c, rng):
    factors = np.arange(1, c, 0.01)
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def snow(x, c, rng):
    loc, scale, zoom, threshold, radius, sigma, weight = c
    layer = rng.normal(size=x.shape[:2], loc=loc, scale=scale)
    layer = _clipped_zoom(layer[..., None], zoom)[..., 0]
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)  # the published script stores the layer as an 8-bit PNG
    layer = np.clip(np.round(_motion_blur(layer.astype(np.float64), radius, sigma, rng.uniform(-135, -45))),
                    0, 255)[..., None] / 255.0
    x = weight * x + (1 - weight) * np.maximum(x, _luma(x) * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def _frost_layer(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A synthetic frost texture in [0, 255]: a rough plasma haze plus bright ice streaks, pale blue-white."""
    haze = _fractal_for(shape, 1.5, rng)
    seeds = (rng.random(shape[:2]) < 0.06).astype(np.float64)
    streaks = sum(_motion_blur(seeds, 4, 2, angle) for angle in rng.uniform(0, 360, size=3))
    crystals = np.clip(0.55 * haze + 1.5 * streaks, 0, 1)
    return crystals[..., None] * np.array([0.84, 0.92, 1.0]) * 255


def frost(x, c, rng):
    image_weight, frost_weight = c
    return np.clip(image_weight * x * 255 + frost_weight * _frost_layer(x.shape, rng), 0, 255)


def fog(x, c, rng):
    strength, wibble_decay = c
    peak = x.max()
    x = x + strength * _fractal_for(x.shape, wibble_decay, rng)[..., None]
    return np.clip(x * peak / (peak + strength), 0, 1) * 255


def brightness(x, c, rng):
    value = x.max(axis=2, keepdims=True)  # V of HSV; RGB is proportional to V at fixed H and S
    scaled = x * np.minimum(value + c, 1) / np.where(value > 0, value, 1)
    return np.clip(np.where(value > 0, scaled, c), 0, 1) * 255


def contrast(x, c, rng):
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x, c, rng):
    alpha, sigma, jitter = c
    ndimage = _ndimage()
    height, width = x.shape[:2]
    # a random affine map fixed by three points (x, y) around the centre, each moved by up to `jitter` pixels
    centre, side = np.array([width // 2, height // 2], dtype=np.float64), min(height, width) // 3
    source = np.array([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    target = source + rng.uniform(-jitter, jitter, size=source.shape)
    forward = np.linalg.solve(np.hstack([source, np.ones((3, 1))]), target).T  # (2, 3): [x', y'] = A [x, y, 1]
    inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))
    # scipy samples input[matrix @ (row, col) + offset]: the inverse map in (row, col) order
    matrix = np.array([[inverse[1, 1], inverse[1, 0]], [inverse[0, 1], inverse[0, 0]]])
    offset = np.array([inverse[1, 2], inverse[0, 2]])
    x = np.stack([ndimage.affine_transform(x[..., d], matrix, offset, order=1, mode='mirror')
                  for d in range(x.shape[2])], axis=-1)
    dx = _gaussian(rng.uniform(-1, 1, size=(height, width)), sigma, mode='reflect', truncate=3) * alpha
    dy = _gaussian(rng.uniform(-1, 1, size=(height, width)), sigma, mode='reflect', truncate=3) * alpha
    rows, cols, chans = np.meshgrid(np.arange(height), np.arange(width), np.arange(x.shape[2]), indexing='ij')
    coordinates = [rows + dy[..., None], cols + dx[..., None], chans]
    return np.clip(ndimage.map_coordinates(x, coordinates, order=1, mode='reflect'), 0, 1) * 255


def pixelate(x, c, rng):
    image = _to_pil(x)
    small = image.resize((int(image.width * c), int(image.height * c)), Image.BOX)
    return np.asarray(small.resize(image.size, Image.BOX))


def jpeg_compression(x, c, rng):
    buffer = io.BytesIO()
    _to_pil(x).save(buffer, 'JPEG', quality=c)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.asarray(image.convert('RGB'))


_PIL_CORRUPTIONS = ('pixelate', 'jpeg_compression')  # take the uint8 image
_FUNCTIONS: dict[str, Callable] = {
    'gaussian_noise': gaussian_noise, 'shot_noise': shot_noise, 'impulse_noise': impulse_noise,
    'defocus_blur': defocus_blur, 'glass_blur': glass_blur, 'motion_blur': motion_blur, 'zoom_blur': zoom_blur,
    'snow': snow, 'frost': frost, 'fog': fog, 'brightness': brightness, 'contrast': contrast,
    'elastic_transform': elastic_transform, 'pixelate': pixelate, 'jpeg_compression': jpeg_compression}


def corrupt(image: np.ndarray, corruption: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One corrupted copy of ``image``.

    Args:
        image: (H, W, 3) uint8 RGB.
        corruption: A name from :data:`CORRUPTIONS`.
        severity: 1 to 5.
        rng: The source of every random draw (:func:`corruption_rng` gives one per image, corruption, severity).

    Returns:
        (H, W, 3) uint8, truncated from the float result as CIFAR-10-C's script does.
    """
    if corruption not in _FUNCTIONS:
        raise ValueError(f'unknown corruption {corruption!r}; choose from {", ".join(CORRUPTIONS)}.')
    if severity not in SEVERITIES:
        raise ValueError(f'severity must be one of {SEVERITIES}, got {severity!r}.')
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be a (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}.')
    param = CIFAR10C_PARAMS[corruption][severity - 1]
    x = image if corruption in _PIL_CORRUPTIONS else image / 255.0
    out = _FUNCTIONS[corruption](x, param, rng)
    return np.clip(out, 0, 255).astype(np.uint8)
