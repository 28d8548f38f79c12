"""SyntheticStreets: procedurally drawn street scenes with CamVid's 11 classes, for demos and tests.

Every scene is drawn from scratch by a few hundred vectorised NumPy operations on masks (about
5–10 ms for 90×120 on one busy CPU core), deterministically from ``(seed, scene number)``:

- a **perspective street**: a horizon and a vanishing point; the road is a trapezoid that widens
  towards the camera, with pavements on both sides; everything between the street's outer edges and
  the roofs is building facade, with roofs that converge towards the vanishing point;
- **sky** with a vertical gradient and clouds; **buildings** of several heights and colours with
  window grids; **road** with a dashed centre line (labelled Road, as in CamVid, but painted white or
  yellow), sometimes edge lines and a zebra crossing; **pavement** with tile lines and a kerb;
  a **fence** along a stretch of facade; **trees** with ragged leafy crowns and trunks; **poles**,
  some carrying **signs** (discs, triangles, panels) or traffic lights; **cars** (body, cabin,
  windows, wheels) on the road; **pedestrians** on the pavement; **bicyclists** (rider and bike);
  objects are sized by their distance (their foot row) and drawn far to near so they occlude correctly;
- **void** (label 11): some scenes hold an unlabelled object (a billboard, a bin) and some lose a
  random part of their object boundaries to void, so ``ignore_index`` is exercised;
- shadows, per-scene lighting and colour cast, a slight blur, texture (smooth and fine) and noise.

The task is learnable but not a colour lookup: class colours overlap on purpose (grey cars on grey
road in front of grey buildings, white cars and white facades, yellow signs and yellow cars, green
fences next to trees, lane markings as bright as the sky), so a model has to use shape and context.

Use different seeds (or :meth:`SyntheticStreets.splits`) for disjoint training and validation sets.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .camvid import VOID_LABEL
from .transforms import parse_size

__all__ = ["SyntheticStreets", "generate_street_scene"]

SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)

_BUILDING_COLOURS = np.array(
    [[185, 165, 135], [150, 80, 60], [120, 120, 125], [205, 200, 190], [110, 90, 70], [170, 150, 160],
     [140, 150, 160], [190, 120, 90]], dtype=np.float32)
_CAR_COLOURS = np.array(
    [[180, 30, 30], [40, 60, 150], [175, 175, 180], [225, 225, 225], [30, 30, 35], [30, 40, 80],
     [50, 100, 60], [215, 190, 50], [120, 120, 125], [100, 25, 30]], dtype=np.float32)
_SIGN_COLOURS = np.array(
    [[210, 30, 35], [30, 70, 190], [225, 200, 40], [235, 235, 235], [230, 120, 30]], dtype=np.float32)
_FENCE_COLOURS = np.array([[120, 90, 60], [135, 135, 135], [60, 95, 60], [215, 215, 210]], dtype=np.float32)
_POLE_COLOURS = np.array([[120, 120, 120], [60, 65, 60], [35, 35, 35], [165, 165, 160]], dtype=np.float32)


class _Canvas:
    """An image (float32 RGB), a label map and the helpers that paint a masked region of both."""

    def __init__(self, h, w, rng):
        self.h, self.w, self.rng = h, w, rng
        self.image = np.empty((h, w, 3), dtype=np.float32)
        self.label = np.empty((h, w), dtype=np.uint8)
        self.ys = (np.arange(h, dtype=np.float32) + 0.5)[:, None]  # row centres, a column vector
        self.xs = (np.arange(w, dtype=np.float32) + 0.5)[None, :]  # column centres, a row vector
        self.grain = rng.standard_normal((h, w), dtype=np.float32)  # fine texture
        coarse = rng.standard_normal((max(2, h // 8), max(2, w // 8))).astype(np.float32)
        self.smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
        medium = rng.standard_normal((max(2, h // 3), max(2, w // 3))).astype(np.float32)
        self.medium = np.asarray(Image.fromarray(medium).resize((w, h), Image.BILINEAR))  # ragged edges

    def box(self, y0, y1, x0, x1):
        """Integer pixel box covering ``[y0, y1) × [x0, x1)`` clipped to the image, or None if empty."""
        b = (max(0, int(math.floor(y0))), min(self.h, int(math.ceil(y1))),
             max(0, int(math.floor(x0))), min(self.w, int(math.ceil(x1))))
        return b if b[1] > b[0] and b[3] > b[2] else None

    def local(self, b):
        """Row and column centre coordinates inside box ``b`` (broadcastable to the box)."""
        return self.ys[b[0]:b[1]], self.xs[:, b[2]:b[3]]

    def paint(self, b, mask, cls, colour, grain=0.05, smooth=0.08):
        """Set label ``cls`` (None: keep) and a textured ``colour`` on the ``mask`` pixels of box ``b``."""
        if b is None:
            return
        y0, y1, x0, x1 = b
        colour = np.asarray(colour, dtype=np.float32)
        tex = grain * self.grain[y0:y1, x0:x1] + smooth * self.smooth[y0:y1, x0:x1]
        tex += 1.0
        value = tex[:, :, None] * colour
        if mask is None:
            self.image[y0:y1, x0:x1] = value
            if cls is not None:
                self.label[y0:y1, x0:x1] = cls
            return
        mask = np.broadcast_to(mask, tex.shape)
        np.copyto(self.image[y0:y1, x0:x1], value, where=mask[:, :, None])
        if cls is not None:
            np.copyto(self.label[y0:y1, x0:x1], cls, where=mask, casting="unsafe")

    def ellipse(self, cls, colour, cy, cx, ry, rx, ragged=0.0, **tex):
        b = self.box(cy - ry * (1 + ragged), cy + ry * (1 + ragged), cx - rx * (1 + ragged), cx + rx * (1 + ragged))
        if b is None:
            return
        yy, xx = self.local(b)
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        if ragged:
            d = d - ragged * self.medium[b[0]:b[1], b[2]:b[3]]
        self.paint(b, d < 1.0, cls, colour, **tex)

    def rect(self, cls, colour, y0, y1, x0, x1, **tex):
        self.paint(self.box(y0, y1, x0, x1), None, cls, colour, **tex)


def _jitter(rng, colour, amount=18.0):
    return np.clip(np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _pick(rng, colours, amount=18.0):
    return _jitter(rng, colours[rng.integers(len(colours))], amount)


def _grey(rng, lo, hi, tint=8.0):
    return np.clip(rng.uniform(lo, hi) + rng.uniform(-tint, tint, 3), 0, 255).astype(np.float32)


class _Street:
    """The geometry of one scene: horizon, vanishing point, road and pavement trapezoids."""

    def __init__(self, c: _Canvas, rng):
        h, w = c.h, c.w
        self.yh = h * rng.uniform(0.32, 0.5)  # horizon row
        self.vx = w * rng.uniform(0.35, 0.65)  # vanishing point column
        self.cb = self.vx + w * rng.uniform(-0.25, 0.25)  # road centre at the bottom row
        self.hb = w * rng.uniform(0.25, 0.55)  # road half width at the bottom row
        self.pb = w * rng.uniform(0.12, 0.35)  # pavement width at the bottom row
        self.h, self.w = h, w
        # The street's outer edges are lines from the vanishing point to the bottom corners at
        # left = cb - hb - pb and right = cb + hb + pb; a column x meets the street surface from the
        # row where it crosses them ("base") down to the bottom.
        left, right = self.cb - self.hb - self.pb, self.cb + self.hb + self.pb
        xs = c.xs[0]
        t_edge = np.where(xs < self.vx, (self.vx - xs) / (self.vx - left), (xs - self.vx) / (right - self.vx))
        self.base = (self.yh + t_edge * (h - self.yh)).astype(np.float32)  # (W,), > h: no street there

    def t(self, y):
        """Depth coordinate of a row: 0 at the horizon, 1 at the bottom (also the object scale)."""
        return (y - self.yh) / (self.h - self.yh)

    def centre(self, y):
        return self.vx + (self.cb - self.vx) * self.t(y)

    def road_half(self, y):
        return self.hb * self.t(y) + 0.3

    def pave_width(self, y):
        return self.pb * self.t(y)

    def on_road(self, rng, t, spread=0.8):
        y = self.yh + t * (self.h - self.yh)
        return y, self.centre(y) + rng.uniform(-spread, spread) * self.road_half(y)

    def on_pavement(self, rng, t, side=None):
        y = self.yh + t * (self.h - self.yh)
        side = rng.choice((-1, 1)) if side is None else side
        offset = self.road_half(y) + rng.uniform(0.2, 0.9) * self.pave_width(y)
        return y, self.centre(y) + side * offset


def _draw_background(c: _Canvas, s: _Street, rng):
    h, w = c.h, c.w
    ys, xs = c.ys, c.xs
    # Sky: a vertical gradient with smooth clouds.
    top, bottom = _grey(rng, 120, 200, 6), _grey(rng, 175, 245, 6)
    top[2] += rng.uniform(0, 40)  # some blue
    f = np.clip(ys / max(s.yh, 1.0), 0, 1)[:, :, None]
    c.image[:] = top * (1 - f) + bottom * f
    c.image *= (1.0 + rng.uniform(0.03, 0.12) * c.smooth)[:, :, None]
    c.label[:] = SKY

    # Buildings: segments along x, roofs converging to the vanishing point, facade down to the street.
    bounds = [0.0]
    while bounds[-1] < w:
        bounds.append(bounds[-1] + w * rng.uniform(0.08, 0.3))
    bounds = np.array(bounds[1:-1] + [np.inf], dtype=np.float32)
    seg = np.searchsorted(bounds, xs[0])  # segment of each column
    nseg = len(bounds)
    height = rng.uniform(0.25, 1.4, nseg) * s.yh
    height[rng.random(nseg) < 0.12] = -1e4  # a gap: sky down to the horizon
    colours = np.stack([_pick(rng, _BUILDING_COLOURS, 22) for _ in range(nseg)])
    d = np.abs(xs[0] - s.vx) / max(s.vx, w - s.vx)
    roof = np.clip(s.yh - 1.5 - height[seg] * d, -1, s.yh)  # (W,)
    facade = (ys > roof) & (ys < s.base)
    np.copyto(c.label, BUILDING, where=facade, casting="unsafe")
    tex = 0.05 * c.grain + 0.12 * c.smooth
    tex += 1.0
    np.copyto(c.image, tex[:, :, None] * colours[seg][None, :, :], where=facade[:, :, None])
    # Window grids: per segment period and size, darker or sky-reflecting panes.
    px = rng.uniform(4, 9, nseg)[seg] * (0.4 + d)
    py = rng.uniform(5, 10, nseg)[seg] * (0.4 + d)
    start = np.concatenate([[0.0], bounds[:-1]])[seg]
    has = (rng.random(nseg) < 0.85)[seg]
    cols = ((xs[0] - start) % px < 0.55 * px) & has & (xs[0] - start > 0.3 * px)
    rows = (ys - roof) % py < 0.5 * py
    windows = facade & cols & rows & (ys > roof + 0.6 * py) & (ys < s.base - py)
    pane = np.where(rng.random(nseg) < 0.7, rng.uniform(25, 80, nseg), rng.uniform(150, 220, nseg))[seg]
    glass = (pane * (1 + 0.05 * c.grain))[:, :, None] * np.array([0.9, 0.95, 1.05], np.float32)
    np.copyto(c.image, glass, where=windows[:, :, None])

    # Street surface: pavement, then road, kerb, markings.
    below = np.nonzero(s.base < h)[0]
    if len(below):
        x0, x1 = below[0], below[-1] + 1
        y0 = int(max(0, math.floor(s.base[x0:x1].min())))
        b = (y0, h, x0, x1)
        yy, xx = c.local(b)
        street = yy >= s.base[None, x0:x1]
        tile = (np.abs(1.0 / np.maximum(yy - s.yh, 0.5)) * 40 % 1.0 < 0.15) | ((xx * 0.5) % 3.0 < 0.35)
        pave = _grey(rng, 110, 185, 10) if rng.random() < 0.75 else _jitter(rng, [165, 115, 100])
        c.paint(b, street, PAVEMENT, pave, grain=0.06, smooth=0.1)
        c.paint(b, street & tile, None, pave * 0.82, grain=0.06)
        off = np.abs(xx - s.centre(yy))
        half = s.road_half(yy)
        road = street & (off < half)
        asphalt = _grey(rng, 60, 130, 8)
        c.paint(b, road, ROAD, asphalt, grain=0.08, smooth=0.1)
        kerb = street & (off >= half) & (off < half + 0.08 * s.pave_width(yy) + 0.5)
        c.paint(b, kerb, PAVEMENT, _grey(rng, 150, 210), grain=0.04)
        paint = _grey(rng, 200, 245, 4) if rng.random() < 0.7 else _jitter(rng, [225, 195, 60], 10)
        t = s.t(yy)
        mw = 0.025 * s.hb * t + 0.25
        dash = (8.0 / np.maximum(yy - s.yh, 0.5) + rng.uniform()) % 1.0 < rng.uniform(0.4, 0.7)
        mark = road & (np.abs(xx - s.centre(yy)) < mw) & dash
        if rng.random() < 0.5:  # edge lines
            mark |= road & (np.abs(off - 0.9 * half) < mw)
        if rng.random() < 0.25:  # zebra crossing near the camera
            zy = rng.uniform(0.55, 0.85)
            band = (t > zy) & (t < zy + 0.12) & ((xx - s.centre(yy)) / (half + 1e-3) * 4 % 1.0 < 0.5)
            mark |= road & band
        c.paint(b, mark, ROAD, paint, grain=0.04)
        # Shadows (label unchanged): a few soft dark blobs on the ground.
        for _ in range(rng.integers(0, 3)):
            cy, cx = s.yh + rng.uniform(0.2, 1.0) * (h - s.yh), rng.uniform(0, w)
            ry, rx = rng.uniform(0.05, 0.2) * h, rng.uniform(0.1, 0.35) * w
            sb = c.box(cy - ry, cy + ry, cx - rx, cx + rx)
            if sb is not None:
                sy, sx = c.local(sb)
                m = (((sy - cy) / ry) ** 2 + ((sx - cx) / rx) ** 2 < 1) & (sy >= s.base[None, sb[2]:sb[3]])
                c.image[sb[0]:sb[1], sb[2]:sb[3]][m] *= rng.uniform(0.55, 0.8)

    # A fence along a stretch of one side's facade foot.
    if rng.random() < 0.55:
        side = rng.choice((-1, 1))
        xa, xb = sorted(rng.uniform(0, s.vx) if side < 0 else rng.uniform(s.vx, w) for _ in range(2))
        xa, xb = (xa, xb) if xb - xa > 0.08 * w else ((xa, xa + 0.2 * w) if side > 0 else (xb - 0.2 * w, xb))
        b = c.box(s.yh - 2, h, xa, xb)
        if b is not None:
            yy, xx = c.local(b)
            foot = np.minimum(s.base[None, b[2]:b[3]], h + 2.0)
            tall = (foot - s.yh) * rng.uniform(0.18, 0.35) + 1.0
            band = (yy < foot) & (yy > foot - tall)
            colour = _pick(rng, _FENCE_COLOURS, 15)
            c.paint(b, band, FENCE, colour, grain=0.05)
            period = rng.uniform(2.5, 4.5)
            slats = (xx % period) < period * rng.uniform(0.3, 0.55)
            gaps = band & slats & (yy < foot - 0.2 * tall) & (yy > foot - 0.8 * tall)
            c.paint(b, gaps, None, colour * rng.uniform(0.35, 0.6), grain=0.05)


def _draw_tree(c, s, rng, y, x):
    k = max(s.t(y), 0.05)
    trunk_h, trunk_w = k * c.h * rng.uniform(0.2, 0.45), max(1.0, k * c.w * rng.uniform(0.015, 0.035))
    bark = _jitter(rng, [85, 65, 45], 15)
    c.rect(TREE, bark, y - trunk_h, y, x - trunk_w / 2, x + trunk_w / 2)
    r = k * c.h * rng.uniform(0.16, 0.34)
    leaf = _jitter(rng, [rng.uniform(30, 95), rng.uniform(70, 140), rng.uniform(20, 70)], 12)
    for _ in range(rng.integers(2, 4)):
        cy = y - trunk_h - r * rng.uniform(0.1, 0.8)
        cx = x + r * rng.uniform(-0.7, 0.7)
        c.ellipse(TREE, leaf * rng.uniform(0.8, 1.15), cy, cx, r * rng.uniform(0.7, 1.1), r * rng.uniform(0.8, 1.3),
                  ragged=0.35, grain=0.22, smooth=0.1)


def _draw_pole(c, s, rng, y, x):
    k = max(s.t(y), 0.05)
    height = k * c.h * rng.uniform(0.8, 1.4)
    width = max(1.0, k * c.w * rng.uniform(0.012, 0.025))
    c.rect(POLE, _pick(rng, _POLE_COLOURS, 12), y - height, y, x - width / 2, x + width / 2, grain=0.04)
    if rng.random() < 0.7:  # a sign or a traffic light on top
        r = k * c.h * rng.uniform(0.05, 0.09) + 0.8
        cy = y - height + r * rng.uniform(0.5, 1.5)
        kind = rng.integers(4)
        if kind == 0:
            c.ellipse(SIGN, _pick(rng, _SIGN_COLOURS, 12), cy, x, r, r, grain=0.03)
        elif kind == 1:  # a triangle
            b = c.box(cy - r, cy + r, x - r, x + r)
            if b is not None:
                yy, xx = c.local(b)
                triangle = (yy < cy + r) & (np.abs(xx - x) < (yy - (cy - r)) * 0.6)
                c.paint(b, triangle, SIGN, _pick(rng, _SIGN_COLOURS, 12))
        elif kind == 2:  # a panel beside the pole
            side = rng.choice((-1, 1))
            c.rect(SIGN, _pick(rng, _SIGN_COLOURS, 12), cy - 0.8 * r, cy + 0.8 * r, x, x + side * 2.6 * r, grain=0.03)
        else:  # a traffic light: a dark box with one lit lamp
            c.rect(SIGN, _grey(rng, 20, 50, 4), cy - 1.6 * r, cy + 1.6 * r, x - 0.7 * r, x + 0.7 * r, grain=0.03)
            lamp = [[230, 40, 30], [240, 190, 40], [60, 220, 90]][rng.integers(3)]
            c.ellipse(SIGN, _jitter(rng, lamp, 10), cy + rng.integers(-1, 2) * r, x, 0.45 * r, 0.45 * r, grain=0.02)


def _draw_car(c, s, rng, y, x):
    k = max(s.t(y), 0.05)
    width = k * c.w * rng.uniform(0.28, 0.42)
    if width < 2.5:
        return
    body_h = width * rng.uniform(0.26, 0.36)
    cabin_h = width * rng.uniform(0.2, 0.28)
    paint = _pick(rng, _CAR_COLOURS, 15)
    wheel_r = body_h * 0.35
    top = y - wheel_r * 0.6 - body_h
    c.rect(CAR, paint, top, y - wheel_r * 0.6, x - width / 2, x + width / 2, grain=0.03, smooth=0.05)
    b = c.box(top - cabin_h, top + 0.5, x - width / 2, x + width / 2)
    if b is not None:
        yy, xx = c.local(b)
        slope = (top - yy) / cabin_h  # 0 at the body, 1 at the roof
        half = width * (0.42 - 0.14 * slope)
        cabin = np.abs(xx - x) < half
        c.paint(b, cabin, CAR, paint, grain=0.03, smooth=0.05)
        glass = (np.abs(xx - x) < half - 0.06 * width) & (yy > top - cabin_h * 0.85) & (yy < top - 0.1 * cabin_h)
        c.paint(b, glass, CAR, _grey(rng, 30, 90, 10) * np.array([0.9, 0.95, 1.1], np.float32), grain=0.05)
    for side in (-1, 1):
        c.ellipse(CAR, _grey(rng, 15, 40, 3), y - wheel_r, x + side * width * 0.3, wheel_r, wheel_r * 0.8, grain=0.05)
    lamp = _jitter(rng, [220, 210, 170] if rng.random() < 0.5 else [200, 40, 30], 10)
    for side in (-1, 1):
        c.rect(CAR, lamp, top + 0.15 * body_h, top + 0.35 * body_h, x + side * width * 0.42 - 0.06 * width,
               x + side * width * 0.42 + 0.06 * width, grain=0.02)


def _draw_person(c, rng, y, x, height, cls, legs=True):
    """A head, a torso and (optionally) two legs standing on row ``y``; returns the torso's top."""
    shirt = np.clip(rng.uniform(15, 210, 3), 0, 255).astype(np.float32)
    trousers = _grey(rng, 20, 90, 15)
    skin = _jitter(rng, [205, 160, 130] if rng.random() < 0.6 else [120, 85, 60], 15)
    w = height * 0.26
    leg_top = y - 0.47 * height
    if legs:
        for side in (-1, 1):
            leg = x + side * 0.22 * w
            c.rect(cls, trousers, leg_top, y, leg - 0.15 * w, leg + 0.15 * w, grain=0.05)
    torso_top = y - 0.84 * height
    c.rect(cls, shirt, torso_top, leg_top + 0.5, x - w / 2, x + w / 2, grain=0.06)
    c.ellipse(cls, skin, torso_top - 0.08 * height, x, 0.08 * height, 0.065 * height, grain=0.04)
    return torso_top


def _draw_pedestrian(c, s, rng, y, x):
    k = max(s.t(y), 0.05)
    height = k * c.h * rng.uniform(0.45, 0.62)
    if height >= 3:
        _draw_person(c, rng, y, x, height, PEDESTRIAN)


def _draw_bicyclist(c, s, rng, y, x):
    k = max(s.t(y), 0.05)
    height = k * c.h * rng.uniform(0.5, 0.65)
    if height < 4:
        return
    r = height * 0.2
    axle = y - r
    frame = _pick(rng, _CAR_COLOURS, 20)
    facing = rng.choice((-1, 1))  # side view, riding left or right
    for side in (-1, 1):
        cx = x + side * 1.1 * r
        b = c.box(axle - r, axle + r, cx - r, cx + r)
        if b is not None:
            yy, xx = c.local(b)
            d = ((yy - axle) / r) ** 2 + ((xx - cx) / r) ** 2
            c.paint(b, (d < 1.0) & (d > 0.55), BICYCLIST, _grey(rng, 15, 45, 3), grain=0.05)
    c.rect(BICYCLIST, frame, axle - 0.55 * r, axle - 0.3 * r, x - 1.1 * r, x + 1.1 * r, grain=0.04)
    c.rect(BICYCLIST, frame, axle - 0.55 * r, axle + 0.1 * r, x - 0.12 * r, x + 0.12 * r, grain=0.04)
    _draw_person(c, rng, axle - 0.2 * r, x - facing * 0.25 * r, height * 0.8, BICYCLIST, legs=True)


def _draw_void_object(c, s, rng, y, x):
    """Something CamVid leaves unlabelled: a billboard or a bin, in any colour."""
    k = max(s.t(y), 0.05)
    hgt, wid = k * c.h * rng.uniform(0.1, 0.35), k * c.w * rng.uniform(0.05, 0.2)
    c.rect(VOID_LABEL, np.clip(rng.uniform(20, 235, 3), 0, 255), y - hgt, y, x - wid / 2, x + wid / 2, grain=0.08)


def _void_boundaries(c, rng, p):
    """Turn a random fraction ``p`` of the pixels on label boundaries into void (as CamVid's annotators did)."""
    lab = c.label
    edge = np.zeros(lab.shape, dtype=bool)
    step_x = lab[:, 1:] != lab[:, :-1]
    step_y = lab[1:, :] != lab[:-1, :]
    edge[:, 1:] |= step_x
    edge[1:, :] |= step_y
    lab[edge & (rng.random(lab.shape) < p)] = VOID_LABEL


def _finish(c, rng):
    """Lighting, colour cast, slight blur and sensor noise; returns the uint8 image."""
    img = c.image
    img *= (rng.uniform(0.7, 1.2) * rng.uniform(0.92, 1.08, 3)).astype(np.float32)
    if rng.random() < 0.7:  # a light 3x3-ish blur: centre weight 4, 4-neighbours 1 each
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = (4 * img + p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) * (1.0 / 8.0)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= rng.uniform(2.0, 9.0)
    img += noise
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def generate_street_scene(size=(90, 120), rng=None):
    """Draw one street scene: ``(image uint8 (H, W, 3), label uint8 (H, W))``.

    ``rng`` is a ``numpy.random.Generator`` (or a seed); the same generator state gives the same scene.
    """
    h, w = parse_size(size)
    if h < 16 or w < 16:
        raise ValueError(f"generate_street_scene: size must be at least 16x16, got {h}x{w}")
    rng = np.random.default_rng(rng)
    c = _Canvas(h, w, rng)
    s = _Street(c, rng)
    _draw_background(c, s, rng)

    # Objects: (foot row, column, painter), drawn far to near.
    objects = []
    for _ in range(rng.binomial(3, 0.55)):
        objects.append((*s.on_pavement(rng, rng.uniform(0.05, 0.9)), _draw_tree))
    for _ in range(rng.binomial(3, 0.6)):
        objects.append((*s.on_pavement(rng, rng.uniform(0.1, 0.95)), _draw_pole))
    for _ in range(rng.binomial(4, 0.5)):
        objects.append((*s.on_road(rng, rng.uniform(0.1, 1.0)), _draw_car))
    for _ in range(rng.binomial(3, 0.45)):
        objects.append((*s.on_pavement(rng, rng.uniform(0.2, 1.0)), _draw_pedestrian))
    for _ in range(rng.binomial(2, 0.35)):
        objects.append((*s.on_road(rng, rng.uniform(0.3, 1.0), spread=1.0), _draw_bicyclist))
    if rng.random() < 0.3:
        objects.append((*s.on_pavement(rng, rng.uniform(0.2, 0.9)), _draw_void_object))
    objects.sort(key=lambda o: o[0])
    for y, x, draw in objects:
        draw(c, s, rng, y, x)

    if rng.random() < 0.5:
        _void_boundaries(c, rng, rng.uniform(0.1, 0.5))
    return _finish(c, rng), c.label


class SyntheticStreets:
    """A dataset of synthetic street scenes: ``ds[i] -> (image uint8 (H, W, 3), label uint8 (H, W))``.

    Args:
        num_images: the number of scenes.
        size: ``(H, W)`` or ``"HxW"``; 90×120 by default (CamVid's 3:4, a quarter of 360×480 per side).
        seed: scenes of one seed form a fixed infinite sequence; scene ``k`` is drawn from
            ``default_rng((seed, k))`` alone, so it does not depend on ``num_images`` or on what was
            read before.
        offset: the dataset holds scenes ``offset .. offset + num_images - 1`` of that sequence.

    Scenes are drawn on each access (5–10 ms at 90×120); wrap the dataset in
    :func:`~minisegnet.data.cache_resized` to draw them once.  :meth:`splits` gives disjoint train and
    validation sets; so do different seeds.
    """

    def __init__(self, num_images: int, size=(90, 120), seed: int = 0, *, offset: int = 0):
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 0:
            raise ValueError(f"SyntheticStreets: num_images must be a non-negative integer, got {num_images!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"SyntheticStreets: seed must be a non-negative integer, got {seed!r}")
        if offset < 0:
            raise ValueError(f"SyntheticStreets: offset must be >= 0, got {offset}")
        self.size = parse_size(size)
        if min(self.size) < 16:
            raise ValueError(f"SyntheticStreets: size must be at least 16x16, got {self.size}")
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.offset = int(offset)

    @classmethod
    def splits(cls, train: int, val: int, size=(90, 120), seed: int = 0):
        """Disjoint ``(train, val)`` datasets: scenes ``0..train-1`` and ``train..train+val-1`` of ``seed``."""
        return cls(train, size, seed), cls(val, size, seed, offset=train)

    @property
    def names(self):
        return tuple(f"synthetic_s{self.seed}_{self.offset + i:06d}" for i in range(len(self)))

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"SyntheticStreets indices must be integers, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"SyntheticStreets index {index} out of range for {len(self)} images")
        return generate_street_scene(self.size, np.random.default_rng((self.seed, self.offset + i)))

    def __repr__(self) -> str:
        return (f"SyntheticStreets({self.num_images}, size={self.size}, seed={self.seed}"
                f"{f', offset={self.offset}' if self.offset else ''})")
