"""Monocular/stereo depth evaluation with RoboDepth's KITTI-C protocol and metrics.

* :func:`depth_errors`: abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3 (Eigen et al. 2014 metrics as
  computed by MonoDepth2 and RoboDepth).
* :func:`evaluate_depth`: the evaluation protocol (valid range ``1e-3 < gt < 80``, Garg crop,
  per-image median scaling or a fixed scale such as 5.4 for stereo-trained models, clamping).
* :func:`des`: depth estimation scores DES1/DES2/DES3; :func:`robustness_summary`: CE, RCE, mCE,
  RR and mRR against a baseline table (MonoDepth2 ResNet-18 mono 640x192 by default,
  :data:`MONODEPTH2_KITTIC`, from RoboDepth's published results).
* :func:`evaluate_kittic`: a model on a KITTI-C tree in RoboDepth's layout (as written by
  ``robust-ens corrupt --preset kittic``), clean and per corruption/severity, with the summary.
* :class:`DepthModel`: the depth-model interface (images in [0, 1] -> depth or disparity) with
  :class:`TorchDepthModel` for ``nn.Module`` networks and :class:`SGBMStereo`, OpenCV's semi-global
  block matching on stereo pairs, a classical baseline that needs no training.

Example:
    >>> import numpy as np
    >>> from robust_ens.depth import depth_errors
    >>> gt = np.array([2.0, 4.0, 8.0]); pred = np.array([2.0, 5.0, 8.0])
    >>> round(depth_errors(gt, pred)["abs_rel"], 4)
    0.0833
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from robust_ens.errors import RobustEnsError

log = logging.getLogger(__name__)

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
MIN_DEPTH = 1e-3
MAX_DEPTH = 80.0
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # rows (top, bottom), cols (left, right)
STEREO_SCALE = 5.4  # MonoDepth2's fixed scale for models trained on stereo pairs

#: RoboDepth's MonoDepth2 (ResNet-18, monocular, 640x192) KITTI-C baseline; figures only.
MONODEPTH2_KITTIC: dict[str, Any] = {
    "name": "MonoDepth2 R18 mono 640x192 (RoboDepth)",
    "clean": {"abs_rel": 0.115, "sq_rel": 0.905, "rmse": 4.864, "rmse_log": 0.193, "a1": 0.877, "a2": 0.959,
              "a3": 0.981, "DES1": 0.238, "DES2": 0.119, "DES3": 0.131},
    "DES2": {
        "brightness": 0.130, "dark": 0.280, "fog": 0.155, "frost": 0.277, "snow": 0.511, "contrast": 0.187,
        "defocus_blur": 0.244, "glass_blur": 0.242, "motion_blur": 0.216, "zoom_blur": 0.201,
        "elastic_transform": 0.129, "color_quant": 0.193, "gaussian_noise": 0.384, "impulse_noise": 0.389,
        "shot_noise": 0.340, "iso_noise": 0.388, "pixelate": 0.145, "jpeg_compression": 0.196,
    },
    "summary": {"mCE": 100.00, "mRR": 84.46},
}


# ------------------------------------------------------------------------------------------ metrics


def _as_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def depth_errors(gt: Any, pred: Any) -> dict[str, float]:
    """The seven standard depth errors between matching arrays of valid, positive depths.

    Args:
        gt: Ground-truth depths (any shape; numpy or torch), all valid and > 0.
        pred: Predicted depths, same shape, > 0.

    Returns:
        ``{"abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"}`` as floats:
        ``mean(|gt - pred| / gt)``, ``mean((gt - pred)^2 / gt)``, ``sqrt(mean((gt - pred)^2))``,
        ``sqrt(mean((log gt - log pred)^2))`` and the fractions with
        ``max(gt / pred, pred / gt) < 1.25^k``.

    Raises:
        RobustEnsError: on shape mismatch, empty input or non-positive values.
    """
    g, p = _as_numpy(gt).ravel(), _as_numpy(pred).ravel()
    if g.shape != p.shape:
        raise RobustEnsError(f"gt and pred must have the same number of values, got {g.size} and {p.size}")
    if g.size == 0:
        raise RobustEnsError("no valid depth values to evaluate (check the valid range and the crop)")
    if (g <= 0).any() or (p <= 0).any() or not (np.isfinite(g).all() and np.isfinite(p).all()):
        raise RobustEnsError("depth_errors needs finite, positive gt and pred; mask invalid pixels first")
    thresh = np.maximum(g / p, p / g)
    diff = g - p
    return {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff**2 / g)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2))),
        "a1": float(np.mean(thresh < 1.25)),
        "a2": float(np.mean(thresh < 1.25**2)),
        "a3": float(np.mean(thresh < 1.25**3)),
    }


def des(metrics: Mapping[str, float]) -> dict[str, float]:
    """Depth estimation scores: ``DES1 = abs_rel - a1 + 1``, ``DES2 = DES1 / 2``, ``DES3 = abs_rel / a1``."""
    ar, a1 = float(metrics["abs_rel"]), float(metrics["a1"])
    d1 = ar - a1 + 1.0
    return {"DES1": d1, "DES2": d1 / 2.0, "DES3": ar / a1 if a1 > 0 else float("inf")}


# ---------------------------------------------------------------------------------------- protocol


def disp_to_depth(disp: torch.Tensor, min_depth: float = 0.1, max_depth: float = 100.0) -> torch.Tensor:
    """MonoDepth2's conversion of a sigmoid output in [0, 1] to depth (via scaled disparity)."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return 1.0 / (min_disp + (max_disp - min_disp) * disp)


def evaluate_depth(
    gt_depths: Sequence[Any],
    preds: Sequence[Any] | Any,
    *,
    pred_is_disparity: bool = False,
    scaling: str | float = "median",
    crop: str | None = "garg",
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
) -> dict[str, float]:
    """RoboDepth/MonoDepth2 evaluation: per-image errors averaged over images.

    For each image the prediction is resized (bilinear) to the ground truth's size, turned into
    depth (``1 / disp`` when ``pred_is_disparity``), the valid pixels ``min_depth < gt < max_depth``
    (inside the Garg crop when ``crop="garg"``) are kept, the prediction is scaled (per-image
    ``median(gt) / median(pred)`` for ``"median"``, or multiplied by a fixed factor, e.g.
    :data:`STEREO_SCALE`), clamped to ``[min_depth, max_depth]`` and scored with :func:`depth_errors`.

    Args:
        gt_depths: Ground-truth depth maps ``H x W`` (0 or non-finite where unknown).
        preds: Predictions, one ``h x w`` map per image (or an ``[N, h, w]`` / ``[N, 1, h, w]`` array).
        pred_is_disparity: Predictions are (relative) disparities rather than depths.
        scaling: ``"median"``, ``"none"`` or a float factor.
        crop: ``"garg"`` or ``None``.
        min_depth, max_depth: Valid depth range.

    Returns:
        Mean of each metric over images, plus the DES scores.
    """
    if isinstance(preds, (np.ndarray, torch.Tensor)):
        preds = [p for p in (preds[:, 0] if preds.ndim == 4 else preds)]
    if len(gt_depths) != len(preds):
        raise RobustEnsError(f"{len(gt_depths)} ground-truth maps but {len(preds)} predictions")
    if crop not in ("garg", None):
        raise RobustEnsError(f"crop must be 'garg' or None, got {crop!r}")
    rows = []
    for gt, pred in zip(gt_depths, preds, strict=False):
        g = _as_numpy(gt)
        h, w = g.shape
        pt = torch.as_tensor(_as_numpy(pred))
        if pt.shape != (h, w):
            pt = F.interpolate(pt[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        p = pt.numpy()
        if pred_is_disparity:
            p = 1.0 / np.maximum(p, 1e-12)
        g_safe = np.where(np.isfinite(g), g, 0.0)
        mask = (g_safe > min_depth) & (g_safe < max_depth)
        if crop == "garg":
            keep = np.zeros_like(mask)
            t, b, l_, r = (int(GARG_CROP[0] * h), int(GARG_CROP[1] * h), int(GARG_CROP[2] * w), int(GARG_CROP[3] * w))
            keep[t:b, l_:r] = True
            mask &= keep
        gv, pv = g_safe[mask], p[mask]
        if gv.size == 0:
            raise RobustEnsError("an image has no valid ground-truth pixels inside the valid range/crop")
        if scaling == "median":
            pv = pv * (np.median(gv) / np.median(pv))
        elif scaling != "none":
            pv = pv * float(scaling)
        pv = np.clip(pv, min_depth, max_depth)
        rows.append(depth_errors(gv, pv))
    out = {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
    out.update(des(out))
    return out


def robustness_summary(
    corrupted: Mapping[str, Mapping[str, float]] | Mapping[str, Mapping[int, Mapping[str, float]]],
    clean: Mapping[str, float],
    *,
    baseline: Mapping[str, Any] = MONODEPTH2_KITTIC,
    score: str = "DES2",
) -> dict[str, Any]:
    """CE, RCE, RR per corruption and mCE, mRR (x100) against a baseline, as RoboDepth defines them.

    Args:
        corrupted: Per corruption either the scores themselves (a mapping with ``score``, or with
            ``abs_rel`` and ``a1``) or a mapping severity -> metrics; with severities, ``abs_rel``
            and ``a1`` are averaged over severities first and DES computed from the means.
        clean: Clean metrics (``score`` or ``abs_rel`` and ``a1``).
        baseline: ``{"clean": {score: ...}, score: {corruption: ...}}`` (default MonoDepth2).
        score: ``"DES1"``, ``"DES2"`` (RoboDepth's main indicator) or ``"DES3"``.

    Returns:
        ``{"DES": {c: ...}, "DES_clean", "CE": {c: ...}, "RCE": {c: ...}, "RR": {c: ...},
        "mCE", "mRCE", "mRR"}``; CE/RCE/RR are ratios, mCE/mRCE/mRR are percentages.

    Raises:
        RobustEnsError: when a corruption has no baseline value.
    """
    if score not in ("DES1", "DES2", "DES3"):
        raise RobustEnsError(f"score must be DES1, DES2 or DES3, got {score!r}")

    def score_of(m: Mapping[Any, Any]) -> float:
        if score in m:
            return float(m[score])
        if "abs_rel" in m and "a1" in m:
            return des(m)[score]
        sev = [v for v in m.values() if isinstance(v, Mapping)]
        if sev:
            mean = {k: float(np.mean([float(s[k]) for s in sev])) for k in ("abs_rel", "a1")}
            return des(mean)[score]
        raise RobustEnsError(f"cannot compute {score} from keys {sorted(map(str, m))}")

    base_scores = baseline.get(score) or {}
    base_clean = float(baseline["clean"][score])
    d_clean = score_of(clean)
    out: dict[str, Any] = {"DES": {}, "DES_clean": d_clean, "CE": {}, "RCE": {}, "RR": {}}
    for c, m in corrupted.items():
        if c not in base_scores:
            raise RobustEnsError(f"the baseline has no {score} for corruption {c!r}; known: {', '.join(base_scores)}")
        d = score_of(m)
        b = float(base_scores[c])
        out["DES"][c] = d
        out["CE"][c] = d / b
        out["RCE"][c] = (d - d_clean) / (b - base_clean) if b != base_clean else float("nan")
        out["RR"][c] = (1.0 - d) / (1.0 - d_clean)
    n = len(out["CE"])
    out["mCE"] = 100.0 * sum(out["CE"].values()) / n if n else float("nan")
    out["mRCE"] = 100.0 * float(np.nanmean(list(out["RCE"].values()))) if n else float("nan")
    out["mRR"] = 100.0 * sum(out["RR"].values()) / n if n else float("nan")
    return out


# ------------------------------------------------------------------------------------------ models


@runtime_checkable
class DepthModel(Protocol):
    """A depth estimator: float images ``[N, 3, H, W]`` in [0, 1] -> ``[N, 1, H, W]`` maps.

    ``output`` says whether the maps are ``"depth"`` (metric or relative) or ``"disparity"``.
    """

    output: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class TorchDepthModel:
    """Adapter for a torch network (e.g. a MonoDepth2 encoder-decoder) to :class:`DepthModel`.

    Args:
        module: Network called on the (optionally normalised) images. Its output may be a tensor,
            a tuple/list (first item) or a dict (``("disp", 0)``, ``"disp"`` or ``"depth"``, else
            the first value).
        output: ``"disparity"`` (sigmoid disparities, converted with :func:`disp_to_depth` when
            ``to_depth``) or ``"depth"``.
        mean, std: Optional normalisation applied inside the adapter.
        to_depth: Convert sigmoid disparities to depth with ``min_depth``/``max_depth``.
        batch_size: Images per forward pass.
    """

    def __init__(self, module: torch.nn.Module, *, output: str = "disparity", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, to_depth: bool = False, min_depth: float = 0.1,
                 max_depth: float = 100.0, batch_size: int = 16) -> None:
        if output not in ("depth", "disparity"):
            raise RobustEnsError(f"output must be 'depth' or 'disparity', got {output!r}")
        self.module = module
        self.output = "depth" if to_depth else output
        self._raw = output
        self.mean, self.std = mean, std
        self.to_depth, self.min_depth, self.max_depth = to_depth, min_depth, max_depth
        self.batch_size = int(batch_size)

    @staticmethod
    def _pick(out: Any) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, (tuple, list)):
            return TorchDepthModel._pick(out[0])
        if isinstance(out, Mapping):
            for k in (("disp", 0), "disp", "depth", "pred"):
                if k in out:
                    return out[k]
            return TorchDepthModel._pick(next(iter(out.values())))
        raise RobustEnsError(f"cannot read a depth map from a network output of type {type(out).__name__}")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Run the network in eval mode, batch by batch; returns ``[N, 1, H', W']``."""
        was_training = self.module.training
        self.module.eval()
        try:
            outs = []
            for i in range(0, images.shape[0], self.batch_size):
                x = images[i : i + self.batch_size]
                if self.mean is not None and self.std is not None:
                    m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
                    s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
                    x = (x - m) / s
                y = self._pick(self.module(x))
                if y.dim() == 3:
                    y = y[:, None]
                if self.to_depth and self._raw == "disparity":
                    y = disp_to_depth(y, self.min_depth, self.max_depth)
                outs.append(y.float())
            return torch.cat(outs)
        finally:
            self.module.train(was_training)


@dataclass
class StereoCalibration:
    """Rectified stereo calibration: ``depth = focal * baseline / (disparity + doffs)``."""

    focal: float
    baseline: float
    doffs: float = 0.0

    def depth(self, disparity: np.ndarray) -> np.ndarray:
        """Depth (units of ``baseline``) from disparity in pixels; non-positive disparities -> 0."""
        d = np.asarray(disparity, dtype=np.float64) + self.doffs
        return np.where(d > 0, self.focal * self.baseline / np.maximum(d, 1e-12), 0.0)


def _fill_invalid_rows(disp: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid disparities by the nearest valid value to their left (else right) in the row."""
    h, w = disp.shape
    idx = np.where(valid, np.arange(w)[None], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    left = np.take_along_axis(disp, idx, 1)
    left_ok = np.take_along_axis(valid, idx, 1)
    ridx = np.where(valid, np.arange(w)[None], w - 1)[:, ::-1]
    ridx = np.minimum.accumulate(ridx, axis=1)[:, ::-1]
    right = np.take_along_axis(disp, ridx, 1)
    out = np.where(valid, disp, np.where(left_ok, left, right))
    return out


class SGBMStereo:
    """OpenCV semi-global block matching as a depth model for rectified stereo pairs.

    Call it with ``(left, right)`` float images ``[N, 3, H, W]`` in [0, 1] (corrupt both views
    alike); it returns metric depth ``[N, 1, H, W]`` (units of the calibration's baseline).
    Pixels without a valid match take the nearest valid disparity along their row.

    Args:
        calibration: Focal length, baseline and principal-point offset.
        num_disparities: Disparity search range (multiple of 16).
        block_size: Matching block size (odd).
        min_disparity: Smallest disparity searched.
    """

    output = "depth"

    def __init__(self, calibration: StereoCalibration, *, num_disparities: int = 64, block_size: int = 5,
                 min_disparity: int = 0, uniqueness: int = 10, speckle_window: int = 100, speckle_range: int = 2) -> None:
        if num_disparities % 16 or num_disparities <= 0:
            raise RobustEnsError(f"num_disparities must be a positive multiple of 16, got {num_disparities}")
        if block_size % 2 == 0 or block_size < 1:
            raise RobustEnsError(f"block_size must be odd and positive, got {block_size}")
        self.calibration = calibration
        self.params = dict(minDisparity=min_disparity, numDisparities=num_disparities, blockSize=block_size,
                           P1=8 * 3 * block_size**2, P2=32 * 3 * block_size**2, disp12MaxDiff=1,
                           uniquenessRatio=uniqueness, speckleWindowSize=speckle_window, speckleRange=speckle_range,
                           mode=3)  # cv2.STEREO_SGBM_MODE_SGBM_3WAY

    def disparity(self, left: torch.Tensor, right: torch.Tensor) -> np.ndarray:
        """Disparities ``[N, H, W]`` in pixels (invalid ones filled along rows)."""
        try:
            import cv2
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise RobustEnsError("SGBMStereo needs OpenCV: pip install opencv-python-headless") from err
        matcher = cv2.StereoSGBM_create(**self.params)  # type: ignore[attr-defined]
        out = []
        to_u8 = lambda t: np.ascontiguousarray((t.detach().cpu().clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy())  # noqa: E731
        for lt, rt in zip(left, right, strict=False):  # OpenCV matches one pair at a time
            d = matcher.compute(to_u8(lt), to_u8(rt)).astype(np.float64) / 16.0
            valid = d > self.params["minDisparity"] - 0.5
            out.append(_fill_invalid_rows(d, valid) if valid.any() else d)
        return np.stack(out)

    def __call__(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        left, right = pair
        disp = self.disparity(left, right)
        return torch.from_numpy(self.calibration.depth(disp)).float()[:, None]


def motorcycle_pair() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, StereoCalibration]:
    """scikit-image's Middlebury 2014 "Motorcycle" pair (quarter resolution) with depth ground truth.

    Returns:
        ``left, right`` as ``[1, 3, 500, 741]`` floats in [0, 1], the ground-truth depth in metres
        (0 where unknown) and the calibration (focal 994.978 px, baseline 0.193001 m, doffs 31.086 px).
    """
    from skimage.data import stereo_motorcycle

    left, right, disp = stereo_motorcycle()
    calib = StereoCalibration(focal=994.978, baseline=0.193001, doffs=31.086)
    gt = np.where(np.isfinite(disp), calib.depth(np.where(np.isfinite(disp), disp, 0.0)), 0.0)
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0  # noqa: E731
    return to_t(left), to_t(right), gt, calib


def evaluate_stereo_under_corruptions(
    model: SGBMStereo,
    left: torch.Tensor,
    right: torch.Tensor,
    gt_depths: Sequence[np.ndarray],
    corruptions: Iterable[str],
    severities: Iterable[int] = (1, 2, 3, 4, 5),
    *,
    preset: str = "kittic",
    seed: int = 0,
    corrupt_fn: Callable[..., torch.Tensor] | None = None,
    **protocol: Any,
) -> dict[str, Any]:
    """Score a stereo model clean and under each corruption/severity (both views corrupted alike).

    "Alike" means the same corruption and severity for both views. Random corruptions draw
    independent numbers for the two cameras (the right view uses ``seed + 1``), as two sensors
    would: an identical noise pattern in both views would be matched at zero disparity.

    Returns:
        ``{"clean": metrics, "corrupted": {name: {severity: metrics}}}``.
    """
    if corrupt_fn is None:
        from robust_ens.corruptions import corrupt

        corrupt_fn = corrupt
    protocol.setdefault("scaling", "none")
    protocol.setdefault("crop", None)
    res: dict[str, Any] = {"clean": evaluate_depth(gt_depths, model((left, right))[:, 0], **protocol), "corrupted": {}}
    idx = torch.arange(left.shape[0])
    for name in corruptions:
        res["corrupted"][name] = {}
        for s in severities:
            lc = corrupt_fn(left, name, s, preset=preset, seed=seed, index=idx)
            rc = corrupt_fn(right, name, s, preset=preset, seed=seed + 1, index=idx)
            res["corrupted"][name][s] = evaluate_depth(gt_depths, model((lc, rc))[:, 0], **protocol)
    return res


# ------------------------------------------------------------------------------ KITTI-C folders


def load_gt_depths(path: str | Any) -> list[np.ndarray]:
    """Ground-truth depth maps from MonoDepth2's ``gt_depths.npz`` (key ``data``) or a ``.npy``."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise RobustEnsError(f"ground-truth depth file {p} not found (MonoDepth2's export_gt_depth.py writes gt_depths.npz)")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            key = "data" if "data" in z.files else z.files[0]
            arr = z[key]
    else:
        arr = np.load(p, allow_pickle=False)
    return [np.asarray(a, dtype=np.float64) for a in arr]


def evaluate_kittic(
    model: DepthModel,
    root: str | Any,
    files: Sequence[str],
    gt_depths: Sequence[np.ndarray],
    *,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    clean_root: str | Any | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    baseline: Mapping[str, Any] = MONODEPTH2_KITTIC,
    **protocol: Any,
) -> dict[str, Any]:
    """Evaluate a monocular depth model on a KITTI-C tree in RoboDepth's layout.

    Args:
        model: A :class:`DepthModel` (e.g. :class:`TorchDepthModel`) taking ``[N, 3, 192, 640]``.
        root: KITTI-C root holding ``<corruption>/<severity>/<file>``.
        files: Relative image paths in split order (as written by ``robust-ens corrupt``).
        gt_depths: Ground-truth depth maps in the same order (e.g. :func:`load_gt_depths`).
        corruptions: Names (default: the 18 KITTI-C corruptions).
        severities: Severities (default 1..5).
        clean_root: Folder with the clean images (``<clean_root>/<file>``), default ``<root>/clean``.
        batch_size: Images per forward pass.
        device: Where the model runs.
        baseline: Table for CE/RCE/RR (default MonoDepth2).
        **protocol: Passed to :func:`evaluate_depth` (``scaling``, ``crop``, ``pred_is_disparity``...);
            ``pred_is_disparity`` defaults to the model's ``output == "disparity"``.

    Returns:
        ``{"clean": metrics, "corrupted": {name: {severity: metrics}}, "summary": robustness_summary}``.
    """
    from pathlib import Path

    from PIL import Image

    from robust_ens.corruptions import list_corruptions

    root = Path(root)
    clean_dir = Path(clean_root) if clean_root is not None else root / "clean"
    if len(files) != len(gt_depths):
        raise RobustEnsError(f"{len(files)} images but {len(gt_depths)} ground-truth maps")
    protocol.setdefault("pred_is_disparity", getattr(model, "output", "depth") == "disparity")
    names = list(corruptions) if corruptions is not None else list_corruptions("kittic")

    def predict(folder: Path) -> list[np.ndarray]:
        preds: list[np.ndarray] = []
        for i in range(0, len(files), batch_size):
            arrays = []
            for f in files[i : i + batch_size]:
                p = folder / f
                if not p.is_file():
                    raise RobustEnsError(f"missing image {p}; build the set with `robust-ens corrupt --preset kittic`")
                with Image.open(p) as im:
                    arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0).to(device)
            y = model(x)
            preds.extend(t.detach().cpu().double().numpy() for t in (y[:, 0] if y.dim() == 4 else y))
        return preds

    res: dict[str, Any] = {"clean": evaluate_depth(gt_depths, predict(clean_dir), **protocol), "corrupted": {}}
    for name in names:
        res["corrupted"][name] = {int(s): evaluate_depth(gt_depths, predict(root / name / str(s)), **protocol)
                                  for s in severities}
    known = baseline.get("DES2", {})
    scored = {c: v for c, v in res["corrupted"].items() if c in known}
    res["summary"] = robustness_summary(scored, res["clean"], baseline=baseline) if scored else {}
    return res
