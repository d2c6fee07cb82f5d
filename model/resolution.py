"""Image sizes: the preferred Kontext resolutions and how output and reference sizes are chosen.

All sizes are (width, height) in pixels and multiples of 16 (one latent token = 16×16 pixels).
"""

# The resolutions FLUX.1 Kontext was trained at (BFL `PREFERED_KONTEXT_RESOLUTIONS`), all about 1 MP.
PREFERRED_KONTEXT_RESOLUTIONS: list[tuple[int, int]] = [
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024),
    (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688), (1568, 672),
]

# Replicate's flux-kontext-dev `aspect_ratio` choices (cog-flux-kontext `ASPECT_RATIOS`).
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024), "16:9": (1328, 800), "21:9": (1568, 672), "3:2": (1248, 832), "2:3": (832, 1248),
    "4:5": (944, 1104), "5:4": (1104, 944), "3:4": (880, 1184), "4:3": (1184, 880), "9:16": (800, 1328),
    "9:21": (672, 1568),
}

DEFAULT_SIZE = (1024, 1024)
MULTIPLE = 16


def round_down(width: int, height: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """Round both sides down to `multiple`; a side smaller than it is an error."""
    if width < multiple or height < multiple:
        raise ValueError(f"image size {width}x{height} is too small: each side must be at least {multiple} px")
    return width // multiple * multiple, height // multiple * multiple


def scaled(size: tuple[int, int], megapixels: float) -> tuple[int, int]:
    """A ~1 MP table size scaled to about `megapixels` MP (same aspect ratio, rounded down to 16)."""
    if megapixels == 1.0:
        return size
    if megapixels <= 0:
        raise ValueError("megapixels must be positive")
    factor = megapixels**0.5
    return round_down(max(MULTIPLE, int(size[0] * factor)), max(MULTIPLE, int(size[1] * factor)))


def preferred_resolution(width: float, height: float) -> tuple[int, int]:
    """The preferred Kontext resolution whose aspect ratio is closest to width/height (BFL's rule and tie-break)."""
    ratio = width / height
    _, w, h = min((abs(ratio - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    return w, h


def aspect_ratio_size(aspect_ratio: str) -> tuple[int, int]:
    """Size for an aspect ratio "W:H": Replicate's table, else the closest preferred resolution."""
    if aspect_ratio in ASPECT_RATIOS:
        return ASPECT_RATIOS[aspect_ratio]
    try:
        w, h = (float(part) for part in aspect_ratio.split(":"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"aspect ratio must look like 16:9, got {aspect_ratio!r}") from None
    return preferred_resolution(w, h)


def reference_size(width: int, height: int, auto_resize: bool = True, megapixels: float = 1.0) -> tuple[int, int]:
    """Size a reference image is encoded at: its preferred resolution (scaled to `megapixels`), or its own size
    rounded down to 16."""
    return scaled(preferred_resolution(width, height), megapixels) if auto_resize else round_down(width, height)


def output_size(
    width: int | None = None,
    height: int | None = None,
    aspect_ratio: str | None = None,
    reference: tuple[int, int] | None = None,
    megapixels: float = 1.0,
) -> tuple[int, int]:
    """The output size: explicit width and height (rounded down to 16, never rescaled), else the aspect ratio's
    size, else the (already sized) reference's size, else 1024×1024; table sizes scaled to `megapixels`."""
    if (width is None) != (height is None):
        raise ValueError("give both width and height, or neither")
    if width is not None and height is not None:
        if aspect_ratio is not None:
            raise ValueError("give either width/height or aspect_ratio, not both")
        return round_down(width, height)
    if aspect_ratio is not None and aspect_ratio != "match_input_image":
        return scaled(aspect_ratio_size(aspect_ratio), megapixels)
    return reference if reference is not None else scaled(DEFAULT_SIZE, megapixels)
